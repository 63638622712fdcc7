"""CT post-processing (the paper's second task): foam phantoms (``foam``) and their simulated, undersampled and noisy
FBP reconstructions (``simulation``; ``python -m monai_iunet.apps.ct.simulation --help``)."""
