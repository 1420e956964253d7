"""The GPU benchmark run, rehearsed on the CPU, and its summary against the speed targets.

A GPU lease is short and rare, so the script that spends it must work the first time: here it
runs every step at toy sizes (``run_gpu.sh --rehearse``), and the summary's verdicts are
checked on records whose figures are known.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_roofline  # noqa: E402
import bench_training  # noqa: E402
import gpu_summary  # noqa: E402
import peers  # noqa: E402

DEVICE = "cpu-rehearsal"


@pytest.mark.slow
def test_gpu_run_rehearsal_writes_every_record(tmp_path):
    # `compiled` and `graphs` compile for minutes on 2 cores; the rest is every step.
    steps = [
        "gputests", "small", "base", "loader", "trainer", "decodeall", "mixed", "finetune",
        "profile", "largebatch",
    ]  # fmt: skip
    result = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "run_gpu.sh"), "--rehearse", "--no-wheels"]
        + ["--results", str(tmp_path), *steps],
        env={**os.environ, "PYTHON": sys.executable, "OUT": ""},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    for step in steps:
        assert f"{step}: ok" in result.stdout

    # LUNA runs beside where braindecode is installed, and says why not elsewhere.
    luna_left_out = peers.luna_unavailable(200)
    for size in ("small", "base"):
        record = json.loads((tmp_path / f"training_{DEVICE}_{size}.json").read_text())
        rows = record["training"] + record["feature_extraction"]
        assert {(row["model"], row["mode"]) for row in rows} == {
            ("patchtst", "channel"),
            ("megfm", "latent"),
            ("megfm", "factorized"),
            ("megfm", "full"),
        } | ({("luna", "queries")} if luna_left_out is None else set())
        assert record["settings"]["luna"]["left_out"] == luna_left_out
        assert all(row["status"] == "ok" and row["windows_per_s"] > 0 for row in rows), rows
        assert all(row["size"] == size for row in rows)

    small = json.loads((tmp_path / f"training_{DEVICE}_small.json").read_text())
    large = json.loads((tmp_path / f"training_{DEVICE}_small_large_batch.json").read_text())
    assert large["settings"]["batch"] == 4  # the rehearsal's larger batch (2 in `small`)
    text = gpu_summary.large_batch_text(gpu_summary.default_row(small), large)
    assert text.startswith("Eager at batch 4: "), text

    loader = json.loads((tmp_path / f"dataloader_{DEVICE}.json").read_text())
    assert gpu_summary.STREAM in {row["source"] for row in loader["results"]}
    # The loader is set beside the training rate of the run's own training file.
    assert any(f"training_{DEVICE}_small.json" in key for key in loader["training_windows_per_s"])
    loop = json.loads((tmp_path / f"pretrain_{DEVICE}.json").read_text())
    assert [row["source"] for row in loop["results"]] == ["arrow", "parquet (streamed)"]
    assert all(row["windows_per_s"] > 0 for row in loop["results"])
    assert any(f"training_{DEVICE}_small.json" in key for key in loop["bare_step_windows_per_s"])
    # The loop's profiled steps, after the timed ones: their batches were waited for.
    assert loop["settings"]["profiled_steps"] == 2
    for row in loop["results"]:
        profile = row["profile"]
        assert profile["profiled_steps"] == 2 and profile["operators_per_step"] > 100
        assert profile["loader_ms_per_step"] > 0 and profile["wall_ms_per_step"] > 0
    mixed = json.loads((tmp_path / f"mixed_arrays_{DEVICE}.json").read_text())
    assert [row["sampling"] for row in mixed["results"]] == ["random", "group_by_length"]
    assert mixed["results"][1]["padded_share"] == 0.0 < mixed["results"][0]["padded_share"]

    finetuning = json.loads((tmp_path / f"finetuning_{DEVICE}.json").read_text())
    assert {
        (row["strategy"], row["checkpointing"], row["batch"]) for row in finetuning["results"]
    } == {
        (strategy, checkpointing, batch)
        for strategy in ("full", "lora")
        for checkpointing in (False, True)
        for batch in (1, 2)
    }
    assert all(row["status"] == "ok" and row["windows_per_s"] > 0 for row in finetuning["results"])
    lora = [row for row in finetuning["results"] if row["strategy"] == "lora"]
    assert all(row["trainable_parameters"] < row["parameters"] / 10 for row in lora)

    summary = (tmp_path / f"gpu_summary_{DEVICE}.md").read_text()
    assert "Fine-tuning on 30 sensors x 2 s at 250 Hz: measured on a CPU only" in summary
    assert summary.count("| **met** |") + summary.count("| **missed** |") == 3
    assert "no GPU MFU in these files | not measured" in summary  # a CPU has no bf16 peak
    assert "`megfm pretrain` loop" in summary
    assert "Profile of `megfm pretrain`'s loop (parquet (streamed), eager, batch 4)" in summary
    assert "Decoding the hidden tokens alone (the default)" in summary
    everything = json.loads((tmp_path / f"training_{DEVICE}_small_decode_visible.json").read_text())
    assert everything["settings"]["decode_visible"] is True
    # Decoding every token costs more FLOPs than the hidden ones alone.
    eager = json.loads((tmp_path / f"training_{DEVICE}_small.json").read_text())
    flops = {
        name: gpu_summary.default_row(record)["gflops_per_window"]
        for name, record in (("hidden", eager), ("all", everything))
    }
    assert flops["hidden"] < flops["all"]
    profile = json.loads((tmp_path / f"profile_{DEVICE}.json").read_text())
    assert profile["device_busy_ms_per_step"] is None  # no device to be busy on a CPU
    assert profile["operators_per_step"] > 100 and profile["wall_ms_per_step"] > 0
    assert profile["top"][0]["name"].startswith("aten::") and len(profile["top"]) > 5
    assert "Profile of a default training step (eager, batch 1)" in summary
    log = (tmp_path / f"run_gpu_{DEVICE}.log").read_text()
    assert len(re.findall(r"^== ", log, flags=re.MULTILINE)) == len(steps)  # a header a step


def _run_benchmark(script: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        cwd=REPO / "benchmarks",
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


@pytest.mark.slow
def test_cpu_benchmarks_write_their_records_at_toy_sizes(tmp_path):
    _run_benchmark(
        "bench_features_cpu.py", "--minutes", "0.15", "--batch-sizes", "1", "2",
        "--compile-batch-size", "0", "--output", str(tmp_path / "features.json"),
    )  # fmt: skip
    record = json.loads((tmp_path / "features.json").read_text())
    megfm = [row for row in record["results"] if row["model"] == "megfm"]
    assert [(row["pooling"], row["precision"], row["batch_size"]) for row in megfm] == [
        (pooling, precision, batch)
        for pooling in ("mean", "latents")
        for precision in ("float32", "bfloat16")
        for batch in (1, 2)
    ]
    # 9 s of recording hold two 4-s windows; batch size does not change float32 features, and
    # each pooling is compared with its own float32 features.
    assert all(row["windows"] == 2 for row in record["results"])
    for first in (0, 4):
        assert megfm[first + 1]["cosine_to_float32"] > 0.9999
        assert megfm[first + 2]["cosine_to_float32"] > 0.99
    for row in record["results"]:
        hour = row["preprocess_s_per_hour"] + row["features_s_per_hour"] + row["compile_s"]
        assert row["total_s_per_hour"] == pytest.approx(hour)
        assert row["meets_target"] == (row["total_s_per_hour"] <= 300.0)
    luna = [row for row in record["results"] if row["model"] == "luna"]
    left_out = record["settings"]["luna"]["left_out"]
    assert left_out == peers.luna_unavailable(1000)
    assert len(luna) == (0 if left_out else 4)

    _run_benchmark(
        "bench_dataset_build.py", "--recordings", "2", "--seconds", "10", "--num-proc", "1",
        "--output", str(tmp_path / "build.json"),
    )  # fmt: skip
    rows = json.loads((tmp_path / "build.json").read_text())["results"]
    assert [row["method"] for row in rows] == ["mne.io.read_raw().get_data()", "build_dataset"]
    assert rows[1]["windows"] == 4 and rows[1]["windows_per_s"] > 0  # 2 x two 4-s windows


def test_luna_masks_hide_whole_patches_at_the_ratio():
    generator = torch.Generator().manual_seed(0)
    mask = peers.luna_mask(3, 30, 200, 0.5, generator)
    assert mask.shape == (3, 30, 200) and mask.dtype == torch.bool
    patches = mask.view(3, 30, 5, peers.LUNA_PATCH)
    # Every patch is hidden or shown whole, and half of each window's 150 patches are hidden.
    assert torch.equal(patches.all(-1), patches.any(-1))
    assert patches.all(-1).sum(dim=(1, 2)).tolist() == [75, 75, 75]
    # Each window draws its own patches.
    assert not torch.equal(patches[0], patches[1])


def test_luna_is_left_out_with_the_reason():
    assert peers.luna_unavailable(500) == "LUNA needs a multiple of 40 samples (its patch), not 500"
    with pytest.raises(peers.PeerUnavailable, match="no LUNA has width 256 with 7 heads"):
        peers.luna_model(256, 8, 7, 306, 1000, classes=2)


@pytest.fixture
def fake_braindecode(tmp_path, monkeypatch):
    """A braindecode whose package ``__init__`` files fail as a torchaudio that cannot load
    makes the real ones fail, with a LUNA module that imports a sibling module."""
    package = tmp_path / "braindecode"
    for folder in (package, package / "models", package / "modules"):
        folder.mkdir()
        (folder / "__init__.py").write_text("raise OSError('libc10_cuda.so: cannot open')\n")
    (package / "modules" / "layers.py").write_text("WIDTH = 64\n")
    (package / "models" / "luna.py").write_text(
        "from braindecode.modules.layers import WIDTH\n\n\nclass LUNA:\n    width = WIDTH\n"
    )
    for name in [name for name in sys.modules if name.split(".")[0] == "braindecode"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in [name for name in sys.modules if name.split(".")[0] == "braindecode"]:
        del sys.modules[name]


def test_luna_imports_without_braindecodes_package_inits(fake_braindecode):
    assert peers.load_luna().width == 64
    assert peers.luna_unavailable(1000) is None


def test_summary_sets_the_default_model_beside_luna():
    record = {
        "training": [
            _row("luna", "queries", "small", 0.5, 50.0),
            _row("megfm", "latent", "small", 0.5, 400.0),
        ],
        "feature_extraction": [
            {**_row("luna", "queries", "small", None, 2000.0), "mask_ratio": None},
            {**_row("megfm", "latent", "small", None, 500.0), "mask_ratio": None},
        ],
    }
    assert gpu_summary.luna_text(record) == (
        "Beside braindecode's LUNA-Base (the default's width and depth): training (mask 0.5) "
        "400 against 50 windows/s (8.00x); features 500 against 2,000 windows/s (0.25x)."
    )
    record["training"][0]["status"] = "OOM"
    assert gpu_summary.luna_text(record).startswith(
        "Beside braindecode's LUNA-Base (the default's width and depth): features 500"
    )
    assert gpu_summary.luna_text({"training": [], "feature_extraction": []}) is None


def test_gpu_run_refuses_unknown_steps():
    result = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "run_gpu.sh"), "--rehearse", "everything"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "unknown step 'everything'" in result.stderr


def test_gpu_wheels_refuse_an_environment_without_the_packages_the_run_needs(tmp_path):
    """Every package the GPU run imports is pinned from the environment, or the script stops
    naming those missing, and keeps the wheels it made before: a shorter list would carry
    wheels that cannot import on the GPU machine."""
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "earlier.whl").write_bytes(b"kept")
    result = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_wheels.sh"), str(wheels)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": str(bare / "bin" / "python")},
    )
    assert result.returncode != 0
    assert "not installed in" in result.stderr
    for name in ("transformers", "datasets", "mne", "accelerate"):
        assert name in result.stderr
    assert (wheels / "earlier.whl").read_bytes() == b"kept"


def _row(model: str, mode: str, size: str, ratio: float, rate: float, **extra) -> dict:
    return {
        "model": model, "mode": mode, "size": size, "mask_ratio": ratio, "status": "ok",
        "windows_per_s": rate, "mfu": None, "peak_memory_bytes": 10 * 2**30, **extra,
    }  # fmt: skip


def _runs() -> tuple[dict, dict]:
    """An H200-like run: the default model at 30% MFU eager, 50% compiled and 40% with CUDA
    graphs; 4x / 3.5x / 3.2x PatchTST."""

    def record(rows: list[dict], batch: int = 32) -> dict:
        return {"settings": {"batch": batch}, "device": {"memory_bytes": 140 * 2**30},
                "training": rows, "feature_extraction": []}  # fmt: skip

    eager = record(
        [
            _row("patchtst", "channel", "small", 0.5, 100.0),
            _row("megfm", "latent", "small", 0.5, 400.0, mfu=0.30),
            _row("megfm", "factorized", "small", 0.5, 150.0, mfu=0.20),
        ]
    )
    compiled = record(
        [
            _row("patchtst", "channel", "small", 0.5, 200.0),
            _row("megfm", "latent", "small", 0.5, 700.0, mfu=0.50),
        ]
    )
    graphs = record(
        [
            _row("patchtst", "channel", "small", 0.5, 175.0),
            _row("megfm", "latent", "small", 0.5, 560.0, mfu=0.40),
        ]
    )
    base = record(
        [
            _row("patchtst", "channel", "base", 0.5, 20.0),
            _row("megfm", "latent", "base", 0.5, 90.0),
            {**_row("megfm", "factorized", "base", 0.5, 0.0), "status": "OOM"},
        ]
    )
    loader = {
        "results": [
            {"source": gpu_summary.STREAM, "workers": 0, "windows_per_s": 1000.0},
            {"source": gpu_summary.STREAM, "workers": 4, "windows_per_s": 1500.0},
            {"source": "arrow (megfm rows)", "workers": 4, "windows_per_s": 9000.0},
        ]
    }
    return {"eager": eager, "compiled": compiled, "graphs": graphs, "base": base}, loader


def _verdicts(runs: dict, loader: dict | None) -> list[str]:
    return [verdict for _, _, verdict in gpu_summary.target_rows(runs, loader)]


def test_summary_verdicts_follow_the_figures():
    runs, loader = _runs()
    rows = gpu_summary.target_rows(runs, loader)
    assert [verdict for _, _, verdict in rows] == ["**met**"] * 4
    assert "eager 30.0% (400 windows/s); compiled 50.0% (700 windows/s); graphs 40.0%" in rows[0][1]
    assert "default, eager: 4.00x; default, compiled: 3.50x; default, graphs: 3.20x" in rows[1][1]
    assert "base latent 4.50x" in rows[1][1]
    assert "factorized 0.5: OOM" in rows[2][1]
    # Only the streamed shards count, against the fastest training rate (700 windows/s).
    assert "1,500 windows/s streamed (4 workers) against 700 training windows/s: 2.1x" in rows[3][1]

    slower = copy.deepcopy(runs)
    slower["compiled"]["training"][1].update(mfu=0.44, windows_per_s=760.0)
    assert _verdicts(slower, loader) == ["**missed**", "**met**", "**met**", "**missed**"]
    slower["graphs"]["training"][1]["mfu"] = 0.46  # any variant of the default model counts
    assert _verdicts(slower, loader)[0] == "**met**"
    # Every pair of equally treated runs must reach the PatchTST ratio.
    slower["graphs"]["training"][0]["windows_per_s"] = 200.0
    assert _verdicts(slower, loader)[1] == "**missed**"

    oom = copy.deepcopy(runs)
    oom["base"]["training"][1]["status"] = "OOM"
    assert _verdicts(oom, loader)[2] == "**missed**"
    small_batch = copy.deepcopy(runs)
    small_batch["base"]["settings"]["batch"] = 8
    assert _verdicts(small_batch, loader)[2] == "**missed**"

    assert _verdicts({}, None) == ["not measured"] * 4


def test_summary_sets_a_larger_batch_beside_the_reference_one():
    runs, _ = _runs()
    bare = gpu_summary.default_row(runs["eager"])
    large = {
        "settings": {"batch": 128},
        "training": [_row("megfm", "latent", "small", 0.5, 1400.0, mfu=0.105)],
    }
    assert gpu_summary.large_batch_text(bare, large) == (
        "Eager at batch 128: 1,400 windows/s, 3.50x the reference batch's 400, MFU 10.5%, "
        "10.0 GiB peak memory."
    )
    large["training"][0]["status"] = "OOM"
    assert gpu_summary.large_batch_text(bare, large) is None
    assert gpu_summary.large_batch_text(bare, None) is None


def test_summary_says_how_busy_a_profiled_step_keeps_the_gpu():
    record = {
        "settings": {"batch": 32},
        "wall_ms_per_step": 49.4,
        "device_busy_ms_per_step": 19.8,
        "device_busy_share": 19.8 / 49.4,
        "kernels_per_step": 1412.0,
        "operators_per_step": 2391.0,
        "top_by": "device time",
        "top": [{"name": "aten::mm", "calls_per_step": 144.0, "ms_per_step": 6.25}],
    }
    assert gpu_summary.profile_text("Profile of a default training step", record) == (
        "Profile of a default training step: 49.4 ms a step, the GPU busy 19.8 ms of it (40%), "
        "1,412 kernels, 2,391 operators; most device time: aten::mm 6.2 ms."
    )
    # Profiles since the host's waits were counted say them, and a loop's its batches'.
    record |= {"host_waits_per_step": 2.0, "host_wait_ms_per_step": 3.46, "loader_ms_per_step": 0}
    assert "operators; the host waits for the GPU 2 times a step (3.5 ms); most device" in (
        gpu_summary.profile_text("A step", record)
    )
    loop = {
        "settings": {"batch": 32, "torch_compile_mode": None},
        "results": [
            {"source": "arrow", "profile": record | {"loader_ms_per_step": 21.04}},
            {"source": "parquet (streamed)", "profile": None},
        ],
    }
    lines = gpu_summary.loop_profile_lines(loop)
    assert lines[0] == "" and len(lines) == 2  # the streamed source was not profiled
    assert lines[1].startswith("Profile of `megfm pretrain`'s loop (arrow, eager, batch 32): 49.4")
    assert "(3.5 ms), for the next batch 21.0 ms; most device time" in lines[1]
    loop["settings"]["torch_compile_mode"] = "reduce-overhead"
    assert "(arrow, compiled, reduce-overhead, batch 32)" in gpu_summary.loop_profile_lines(loop)[1]
    assert gpu_summary.loop_profile_lines(None) == []


def test_summary_of_a_folder_without_results(tmp_path):
    assert gpu_summary.summary(tmp_path, "nvidia-h200") is None
    assert gpu_summary.main(["--device", "nvidia-h200", "--results", str(tmp_path)]) == 1


def _finetuning_record(rows: list[tuple[str, bool, int, str, float]]) -> dict:
    """A GPU fine-tuning record: (strategy, checkpointing, batch, status, reserved GiB) rows."""
    return {
        "device": {"kind": "cuda"},
        "settings": {
            "sensors": 306, "seconds": 30.0, "sfreq": 250.0, "precision": "bf16 autocast",
            "strategies": ["full", "lora"], "checkpointing": ["off", "on"], "budget_gib": 24.0,
        },
        "results": [
            {"strategy": strategy, "checkpointing": checkpointing, "batch": batch,
             "status": status, "peak_reserved_bytes": reserved * 2**30}
            for strategy, checkpointing, batch, status, reserved in rows
        ],
    }  # fmt: skip


def test_finetuning_fit_follows_the_reserved_memory():
    record = _finetuning_record(
        [
            ("full", False, 1, "ok", 9.0),
            ("full", False, 4, "ok", 23.5),
            ("full", False, 16, "ok", 80.0),  # runs on the big GPU, but not within 24 GiB
            ("full", True, 1, "ok", 5.0),
            ("full", True, 4, "OOM", 0.0),
            ("lora", False, 1, "ok", 30.0),
            ("lora", True, 1, "ok", 20.0),
        ]
    )
    text = gpu_summary.finetuning_text(record)
    assert "full, checkpointing off: batch 4; full, checkpointing on: batch 1" in text
    assert "lora, checkpointing off: not even batch 1; lora, checkpointing on: batch 1" in text
    assert text.endswith("Fits one 24 GB GPU.")

    too_big = _finetuning_record([("full", False, 1, "ok", 25.0), ("full", True, 1, "OOM", 0.0)])
    assert gpu_summary.finetuning_text(too_big).endswith("Does not fit one 24 GB GPU.")
    assert gpu_summary.finetuning_text(None) is None


# --------------------------------------------------------------------------------------------
# The roofline: kernels traced on the CPU, floors of a GPU
# --------------------------------------------------------------------------------------------


def _traced(step) -> list:
    return bench_roofline.trace_step(step, "test")


def test_roofline_counts_a_linear_layers_work_and_memory_by_hand():
    layer = torch.nn.Linear(64, 32)
    # (the 3-d input is viewed as 80 rows: a view runs no kernel)
    x = torch.randn(8, 10, 64, requires_grad=True)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x)
        out.float().sum().backward()

    kernels = _traced(step)
    names = [kernel.name for kernel in kernels]
    assert "view" not in names and "t" not in names
    (forward,) = [kernel for kernel in kernels if kernel.name == "addmm"]
    assert forward.flops == 2 * 80 * 64 * 32
    # bf16: the input and the weight cast for it, the bias, the output.
    assert forward.bytes == 2 * (80 * 64 + 64 * 32 + 32 + 80 * 32)
    products = [kernel for kernel in kernels if kernel.name == "mm"]
    assert sorted(kernel.flops for kernel in products) == [2 * 80 * 64 * 32] * 2  # (dx, dW)
    assert {kernel.module for kernel in products} == {"(backward, every module)"}


def test_roofline_records_masked_attention_as_one_fused_kernel_each_way():
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    generator = torch.Generator().manual_seed(0)
    q = torch.randn(3, 2, 5, 8, generator=generator, requires_grad=True)
    bias = torch.randn(3, 2, 5, 7, generator=generator, requires_grad=True)
    k7 = torch.randn(3, 2, 7, 8, generator=generator, requires_grad=True)
    v7 = torch.randn(3, 2, 7, 8, generator=generator, requires_grad=True)
    inputs = (q, k7, v7, bias)

    def run():
        out = torch.nn.functional.scaled_dot_product_attention(q, k7, v7, attn_mask=bias)
        return torch.autograd.grad(out.square().sum(), inputs)

    expected = run()
    found = []
    kernels = _traced(lambda: found.extend(run()))
    attention = [kernel for kernel in kernels if "attention" in kernel.name]
    assert [kernel.name for kernel in attention] == ["fused_attention", "fused_attention_backward"]
    assert attention[0].flops == sdpa_flop_count(q.shape, k7.shape, v7.shape)
    assert attention[1].flops == sdpa_backward_flop_count(q.shape, q.shape, k7.shape, v7.shape)
    # Forward reads q, k, v and the bias and writes the output and a float32 row statistic.
    element = 4
    reads = (q.numel() + k7.numel() + v7.numel() + bias.numel()) * element
    assert attention[0].bytes == reads + q.numel() * element + 3 * 2 * 5 * 4
    # The traced attention computes what PyTorch's does, gradients included.
    for got, want in zip(found, expected, strict=True):
        torch.testing.assert_close(got, want)
    # ... and hands PyTorch's back.
    assert torch.nn.functional.scaled_dot_product_attention is bench_roofline._SDPA


def test_roofline_floors_take_the_slower_of_arithmetic_and_memory():
    roofline = bench_roofline
    gpu = roofline.GPU("test", tflops=100.0, bandwidth_tbs=1.0)
    kernels = [
        roofline.Kernel("mm", "a", flops=2e12, bytes=1e9),  # 20 ms of work, 1 ms of memory
        roofline.Kernel("add", "a", flops=0.0, bytes=5e9),  # 5 ms of memory
        roofline.Kernel("fused_adamw", "optimizer", flops=0.0, bytes=1e6),  # 1 us: 2 us least
    ]
    result = roofline.floors(kernels, gpu, kernel_us=2.0)
    assert result.compute_s == pytest.approx(0.020)
    assert result.eager_s == pytest.approx(0.020 + 0.005 + 2e-6)
    assert result.fused_s == pytest.approx(0.020 + 2e-6)  # the add fused away
    row = result.as_dict(windows=4)
    assert row["eager_mfu_ceiling"] == pytest.approx(0.020 / 0.025002)
    assert row["modules"]["a"]["kernels"] == 2


@pytest.mark.slow
def test_roofline_of_the_default_model_counts_the_flops_bench_training_counts(tmp_path):
    output = tmp_path / "roofline.json"
    _run_benchmark(
        "bench_roofline.py", "--models", "default", "--batch", "4", "--gpus", "h200",
        "--bandwidth-tbs", "2", "--output", str(output),
    )  # fmt: skip
    record = json.loads(output.read_text())
    (gpu,) = record["gpus"]
    assert gpu["tflops"] == bench_roofline.GPUS["h200"].tflops and gpu["bandwidth_tbs"] == 2.0
    (row,) = gpu["models"]
    # Extrapolated from batch 2 and 3 to 4, the FLOPs are those of a step at batch 4 (within
    # the recomputation of a fused attention kernel's backward pass, which counts 5 products
    # where PyTorch's CPU fallback for masked attention runs 4).
    step, _ = bench_roofline.megfm_step("small", "latent", 0.5, 4)
    flops = bench_training.count_flops(step)
    assert flops < row["tflop_per_step"] * 1e12 < 1.01 * flops
    assert row["compute_floor_ms"] < row["fused_floor_ms"] < row["eager_floor_ms"]
    assert 0 < row["eager_mfu_ceiling"] < row["fused_mfu_ceiling"] < 1
    assert "| megfm default (latent 256 x 8) |" in record["markdown"]
