"""Features for an hour of 306-sensor MEG on this machine's CPU, end to end, against a target.

A user without a GPU runs ``megfm features`` (or :func:`megfm_hf.inference.extract_features`)
on a recording. This benchmark writes a synthetic Vectorview-like FIF recording (306 sensors +
stim at 1000 Hz, ``--minutes`` long), then times, with the default model (``MEGConfig()``: latent
attention, width 256 x 8 layers, 250 Hz, patches of 25 samples) and its default processor
(0.5-100 Hz band-pass, notch, 250 Hz, 4-s windows):

- **preprocessing**: ``MEGProcessor.process`` (read, filter, resample, scale, window);
- **features**: ``extract_features`` over every window, in float32 and under bfloat16 autocast,
  pooled as the default model pools (the mean of its tokens) and, with the same weights, from
  its final latents (``pooling="latents"``, which skips the read-out to every token),
  for each of ``--batch-sizes``, and with ``torch.compile`` at ``--compile-batch-size`` (its
  compilation time is added to the total),

and scales both to one hour of recording (900 windows of 4 s). Every row also gives the mean
cosine similarity of its features to the float32 eager ones. The target is one hour in at most
5 minutes on 2 cores. Weights are random: speed does not depend on them. As ``megfm features``
does, the process keeps the memory it frees for its next tensors
(:func:`megfm_hf.memory.keep_freed_memory`); ``--system-allocator`` leaves it to the system, as
a Python session that does not opt in does.

Beside it, on the same preprocessed windows, braindecode's LUNA-Base (4 queries of 64, 8 blocks:
the default model's temporal width and depth; see ``peers.py``) in float32 and bfloat16 at each
batch size, its forward through its classification head; ``--skip-luna`` leaves it out.

    python benchmarks/bench_features_cpu.py [--minutes 5] [--batch-sizes 1 2 4 8] [--threads 2] \
        [--compile-batch-size 2 (0: no compiled runs)] [--skip-luna] [--system-allocator]

Prints a table and writes ``benchmarks/results/features_cpu.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import mne
import numpy as np
import torch
import transformers

from megfm_hf import MEGConfig, MEGModel
from megfm_hf.data import MEGProcessor
from megfm_hf.data.processor import ProcessedRecording
from megfm_hf.data.testing import make_raw, write_raw
from megfm_hf.inference import extract_features
from megfm_hf.memory import keep_freed_memory

import peers
from common import record_header, write_results

RESULTS = Path(__file__).parent / "results" / "features_cpu.json"
TARGET_SECONDS_PER_HOUR = 300.0
PRECISIONS = (("float32", None), ("bfloat16", torch.bfloat16))


def _cosine(features: np.ndarray, reference: np.ndarray) -> float:
    """Mean cosine similarity of each window's features to the float32 eager ones."""
    dot = (features * reference).sum(axis=1)
    norms = np.linalg.norm(features, axis=1) * np.linalg.norm(reference, axis=1)
    return float(np.mean(dot / np.clip(norms, 1e-12, None)))


def _first(processed: ProcessedRecording, count: int) -> ProcessedRecording:
    """The first ``count`` windows of a processed recording (for warm-up)."""
    keep = np.zeros(len(processed), dtype=bool)
    keep[:count] = True
    return dataclasses.replace(processed, plan=processed.plan.select(keep))


@torch.inference_mode()
def luna_features(
    model: torch.nn.Module,
    processed: ProcessedRecording,
    batch_size: int,
    dtype: torch.dtype | None,
) -> None:
    """LUNA's forward over every window of ``processed``, a batch at a time."""
    autocast = torch.autocast("cpu", dtype=dtype, enabled=dtype is not None)
    for _, windows in processed.iter_batches(batch_size):
        with autocast:
            model(torch.from_numpy(windows))


def time_luna(
    model: torch.nn.Module,
    processed: ProcessedRecording,
    batch_size: int,
    dtype: torch.dtype | None,
) -> float:
    """Seconds of LUNA's forward over every window (after one untimed batch)."""
    luna_features(model, _first(processed, batch_size), batch_size, dtype)
    start = time.perf_counter()
    luna_features(model, processed, batch_size, dtype)
    return time.perf_counter() - start


LABELS = {"megfm": "", "luna": "LUNA-Base "}


def timing_row(
    model: str,
    precision: str,
    batch_size: int,
    *,
    compiled: bool = False,
    n_windows: int,
    preprocess_s: float,
    features_s: float,
    scale: float,
    compile_s: float = 0.0,
    cosine: float | None = None,
    pooling: str | None = None,
) -> dict:
    """One result row, its times scaled to an hour by ``scale``; printed as a table line."""
    total = (preprocess_s + features_s) * scale + compile_s
    met = total <= TARGET_SECONDS_PER_HOUR
    label = LABELS[model] + precision + (" compiled" if compiled else "")
    label += " latents" if pooling == "latents" else ""
    print(
        f"{label:<18} {batch_size:>6} {n_windows / features_s:>10.2f} "
        f"{'-' if cosine is None else f'{cosine:.4f}':>7} {preprocess_s * scale:>15.1f} "
        f"{features_s * scale:>13.1f} {total:>10.1f} {'met' if met else 'missed':>13}",
        flush=True,
    )
    row: dict = {"model": model, "pooling": pooling, "precision": precision}
    row["batch_size"] = batch_size
    row.update(compiled=compiled, compile_s=compile_s)
    if cosine is not None:
        row["cosine_to_float32"] = cosine
    return {
        **row,
        "windows": n_windows,
        "features_windows_per_s": n_windows / features_s,
        "preprocess_s_per_hour": preprocess_s * scale,
        "features_s_per_hour": features_s * scale,
        "total_s_per_hour": total,
        "meets_target": met,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the recording")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument(
        "--compile-batch-size", type=int, default=2, help="batch of compiled runs (0: none)"
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument(
        "--poolings",
        nargs="+",
        choices=("mean", "latents"),
        default=["mean", "latents"],
        help="pooled features of the default model: the mean of its tokens, and the same weights "
        "pooled from the final latents (pooling='latents', no read-out to every token)",
    )
    parser.add_argument("--skip-luna", action="store_true", help="no LUNA rows")
    parser.add_argument(
        "--system-allocator",
        action="store_true",
        help="leave freed memory to the system, as a Python session does, instead of keeping "
        "it for the next tensors as `megfm features` does (megfm_hf.memory)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    kept = False if args.system_allocator else keep_freed_memory()
    mne.set_log_level("ERROR")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory(prefix="megfm-bench-") as workdir:
        raw = make_raw(n_sites=102, sfreq=1000.0, duration=args.minutes * 60.0, seed=0)
        path = write_raw(raw, Path(workdir) / "recording_raw.fif")
        del raw
        config = MEGConfig()
        model = MEGModel(config).eval()
        processor = MEGProcessor.from_model_config(config)

        start = time.perf_counter()
        processed = processor.process(path, reject=False)
        preprocess_s = time.perf_counter() - start
        n_windows = len(processed)
        parameters = sum(p.numel() for p in model.parameters()) / 1e6
        print(
            f"one hour of 306-sensor MEG (scaled from {args.minutes:g} min, {n_windows} windows "
            f"of 4 s), default model ({parameters:.1f} M parameters), {args.threads} threads"
        )
        print(
            f"{'precision':<18} {'batch':>6} {'windows/s':>10} {'cosine':>7} {'preprocess s/h':>15} "
            f"{'features s/h':>13} {'total s/h':>10} {'target 300 s':>13}"
        )

        rows = []
        timing = {
            "n_windows": n_windows,
            "preprocess_s": preprocess_s,
            "scale": 60.0 / args.minutes,
        }
        # The same weights pooled from the final latents (no read-out to every token).
        models = {"mean": model}
        if "latents" in args.poolings:
            models["latents"] = MEGModel(MEGConfig(pooling="latents")).eval()
            models["latents"].load_state_dict(model.state_dict())
        runs = [
            (pooling, name, dtype, batch, False)
            for pooling in args.poolings
            for name, dtype in PRECISIONS
            for batch in args.batch_sizes
        ]
        if args.compile_batch_size:
            runs += [
                ("mean", name, dtype, args.compile_batch_size, True) for name, dtype in PRECISIONS
            ]
        references: dict[str, np.ndarray] = {}
        for pooling, name, dtype, batch_size, compiled in runs:
            encoder = models[pooling]
            # one untimed batch first (warm-up; for compiled runs, the compilation)
            start = time.perf_counter()
            extract_features(
                encoder, processor, _first(processed, batch_size), batch_size=batch_size,
                autocast_dtype=dtype, torch_compile=compiled, progress=False,
            )  # fmt: skip
            compile_s = time.perf_counter() - start if compiled else 0.0
            start = time.perf_counter()
            features = extract_features(
                encoder, processor, processed, batch_size=batch_size, autocast_dtype=dtype,
                torch_compile=compiled, progress=False,
            )  # fmt: skip
            features_s = time.perf_counter() - start
            reference = references.setdefault(pooling, features.pooled)
            rows.append(
                timing_row(
                    "megfm", name, batch_size, compiled=compiled, compile_s=compile_s,
                    cosine=_cosine(features.pooled, reference), pooling=pooling, **timing,
                    features_s=features_s,
                )
            )  # fmt: skip

        luna_left_out = (
            "--skip-luna" if args.skip_luna else peers.luna_unavailable(processor.window_samples)
        )
        if luna_left_out:
            print(f"LUNA left out: {luna_left_out}")
        else:
            # LUNA at the default model's temporal width, depth and heads: LUNA-Base
            luna = peers.luna_model(
                config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
                len(processed.sensor_mask), processor.window_samples, classes=2,
            ).eval()  # fmt: skip
        for name, dtype in () if luna_left_out else PRECISIONS:
            for batch_size in args.batch_sizes:
                features_s = time_luna(luna, processed, batch_size, dtype)
                rows.append(timing_row("luna", name, batch_size, **timing, features_s=features_s))

    record = {
        **record_header("features_cpu", torch, transformers, mne, device={"threads": args.threads}),
        "settings": {
            "minutes": args.minutes,
            "batch_sizes": args.batch_sizes,
            "model": {
                k: getattr(config, k)
                for k in (
                    "attention_mode",
                    "hidden_size",
                    "num_hidden_layers",
                    "num_attention_heads",
                    "num_latents",
                    "sampling_rate",
                    "patch_length",
                )
            },
            "window_seconds": processor.window_seconds,
            "luna": {
                "braindecode": None if luna_left_out else peers.luna_version(),
                "left_out": luna_left_out,
                "model": "LUNA-Base: 4 queries of 64, 8 blocks, patches of 40 samples",
            },
            "target_s_per_hour": TARGET_SECONDS_PER_HOUR,
            "keep_freed_memory": kept,
        },
        "results": rows,
    }
    write_results(args.output, record)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
