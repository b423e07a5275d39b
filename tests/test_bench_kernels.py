"""scripts/bench_kernels.py's training child: the speed levers it measures really change how it trains (the
smoke preset's tiny U-Net stands in for the cpu preset's, so that this takes seconds)."""
from __future__ import annotations

import importlib.util

import pytest
from conftest import REPO_ROOT

from seg4seg_utils.model import train


@pytest.fixture
def bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_kernels", REPO_ROOT / "scripts" / "bench_kernels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    smoke = train.train_preset("smoke")
    monkeypatch.setattr(train, "train_preset", lambda name: smoke)
    return module


def test_a_lever_changes_the_weights_and_no_lever_repeats_them(bench, monkeypatch):
    monkeypatch.setenv(bench.LEVER_CHILD, "")
    plain = [bench.child(2, 1) for _ in range(2)]
    assert plain[0]["digest"] == plain[1]["digest"]  # the same seed, the same weights
    monkeypatch.setenv(bench.LEVER_CHILD, "channels-last")
    channels_last = bench.child(2, 1)
    assert channels_last["digest"] != plain[0]["digest"]  # other kernels, other weights: why training keeps NCHW
    assert {"ms_per_step", "warm_up_s", "capability"} <= set(channels_last)


def test_every_lever_is_a_configuration_on_top_of_bf16(bench):
    for lever in ("bf16-channels-last", "bf16-compile"):
        assert bench.CONFIGS[lever] == bench.CONFIGS["bf16"]
    assert [bench.lever_of(c) for c in ("bf16-channels-last", "bf16-compile", "bf16", "pinned", "native")] == \
        ["channels-last", "compile", "", "", ""]
