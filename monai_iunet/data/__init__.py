"""Synthetic BraTS-like data (``synthetic``), DICOM series writing (``dicom``) and datalists (``datalist``).

Each module is also a command: ``python -m monai_iunet.data.synthetic --help``.
"""
