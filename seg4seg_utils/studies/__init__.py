"""Layer 5, studies: the experiments, each a composition of the layers below.

A job starts from a :class:`~.workspace.Workspace` (folders, preset, embedder, cache, parallelism) and the
handles it gives out: the grid's injected datasets (:class:`~.workspace.CaseDataset`) and their trained models
(:class:`~.workspace.TrainedCase`). The main job and its grids (:mod:`.pipeline`: data, training grid, detection,
ablation, gamma sweep, naturally occurring attributes) run on the resumable, parallel benchmark runner
(:mod:`.benchmark`); beside them the patch-level study (:mod:`.patch_study`), slice explanations
(:mod:`.explanation_study`), label flips (:mod:`.labelflip`), scale-out backends (:mod:`.scaleout`) and auditing
one's own model from folders of images or volumes (:mod:`.audit`, the ``seg4seg audit`` command, with
:mod:`.audit_volumes`; :mod:`.volume_study` for the planted 3-D case). Studies write their own result files;
notebooks only call them. Only the command line (:mod:`seg4seg_utils.cli`) sits above.
"""
