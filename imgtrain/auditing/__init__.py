"""Audit a dataset: label issues from out-of-fold predictions, duplicates and train/test leaks, outliers and odd
images, a review page and the decisions it downloads (docs/audit.md)."""
