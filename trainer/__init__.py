"""anogan-inspect trainer: data loading, DCGAN + encoder training, calibration, export."""
