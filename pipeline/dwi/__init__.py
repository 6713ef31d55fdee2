"""Diffusion MRI: gradient tables, preprocessing, tensor fitting and ROI metrics."""
