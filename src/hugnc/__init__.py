"""hugnc: train with the Hyperspherical Uniformity Gap (HUG, ICLR 2023), watch neural collapse."""

__version__ = "0.1.0"
