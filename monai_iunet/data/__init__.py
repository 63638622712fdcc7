"""Synthetic BraTS-like data (``synthetic``), DICOM series and PACS-like study writing (``dicom``), DICOM study
indexing and reading (``dicom_series``), series selection (``series_selection``), DICOM SEG (``dicom_seg``), foam
phantoms and their CT reconstructions (``foam``, ``ct``), and datalists (``datalist``).

``synthetic``, ``datalist``, ``studies`` and ``ct`` are also commands, e.g. ``python -m monai_iunet.data.ct --help``.
"""
