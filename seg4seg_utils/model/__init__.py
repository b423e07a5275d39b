"""Layer 2, model: segmentation models and how well they do.

Training and trained runs (:mod:`.train`), offline pretrained weights (:mod:`.pretrained`) and per-image
segmentation metrics (:mod:`.metrics`). Imports the foundation and :mod:`seg4seg_utils.data`, nothing above.
"""
