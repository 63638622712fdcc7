"""BraTS brain-tumour segmentation: ``labels`` (every BraTS fact: modalities, file names, label values, regions,
series rules, SEG segments), ``transforms`` (loading a case's modalities from files, series or a study),
``registration``, ``brain_extraction``, ``qc`` (scan QC), ``inference`` (batch inference), ``segment`` (the one-study
command), ``metrics`` (Dice/HD95 scoring) and ``data`` (synthetic cases, datalists, MONAI Label studies)."""
