"""Layer 5, studies: the experiments, each a composition of the layers below.

The resumable, parallel benchmark runner (:mod:`.benchmark`), the main job and its grids (:mod:`.pipeline`),
scale-out backends (:mod:`.scaleout`), auditing one's own model (:mod:`.own_model`) and the label-flip study
(:mod:`.labelflip`). Only the command line (:mod:`seg4seg_utils.cli`) sits above.
"""
