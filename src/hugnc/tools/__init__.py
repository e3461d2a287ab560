"""Console scripts and their library functions (with train.py, the only code that knows Hydra)."""
