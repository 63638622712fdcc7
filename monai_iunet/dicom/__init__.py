"""Task-free clinical DICOM I/O: ``geometry`` (the one RAS↔LPS and highdicom ``Volume``↔``MetaTensor`` conversion),
``series`` (indexing and reading the series of a study folder), ``selection`` (choosing a series per modality by
rules an application passes in), ``seg`` (DICOM SEG of given segments) and ``synthetic`` (the DICOM writer of the
tests and demos)."""
