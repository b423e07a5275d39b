"""seg4seg: finding where segmentation models fail systematically."""
__version__ = "0.1.0"
