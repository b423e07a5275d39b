"""seg4seg: finding where segmentation models fail systematically (SEG4SEG slice discovery).

Notebooks use ``import seg4seg_utils as su``; the light, commonly used functions are re-exported here.
Importing has no side effects (no environment changes, no heavy imports: torch loads only in the
modules that train or embed).
"""
from seg4seg_utils.config import PRESETS, Preset, environment_report, get_preset
from seg4seg_utils.data.inject import CASES, Case, get_case, inject, injected_name
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
from seg4seg_utils.studies.pipeline import base_datasets, case_datasets, run_data_job

__version__ = "0.1.0"

__all__ = [
    "PRESETS", "Preset", "environment_report", "get_preset",
    "SPLITS", "DatasetError", "SampleTable", "assign_splits", "build_dataset", "read_dataset", "read_image",
    "read_mask", "validate_dataset",
    "CASES", "Case", "get_case", "inject", "injected_name",
    "METRICS", "metrics_table", "segmentation_metrics",
    "MODALITIES", "generate_phantom_dataset",
    "base_datasets", "case_datasets", "run_data_job",
    "TAXONOMY", "failure_type", "taxonomy_table",
]
