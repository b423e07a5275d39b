"""The SEG4SEG failure taxonomy as data: where systematic segmentation errors come from, and which case tests each."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd

__all__ = ["FailureType", "TAXONOMY", "failure_type", "taxonomy_table"]


@dataclass(frozen=True)
class FailureType:
    """One source of systematic error in medical image segmentation."""

    key: str
    family: str          # shortcut | label noise | underrepresentation | difficult cases
    name: str
    description: str
    mechanism: str       # why a model trained this way fails on the subgroup
    example: str         # a documented or plausible real-world instance
    case: str | None     # the injected benchmark case that tests it (A-F), or None


TAXONOMY: tuple[FailureType, ...] = (
    FailureType(
        key="shortcut_sample", family="shortcut", name="Sample-level shortcut",
        description="An image-wide cue that co-occurs with the target in training (a marker, text overlay, device "
                    "artefact) and that the model uses instead of the anatomy.",
        mechanism="The cue is easier to learn than the anatomy, so the model leans on it; images where the cue is "
                  "absent (or misleading) are segmented worse.",
        example="Sonographers' caliper marks on the fetal head outline in most HC18 images: images without them "
                "lose the free boundary hint.",
        case="A"),
    FailureType(
        key="shortcut_pixel", family="shortcut", name="Pixel-level shortcut",
        description="A spatial regularity of the target (position, scale, centring) that holds in training but not "
                    "for every test image.",
        mechanism="Convolutional models learn a location/size prior; targets that break it (off-centre, touching "
                  "the border, magnified) are under- or over-segmented.",
        example="ISIC lesions are photographed centred; a zoomed, off-centre crop of a lesion breaks that prior.",
        case="B"),
    FailureType(
        key="label_noise_style", family="label noise", name="Annotation style",
        description="Systematic differences in how masks were drawn (tool, protocol, annotator), not in what they "
                    "depict.",
        mechanism="The model learns the majority style; test masks in a minority style disagree with its "
                  "(otherwise reasonable) predictions along the boundary.",
        example="ISIC masks drawn as coarse polygons from a point list (IMA++ tool T1) versus flood-fill/autofill "
                "masks (T3).",
        case="C"),
    FailureType(
        key="label_noise_error", family="label noise", name="Annotation error",
        description="Masks that are wrong for some samples: missing structures, shifted or swapped labels, "
                    "partial annotations.",
        mechanism="Errors teach the model inconsistent targets and make the reported performance on the affected "
                  "test images low even where the prediction is right.",
        example="Thin vessels left unannotated in part of a fundus dataset; a label swapped between two "
                "neighbouring structures.",
        case="E"),
    FailureType(
        key="underrepresentation", family="underrepresentation", name="Underrepresented acquisition",
        description="A subgroup of images acquired differently (device, protocol, quality) that is rare in "
                    "training.",
        mechanism="Too few training examples of the subgroup's appearance; features tuned to the majority "
                  "transfer badly.",
        example="Dark, blurred fundus photographs (FIVES quality labels: illumination, blur, low contrast).",
        case="D"),
    FailureType(
        key="rare_appearance", family="underrepresentation", name="Rare appearance of the target",
        description="A type of target (lesion type, anatomical variant) that looks unlike the usual one and is rare "
                    "in training; the acquisition is the same.",
        mechanism="The model learns what the common type looks like; a target that lacks its cues (pigment, "
                  "contrast, shape) is partly missed.",
        example="Amelanotic (unpigmented, pinkish) melanomas, a few per cent of melanomas, in a dermoscopy set of "
                "pigmented lesions.",
        case="F"),
    FailureType(
        key="difficult_cases", family="difficult cases", name="Intrinsically difficult cases",
        description="Images that are hard for any annotator or model: small or low-contrast targets, unusual "
                    "anatomy, pathology.",
        mechanism="Not a data bias but genuine difficulty; the subgroup stays worse even with balanced data, so a "
                  "slice finder should report it but fixing the data will not remove it.",
        example="Very small lesions, fetal heads partly outside the ultrasound sector, thin capillaries.",
        case=None),
)


def failure_type(key_or_case: str) -> FailureType:
    """Look up a taxonomy entry by its key (e.g. ``"shortcut_pixel"``) or its benchmark case (``"B"``)."""
    for ft in TAXONOMY:
        if key_or_case in (ft.key, ft.case):
            return ft
    known = ", ".join([ft.key for ft in TAXONOMY] + sorted(ft.case for ft in TAXONOMY if ft.case))
    raise KeyError(f"no failure type {key_or_case!r}; known keys and cases: {known}")


def taxonomy_table() -> pd.DataFrame:
    """The taxonomy as a DataFrame, one row per failure type (for notebooks and the book)."""
    return pd.DataFrame([asdict(ft) for ft in TAXONOMY])
