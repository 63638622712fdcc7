"""BraTS datasets: synthetic BraTS-like cases and PACS-like studies (``synthetic``), datalists of a BraTS folder
(``datalist``) and MONAI Label studies folders (``studies``); each is also a command (``python -m <module> --help``)."""
