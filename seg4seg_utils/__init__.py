"""seg4seg: finding where segmentation models fail systematically (SEG4SEG slice discovery).

One core in layers; each imports only the layers below it (``tests/test_conventions.py`` enforces this and that
no module imports another's private names):

0. foundation - :mod:`.config` (presets), :mod:`.kernels` (pinned numerics), :mod:`.seeding`, :mod:`.stats`
1. :mod:`.data` - sample tables, phantoms, the injected cases, real datasets, the failure taxonomy
2. :mod:`.model` - training and runs, pretrained weights, segmentation and label-flip metrics
3. :mod:`.discovery` - embeddings, reduction, slicers (scikit-learn estimators), the protocol, and
   :func:`.discovery.judge.fit_and_judge`, the one fit-and-judge step every study runs
4. :mod:`.report` - figures, the slice browser, the book runner, the diff of two jobs
5. :mod:`.studies` - the benchmark runner and every study (detection, ablation, gamma, patches,
   explanations, label flips, scale-out, your own model)
6. :mod:`.cli` - ``python -m seg4seg_utils``

Notebooks use ``import seg4seg_utils as su``; the light, commonly used functions are re-exported here.
Importing has no side effects (no environment changes, no heavy imports: torch loads only in the
modules that train or embed).
"""
from seg4seg_utils.config import PRESETS, Preset, environment_report, get_preset
from seg4seg_utils.data.inject import ALL_CASES, CASES, PAPER_CASES, Case, get_case, inject, injected_name
from seg4seg_utils.data.phantoms import MODALITIES, generate_phantom_dataset
from seg4seg_utils.data.records import (
                   SPLITS,
                   DatasetError,
                   SampleTable,
                   assign_splits,
                   build_dataset,
                   read_dataset,
                   read_image,
                   read_mask,
                   validate_dataset,
)
from seg4seg_utils.data.taxonomy import TAXONOMY, failure_type, taxonomy_table
from seg4seg_utils.model.metrics import METRICS, metrics_table, segmentation_metrics
from seg4seg_utils.studies.pipeline import run_data_job
from seg4seg_utils.studies.workspace import CaseDataset, TrainedCase, Workspace

__version__ = "0.1.0"

__all__ = [
    "PRESETS", "Preset", "environment_report", "get_preset",
    "SPLITS", "DatasetError", "SampleTable", "assign_splits", "build_dataset", "read_dataset", "read_image",
    "read_mask", "validate_dataset",
    "CASES", "PAPER_CASES", "ALL_CASES", "Case", "get_case", "inject", "injected_name",
    "METRICS", "metrics_table", "segmentation_metrics",
    "MODALITIES", "generate_phantom_dataset",
    "Workspace", "CaseDataset", "TrainedCase", "run_data_job",
    "TAXONOMY", "failure_type", "taxonomy_table",
]
