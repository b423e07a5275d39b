"""Training: config validation, device choice, determinism, resume, caching, the metrics table, clear errors."""
import contextlib
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from seg4seg_utils.data.inject import inject
from seg4seg_utils.data.phantoms import generate_phantom_dataset
from seg4seg_utils.data.records import DatasetError, SampleTable
from seg4seg_utils.model import train as T
from seg4seg_utils.model.train import TrainConfig, augment_batch, build_model, select_device, train, train_preset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    clean = generate_phantom_dataset("ultrasound", root / "clean", n=40, size=64, seed=0, progress=False)
    return inject(clean, "A", 0.2, seed=0, out=root / "A", progress=False)


def smoke(**kw):
    return train_preset("smoke", **{"max_train_samples": 16, **kw})


def weights(run):
    return torch.load(run.root / "last.pt", map_location="cpu", weights_only=False)["model"]


@pytest.mark.parametrize("field,value", [("image_size", 50), ("epochs", 0), ("lr", 0.0), ("batch_size", 0),
                                         ("device", "tpu"), ("threshold", 1.0), ("decoder_channels", (8, 8))])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        replace(TrainConfig(), **{field: value}).validate()


def test_presets():
    paper = train_preset("paper")
    assert (paper.encoder, paper.image_size, paper.epochs, paper.lr, paper.batch_size) == ("resnet34", 512, 50, 1e-4, 32)
    with pytest.raises(ValueError, match="unknown training preset"):
        train_preset("fast")


def test_device_choice():
    assert select_device("auto").type in ("cuda", "mps", "cpu")
    assert select_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            select_device("cuda")


def test_missing_imagenet_weights_say_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="encoder_weights='/path/to/weights.pth'"):
        build_model(TrainConfig(encoder="resnet18", encoder_weights="imagenet"))


def test_packaged_efficientnet_weights_load():
    model, how = build_model(TrainConfig(encoder="tu-tf_efficientnet_lite0", encoder_weights="packaged"))
    assert "EfficientNet-Lite0" in how
    scratch, how0 = build_model(TrainConfig(encoder="tu-tf_efficientnet_lite0", encoder_weights=None))
    assert how0.startswith("random")
    a = model.encoder.model.conv_stem.weight
    assert not torch.equal(a, scratch.encoder.model.conv_stem.weight)


def test_augmentation_keeps_masks_binary_and_aligned():
    x = torch.zeros(4, 3, 32, 32)
    x[:, :, 8:20, 10:14] = 1.0
    y = x[:, :1].clone()
    xa, ya = augment_batch(x, y, replace(TrainConfig(), rotation_deg=30), torch.Generator().manual_seed(0))
    assert set(torch.unique(ya).tolist()) <= {0.0, 1.0}
    # the mask moves with the image
    assert ((xa[:, :1] > 0.5) == (ya > 0.5)).float().mean() > 0.97


def test_train_predicts_and_writes_metrics(dataset, tmp_path):
    run = train(dataset, smoke(), runs_dir=tmp_path, progress=False)
    assert run.done
    hist = run.history()
    assert list(hist.columns) == ["epoch", "train_loss", "val_loss", "val_dice", "seconds"] and len(hist) == 2
    m = run.metrics()
    assert {"id", "dice", "iou", "ppv", "npv", "failure", "caliper", "prediction"} <= set(m.columns)
    assert len(m) == len(dataset.split("test")) and m["dice"].between(0, 1).all()
    assert (run.root / m["prediction"].iat[0]).is_file()
    summary = run.summary()
    assert summary["initialisation"].startswith("random") and 1 <= summary["best_epoch"] <= 2


def test_same_seed_same_weights_and_cache_reuse(dataset, tmp_path):
    a = train(dataset, smoke(), runs_dir=tmp_path / "a", progress=False)
    b = train(dataset, smoke(), runs_dir=tmp_path / "b", progress=False)
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = train(dataset, smoke(seed=1), runs_dir=tmp_path / "a", progress=False)
    assert c.root != a.root and not all(torch.equal(wa[k], weights(c)[k]) for k in wa)
    stamp = (a.root / "done.json").stat().st_mtime_ns
    again = train(dataset, smoke(), runs_dir=tmp_path / "a", progress=False)  # cached: nothing retrained
    assert again.root == a.root and (a.root / "done.json").stat().st_mtime_ns == stamp


def test_resume_matches_uninterrupted(dataset, tmp_path, monkeypatch):
    cfg = smoke(epochs=3)
    full = train(dataset, cfg, runs_dir=tmp_path / "full", progress=False)
    part = train(dataset, cfg, runs_dir=tmp_path / "part", progress=False, stop_after_epoch=1)
    assert not part.done and len(part.history()) == 1
    first_epoch = part.history().iloc[0]
    # training is deterministic, so a restart from scratch would also reach the same weights: count the
    # optimisation steps the second call runs, to check it continues from last.pt instead of starting over
    steps = []
    real_augment = T.augment_batch
    monkeypatch.setattr(T, "augment_batch", lambda *a, **kw: steps.append(1) or real_augment(*a, **kw))
    resumed = train(dataset, cfg, runs_dir=tmp_path / "part", progress=False)
    assert resumed.done
    steps_per_epoch = 2  # 16 training samples in batches of 8
    assert len(steps) == (cfg.epochs - 1) * steps_per_epoch, f"{len(steps)} steps: epoch 1 was trained again"
    # the interrupted call's epoch-1 row (its wall time included) comes back from the checkpoint untouched
    pd.testing.assert_series_equal(resumed.history().iloc[0], first_epoch)
    wf, wr = weights(full), weights(resumed)
    assert all(torch.equal(wf[k], wr[k]) for k in wf)
    pd.testing.assert_frame_equal(full.history().drop(columns="seconds"), resumed.history().drop(columns="seconds"))
    pd.testing.assert_frame_equal(full.metrics(), resumed.metrics())


def test_empty_training_split_is_a_clear_error(dataset, tmp_path):
    df = dataset.df.copy()
    df.loc[df["split"] == "train", "split"] = "val"
    with pytest.raises(DatasetError, match="split 'train' is empty"):
        train(SampleTable(dataset.root, df, dataset.meta), smoke(), runs_dir=tmp_path, progress=False)


def test_image_mask_mismatch_is_a_clear_error(dataset, tmp_path):
    from PIL import Image

    bad = tmp_path / "bad_mask.png"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(bad)
    df = dataset.df.copy()
    df.loc[0, "mask"] = str(bad)
    with pytest.raises(DatasetError, match="bad_mask.png: mask of sample .* must have the same size"):
        train(SampleTable(dataset.root, df, dataset.meta), smoke(max_train_samples=None), runs_dir=tmp_path,
              progress=False)


def test_encoder_weights_from_a_file(tmp_path):
    src, _ = build_model(TrainConfig(encoder="resnet18", seed=5))
    path = tmp_path / "resnet18_encoder.pth"
    torch.save({f"encoder.{k}": v for k, v in src.encoder.state_dict().items()}, path)  # prefixes are stripped
    model, how = build_model(TrainConfig(encoder="resnet18", encoder_weights=str(path), seed=0))
    assert "resnet18_encoder.pth" in how
    assert torch.equal(model.encoder.conv1.weight, src.encoder.conv1.weight)
    with pytest.raises(ValueError, match="does not fit encoder 'resnet34'"):
        build_model(TrainConfig(encoder="resnet34", encoder_weights=str(path)))
    with pytest.raises(FileNotFoundError, match="not found"):
        build_model(TrainConfig(encoder="resnet18", encoder_weights=str(tmp_path / "missing.pth")))


def test_new_fields_at_their_old_defaults_keep_existing_run_folders(dataset, tmp_path):
    """lr_schedule and precision came later: a config that leaves them at constant / fp32 names its run as before."""
    cfg = smoke()
    payload = T.run_hash_payload(cfg, {"config_hash": "x", "root": "r"})
    assert "lr_schedule" not in payload["train"] and "precision" not in payload["train"]
    for changed in (replace(cfg, lr_schedule="onecycle"), replace(cfg, precision="bf16")):
        assert T.run_root(dataset, changed, tmp_path, None)[0] != T.run_root(dataset, cfg, tmp_path, None)[0]


def test_onecycle_warms_up_then_decays_and_resumes_exactly(dataset, tmp_path, monkeypatch):
    cfg = smoke(epochs=3, lr_schedule="onecycle", lr=2e-3)
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = T.lr_scheduler(opt, cfg, steps_per_epoch=10)
    rates = []
    for _ in range(30):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    peak = int(np.argmax(rates))
    assert rates[0] < cfg.lr / 20 and abs(max(rates) - cfg.lr) < 1e-9 and 5 <= peak <= 12 and rates[-1] < cfg.lr / 100
    assert T.lr_scheduler(opt, smoke(), 10) is None  # constant: no schedule
    # an interrupted one-cycle run resumes on the same rate curve (the scheduler is in last.pt)
    full = train(dataset, cfg, runs_dir=tmp_path / "full", progress=False)
    train(dataset, cfg, runs_dir=tmp_path / "part", progress=False, stop_after_epoch=1)
    resumed = train(dataset, cfg, runs_dir=tmp_path / "part", progress=False)
    wf, wr = weights(full), weights(resumed)
    assert all(torch.equal(wf[k], wr[k]) for k in wf)


def test_auto_precision_is_bf16_only_on_cpus_with_bf16_kernels(monkeypatch):
    from seg4seg_utils import kernels

    monkeypatch.setattr(kernels, "cpu_bf16_isa", lambda: "avx512_bf16")
    assert kernels.training_precision("auto", "cpu") == "bf16"
    assert kernels.training_precision("auto", torch.device("cuda")) == "fp32"  # accelerators: their own AMP
    monkeypatch.setenv("SEG4SEG_KERNELS", "portable")  # no oneDNN, no AMX
    assert kernels.training_precision("auto", "cpu") == "fp32"
    monkeypatch.delenv("SEG4SEG_KERNELS")
    monkeypatch.setattr(kernels, "cpu_bf16_isa", lambda: None)
    assert kernels.training_precision("auto", "cpu") == "fp32" and kernels.training_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision"):
        replace(smoke(), precision="fp16").validate()


def test_bf16_instructions_are_read_from_the_cpu_flags(tmp_path):
    from seg4seg_utils import kernels

    def isa(flags: str) -> str | None:
        (tmp_path / "cpuinfo").write_text(f"processor\t: 0\nmodel name\t: some CPU\nflags\t\t: {flags}\n\n")
        return kernels.cpu_bf16_isa(str(tmp_path / "cpuinfo"))

    assert isa("fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile") == "amx_bf16"   # Sapphire Rapids
    assert isa("fpu sse avx2 avx512f avx512_bf16 avx512_vnni") == "avx512_bf16"      # AMD Zen 4
    assert isa("fpu sse avx2 fma") is None and isa("fpu avx512f avx512_bf16x") is None  # whole flags only
    assert kernels.cpu_bf16_isa(str(tmp_path / "absent")) is None


needs_bf16 = pytest.mark.skipif(__import__("seg4seg_utils.kernels", fromlist=["x"]).cpu_bf16_isa() is None,
                                reason="this CPU has neither AMX-BF16 nor AVX512-BF16: auto precision trains in fp32 here")


@pytest.fixture(scope="module")
def bf16_alone(dataset, tmp_path_factory):
    """The seed-0 smoke model trained alone in bf16 (its own process), with what that process printed; trained
    once for both bf16 tests below (each bf16 training starts a process: about 8 s here)."""
    import contextlib
    import io

    printed, runs_dir = io.StringIO(), tmp_path_factory.mktemp("bf16-alone")
    with contextlib.redirect_stdout(printed):
        run = train(dataset, smoke(precision="auto"), runs_dir=runs_dir, progress=False)
    return run, printed.getvalue(), runs_dir


@needs_bf16
def test_bf16_training_runs_under_the_amx_cap_in_its_own_process_and_is_deterministic(dataset, bf16_alone, tmp_path):
    import json
    import os

    cfg = smoke(precision="auto")
    a, shown, runs_a = bf16_alone
    assert "[seg4seg] training" in shown and "it/s" not in shown  # without progress: the child's line, no bars
    b = train(dataset, cfg, runs_dir=tmp_path / "b", progress=False)
    assert a.done and a.config.precision == "bf16" and a.root != train(dataset, smoke(), runs_dir=runs_a,
                                                                      progress=False).root
    kernels_used = json.loads((a.root / "config.json").read_text())["kernels"]
    assert kernels_used["precision"] == "bf16" and kernels_used["ONEDNN_MAX_CPU_ISA"] == "AVX512_CORE_AMX"
    assert kernels_used["bf16_isa"] in ("amx_bf16", "avx512_bf16")
    assert os.environ["ONEDNN_MAX_CPU_ISA"] == "AVX2"  # this process keeps its cap
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@needs_bf16
def test_bf16_jobs_share_one_process_and_train_what_they_train_alone(dataset, bf16_alone, tmp_path, monkeypatch):
    import subprocess

    from seg4seg_utils.model.train import TrainJob, train_all

    alone = bf16_alone[0]
    children = []
    real_run = subprocess.run
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: children.append(a) or real_run(*a, **k))
    # the seed-0 model trains second, after another model in the same process
    jobs = [TrainJob(dataset, smoke(precision="auto", seed=seed), tmp_path / "both") for seed in (1, 0)]
    first, second = train_all(jobs, progress=False)
    assert len(children) == 1, "both bf16 models trained in one fresh process"
    assert first.done and second.done and first.root != second.root
    assert train_all(jobs, progress=False)[1].root == second.root and len(children) == 1  # read back, not retrained
    wa, wb = weights(alone), weights(second)
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "a model must not depend on what trained before it"


def test_training_skips_deterministic_nan_fills_and_gets_the_same_weights(dataset, tmp_path, monkeypatch):
    # the fills guard against kernels that read memory they never wrote; a training step has none, so without
    # them the weights are the same bits, and the flag is back as it was afterwards
    seen = []

    class Spy(T.BinaryTask):
        def loss(self):
            bce = super().loss()

            def loss(logits, y):
                seen.append(torch.utils.deterministic.fill_uninitialized_memory)
                return bce(logits, y)
            return loss

    before = torch.utils.deterministic.fill_uninitialized_memory
    unfilled = train(dataset, smoke(epochs=1), tmp_path / "unfilled", progress=False, task=Spy())
    assert seen and not any(seen) and torch.utils.deterministic.fill_uninitialized_memory == before
    seen.clear()
    monkeypatch.setattr(T, "uninitialised_memory_unfilled", contextlib.nullcontext)  # the fills as torch does them
    filled = train(dataset, smoke(epochs=1), tmp_path / "filled", progress=False, task=Spy())
    assert seen and all(seen)
    a, b = weights(unfilled), weights(filled)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
