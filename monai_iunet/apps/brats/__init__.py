"""BraTS brain-tumour segmentation."""
