"""Where a job reads and writes, and with what: one :class:`Workspace` instead of the same eight
folder / preset / embedder / cache / parallelism arguments on every study function.

A workspace is cheap and immutable: make one per job (the CLI makes one from its flags, a notebook from
its ``parameters`` cell) and hand it to the studies::

    ws = Workspace("cpu", data_dir="data", results_dir="results", runs_dir="runs")
    trained = ws.trained_cases()                 # trains what is missing, reads back what is done
    run = ws.trained_case("A", 0.10).run         # "the run for case A at 10 %"
    pipeline.detection_benchmark(ws, trained)

It also gives studies their handles: the injected datasets of the preset's grid (:class:`CaseDataset`) and
the trained model of each (:class:`TrainedCase`): a trained run is found by training, which reuses a
finished run from ``runs_dir`` (runs are keyed by their configuration and dataset), so there is no index
of runs to keep in step.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, NamedTuple

from seg4seg_utils.config import Preset, get_preset
from seg4seg_utils.data.inject import ALL_CASES, CASES, inject, injected_name
from seg4seg_utils.data.records import META_FILE, DatasetError, SampleTable, read_dataset

__all__ = ["Workspace", "CaseDataset", "TrainedCase", "results_folder"]


@dataclass(frozen=True)
class CaseDataset:
    """One injected dataset of the benchmark grid."""

    case: str
    prevalence: float
    seed: int
    table: SampleTable


class TrainedCase(NamedTuple):
    """One trained model of the grid: its case, prevalence, data seed, injected dataset and run. A tuple, so
    ``for case, prevalence, seed, table, run in ws.trained_cases()`` reads it (as the benchmarks do)."""

    case: str
    prevalence: float
    seed: int
    table: SampleTable
    run: Any


def results_folder(out_dir: str | Path | None) -> Path | None:
    """``out_dir`` as a Path, created if missing; ``None`` (a study asked to write nothing) stays None."""
    if out_dir is None:
        return None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _optional_path(value: str | Path | None) -> Path | None:
    return None if value is None else Path(value)


@dataclass(frozen=True)
class Workspace:
    """The folders, preset, embedder choice and parallelism of one job.

    ``preset`` (a name or a :class:`~seg4seg_utils.config.Preset`) decides the grid and the sizes;
    ``data_dir``/``runs_dir``/``results_dir`` hold one sub-folder per preset; ``cache_dir`` holds embeddings
    (and reduced embeddings under ``reduced/``), shared by presets since every entry is keyed by what made it;
    ``real_root`` points at datasets prepared by ``python -m data_prep`` (instead of phantoms);
    ``clip_weights`` selects the paper's CLIP embedder (else the packaged EfficientNet-Lite0, named as such);
    ``n_jobs`` parallel embedding/slicer jobs (never changes a result); ``progress`` shows progress bars.
    """

    preset: Preset | str = "cpu"
    data_dir: Path | str = Path("data")
    results_dir: Path | str = Path("results")
    runs_dir: Path | str = Path("runs")
    cache_dir: Path | str | None = Path("cache/embeddings")
    real_root: Path | str | None = None
    clip_weights: str | None = None
    n_jobs: int = 2
    progress: bool = True
    train_overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # normalise once, so every study sees Paths and a Preset (a frozen dataclass sets through object)
        for name in ("data_dir", "results_dir", "runs_dir"):
            object.__setattr__(self, name, Path(getattr(self, name)))
        object.__setattr__(self, "cache_dir", _optional_path(self.cache_dir))
        object.__setattr__(self, "real_root", _optional_path(self.real_root))
        object.__setattr__(self, "preset", get_preset(self.preset))

    def replace(self, **changes: Any) -> "Workspace":
        """A copy with some fields changed (e.g. ``ws.replace(progress=False)``)."""
        return dataclasses.replace(self, **changes)

    # -- folders -----------------------------------------------------------------------------------------
    def results(self, stage: str) -> Path:
        """The folder of one stage's tables and figures, ``results_dir/<preset>/<stage>`` (not created here)."""
        return self.results_dir / self.preset.name / stage

    @property
    def runs(self) -> Path:
        """The folder of this preset's trained models."""
        return self.runs_dir / self.preset.name

    @property
    def reduced_cache(self) -> Path | None:
        """Where reduced (UMAP) embeddings are cached, or None when caching is off."""
        return None if self.cache_dir is None else self.cache_dir / "reduced"

    # -- the embedder ------------------------------------------------------------------------------------
    @cached_property
    def embedder(self):
        """The image embedder: CLIP when ``clip_weights`` is given, else the packaged EfficientNet-Lite0
        (:func:`~seg4seg_utils.discovery.embed.default_embedder`; made once per workspace)."""
        from seg4seg_utils.discovery.embed import default_embedder

        return default_embedder(self.clip_weights)

    # -- datasets ----------------------------------------------------------------------------------------
    def base_datasets(self, modalities: Iterable[str] | None = None) -> dict[str, SampleTable]:
        """The clean dataset per modality: generated phantoms, or (``real_root``) prepared real datasets
        (``hc18/``, ``isic2018/``, ``fives/`` as written by ``python -m data_prep``)."""
        from seg4seg_utils.data.phantoms import generate_phantom_dataset

        p = self.preset
        wanted = sorted(set(modalities or (c.modality for c in CASES.values())))
        if p.real_data and self.real_root is None:
            raise ValueError(f"preset {p.name!r} runs on real data: prepare it with `python -m data_prep` "
                             "(see data_prep/README.md) and pass its folder as real_root / --real")
        out: dict[str, SampleTable] = {}
        if self.real_root is None:
            self._build_missing(generate_phantom_dataset, [self._phantom_call(m) for m in wanted])
        for modality in wanted:
            if self.real_root is not None:
                real = next(c.real_dataset for c in CASES.values() if c.modality == modality)
                folder = self.real_root / real
                try:
                    out[modality] = read_dataset(folder, validate="files")
                except DatasetError as exc:
                    raise DatasetError(f"{exc}\nExpected the prepared {real} dataset at {folder} "
                                       f"(python -m data_prep {real} --raw ... --out {folder}).") from exc
            else:
                out[modality] = generate_phantom_dataset(**self._phantom_call(modality))
        return out

    def _phantom_call(self, modality: str) -> dict[str, Any]:
        p = self.preset
        return {"modality": modality, "root": self.data_dir / p.name / "phantoms" / modality, "n": p.n_images,
                "size": p.image_size, "seed": 0, "progress": self.progress}

    def _build_missing(self, build, calls: list[dict[str, Any]]) -> None:
        """Build the datasets of ``calls`` (keyword arguments of ``build``, each with its output folder as
        ``root`` or ``out``) that are not on disk yet, ``n_jobs`` at a time. Every sample draws from its own
        seeded generator, so a dataset is the same whichever process builds it, and in whatever order."""
        missing = [c for c in calls if not (Path(c.get("root", c.get("out"))) / META_FILE).is_file()]
        if len(missing) > 1 and self.n_jobs > 1:
            from joblib import Parallel, delayed

            Parallel(n_jobs=min(self.n_jobs, len(missing)))(delayed(build)(**c) for c in missing)

    def case_datasets(self, cases: Iterable[str] = ALL_CASES) -> list[CaseDataset]:
        """Every injected dataset of the preset's grid (cases x prevalences x seeds), built or reused from disk."""
        p = self.preset
        chosen = [CASES[c.upper()] for c in cases]
        bases = self.base_datasets({c.modality for c in chosen})
        root = self.data_dir / p.name / ("injected-real" if self.real_root is not None else "injected")
        calls = [{"source": bases[case.modality], "case": case.name, "prevalence": prevalence, "seed": seed,
                  "out": root / injected_name(case.name, prevalence, seed), "progress": self.progress}
                 for case in chosen for prevalence in p.prevalences for seed in p.seeds]
        self._build_missing(inject, calls)
        return [CaseDataset(c["case"], c["prevalence"], c["seed"], inject(**c)) for c in calls]

    # -- trained models ----------------------------------------------------------------------------------
    def train_config(self):
        """The preset's training configuration (with ``train_overrides`` applied): the recipe of this preset object,
        so that a :class:`~seg4seg_utils.config.Preset` built with another ``train`` trains with it (looking the
        recipe up by the preset's name ignored it)."""
        from dataclasses import replace

        from seg4seg_utils.model.train import TrainConfig

        return replace(TrainConfig(**dict(self.preset.train)), **self.train_overrides).validate()

    def trained_cases(self, cases: Iterable[str] | Iterable[CaseDataset] = ALL_CASES) -> list[TrainedCase]:
        """One trained U-Net per injected dataset: finished runs are read back, missing ones trained
        (interrupted ones resumed). ``cases``: case letters, or :class:`CaseDataset` items already built."""
        from seg4seg_utils.model.train import TrainJob, train_all

        grid = list(cases)
        if not grid or not isinstance(grid[0], CaseDataset):
            grid = self.case_datasets("".join(grid))
        cfg = self.train_config()
        runs = train_all([TrainJob(cd.table, cfg, self.runs, label=f"[seg4seg] model {k}/{len(grid)}: "
                                   f"{injected_name(cd.case, cd.prevalence, cd.seed)}")
                          for k, cd in enumerate(grid, 1)], progress=self.progress)
        return [TrainedCase(cd.case, cd.prevalence, cd.seed, cd.table, run) for cd, run in zip(grid, runs)]

    def trained_case(self, case: str, prevalence: float, seed: int | None = None) -> TrainedCase:
        """The trained model of one cell of the grid, e.g. ``ws.trained_case("A", 0.10)`` (data seed: the
        preset's first)."""
        p = self.preset
        seed = p.seeds[0] if seed is None else seed
        if not any(abs(prevalence - q) < 1e-9 for q in p.prevalences) or seed not in p.seeds:
            raise ValueError(f"case {case} at prevalence {prevalence} with data seed {seed} is not in preset "
                             f"{p.name!r} (prevalences {list(p.prevalences)}, seeds {list(p.seeds)})")
        grid = [cd for cd in self.case_datasets(case)
                if abs(cd.prevalence - prevalence) < 1e-9 and cd.seed == seed]
        return self.trained_cases(grid)[0]
