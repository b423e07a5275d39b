"""Where the main job's time goes: each stage of ``make run`` records its wall time, one command writes the breakdown.

``make run`` exports two variables for everything it starts: ``SEG4SEG_TIMING`` (the CSV the stages append to,
``results/<preset>/timing.csv``) and ``SEG4SEG_RUN_STARTED`` (the Unix time make started, which names the run
and dates the set-up). :func:`stage` times a block and appends ``run, stage, step, started, seconds`` there; it
records nothing when ``SEG4SEG_TIMING`` is unset, so library calls, tests and notebooks run as before.
:func:`write_breakdown` (``python -m seg4seg_utils timing``, the last step of ``make run``) writes ``timing.md``
beside the CSV and returns the text it prints. Earlier runs stay in the CSV; the breakdown shows the newest.
"""
from __future__ import annotations

import csv
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pandas as pd

__all__ = ["TIMING_ENV", "STARTED_ENV", "FIELDS", "Timed", "stage", "record", "read_timing", "covered_seconds",
           "breakdown", "write_breakdown"]

TIMING_ENV = "SEG4SEG_TIMING"
STARTED_ENV = "SEG4SEG_RUN_STARTED"
FIELDS = ("run", "stage", "step", "started", "seconds")


def _run_id() -> str:
    return os.environ.get(STARTED_ENV, "")


def record(stage_name: str, step: str, started: float, seconds: float) -> None:
    """Append one timed step to ``$SEG4SEG_TIMING`` (nothing happens when it is unset)."""
    path = os.environ.get(TIMING_ENV)
    if not path:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file()
    with open(path, "a", newline="") as fh:  # one short line per append: concurrent writers do not interleave
        writer = csv.writer(fh)
        if new:
            writer.writerow(FIELDS)
        writer.writerow([_run_id(), stage_name, step, f"{started:.3f}", f"{seconds:.3f}"])


@dataclass
class Timed:
    """One timed step: ``seconds`` is set when its block ends; ``step`` may be filled in inside the block."""

    stage: str
    step: str = ""
    seconds: float = 0.0


@contextmanager
def stage(stage_name: str, step: str = "") -> Iterator[Timed]:
    """Time the block and :func:`record` it (also when it raises: a failed stage's time is part of the run)."""
    timed = Timed(stage_name, step)
    started, t0 = time.time(), time.perf_counter()
    try:
        yield timed
    finally:
        timed.seconds = time.perf_counter() - t0
        record(timed.stage, timed.step, started, timed.seconds)


def read_timing(path: str | os.PathLike) -> pd.DataFrame:
    """The rows of the newest run in a timing CSV (empty frame with :data:`FIELDS` when there are none)."""
    path = Path(path)
    if not path.is_file():
        return pd.DataFrame(columns=FIELDS)
    rows = pd.read_csv(path, dtype={"run": str, "stage": str, "step": str}, keep_default_na=False)
    if rows.empty:
        return rows
    newest = rows["run"].iloc[-1]
    return rows[rows["run"] == newest].reset_index(drop=True)


def covered_seconds(started, seconds) -> float:
    """The wall time covered by intervals ``[started, started + seconds)``: their sum when they follow each other,
    less when steps ran side by side (overlaps count once)."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(zip(started, (s + d for s, d in zip(started, seconds)))):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def breakdown(rows: pd.DataFrame, now: float | None = None) -> pd.DataFrame:
    """One row per stage (and per step where a stage has several), with seconds and share of the total.

    A stage's seconds are the wall time its steps covered (:func:`covered_seconds`): notebooks run side by side
    count once, and their own rows below show each one's time.

    The total is the wall time since ``SEG4SEG_RUN_STARTED`` when the run carries it (so set-up and anything
    unrecorded count), else the sum of the stages; set-up is the time from that start to the first stage.
    """
    now = time.time() if now is None else now
    out = []
    run = rows["run"].iloc[0] if len(rows) else ""
    started = float(run) if run else None
    if started is not None and len(rows):
        out.append({"stage": "set-up", "step": "virtual environment, Python start-up",
                    "seconds": float(rows["started"].min()) - started})
    for name, group in rows.groupby("stage", sort=False):
        # a stage timed in one piece shows its step on its own line; one timed in several lists them below it
        only = group["step"].iloc[0] if len(group) == 1 else ""
        wall = covered_seconds(group["started"].astype(float), group["seconds"].astype(float))
        overlapped = len(group) > 1 and float(group["seconds"].sum()) > wall + 1.0
        out.append({"stage": name, "step": only or ("steps side by side: their seconds overlap" if overlapped else ""),
                    "seconds": wall})
        if len(group) > 1:
            out += [{"stage": "", "step": step, "seconds": float(seconds)}
                    for step, seconds in zip(group["step"], group["seconds"])]
    table = pd.DataFrame(out, columns=["stage", "step", "seconds"])
    total = (now - started) if started is not None else float(table.loc[table["stage"] != "", "seconds"].sum())
    table["share"] = table["seconds"] / total if total > 0 else 0.0
    total_row = pd.DataFrame([{"stage": "total", "step": "", "seconds": total, "share": 1.0}])
    return pd.concat([table, total_row], ignore_index=True)


def write_breakdown(path: str | os.PathLike, title: str = "make run") -> tuple[Path, str]:
    """Write ``timing.md`` beside the CSV for its newest run; returns (its path, the text to print)."""
    path = Path(path)
    table = breakdown(read_timing(path))
    shown = table.assign(seconds=table["seconds"].round(1), share=(100 * table["share"]).round(1).astype(str) + " %")
    text = (f"# Where the time of `{title}` went\n\nWall time per stage (seconds; share of the total). Measured on "
            f"this machine ({os.cpu_count()} CPU cores); finished work that was reused costs almost nothing, so "
            f"compare first runs with first runs.\n\n" + shown.to_markdown(index=False) + "\n")
    md = path.with_suffix(".md")
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(text)
    return md, text
