"""Pretraining end to end: windows/s of ``megfm pretrain``'s own loop beside the bare step.

``bench_training.py`` times a training step on batches already on the device. This times the
whole journey a user runs: :func:`megfm_hf.training.pretrain` on a window dataset (random
windows at the reference shape, 306 sensors x 1000 samples at 250 Hz, of 16 subjects),
with the ``Trainer``, the collator drawing masks, sensor-grouped batches, the data-loader
defaults (on a GPU: up to 4 workers and pinned memory) and bf16 on CUDA, from the Arrow dataset
and streamed from the Parquet shards (``--streaming``). A callback times the optimiser steps
after ``--warmup``; checkpointing, evaluation and export run after them, untimed.

Where ``training_*.json`` files lie beside the output, the rates are set beside the default
model's bare step rate in them: the ratio is what the data path and the ``Trainer`` leave of
the model's speed (1.0: the GPU is kept fed). ``--torch-compile-mode reduce-overhead`` has
the ``Trainer`` compile the whole model and replay it as CUDA graphs
(``torch_compile=True, torch_compile_mode="reduce-overhead"``), the loop's counterpart of
``bench_training.py --compile-mode reduce-overhead --compile-scope whole``.

``--profile-steps N`` runs N more steps under ``torch.profiler`` after the timed ones and says
where the loop's time goes, as ``bench_profile.py`` does for the bare step: how busy the device
is, how long the host waits for it (reading values back, blocking copies) and for the next
batch, and the operators that take the most time.

    python benchmarks/bench_pretrain.py [--windows 1024] [--steps 80] [--warmup 10]
        [--sources arrow parquet] [--torch-compile-mode reduce-overhead] [--profile-steps 3]

Prints a table and writes ``benchmarks/results/pretrain_<device>.json`` (``--output``
elsewhere).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import datasets
import torch
import transformers
from torch.profiler import profile
from transformers import TrainerCallback

from megfm_hf.data import MEGProcessor
from megfm_hf.training import pretrain

from bench_dataloader import SAMPLES, SENSORS, SFREQ, training_rates, write_windows
from bench_profile import activities, print_figures, summarize, with_wall_time
from bench_training import PATCH_LENGTH, device_identity, device_slug, synchronize
from common import record_header, write_results

RESULTS = Path(__file__).parent / "results"


class StepTimer(TrainerCallback):
    """Wall-clock seconds from the end of optimiser step ``warmup`` to the end of step ``end``."""

    def __init__(self, warmup: int, end: int, device: torch.device):
        self.warmup, self.end, self.device = warmup, end, device
        self.start: float | None = None
        self.seconds: float | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in (self.warmup, self.end):
            synchronize(self.device)
            now = time.perf_counter()
            if state.global_step == self.warmup:
                self.start = now
            elif self.start is not None:
                self.seconds = now - self.start


class StepProfiler(TrainerCallback):
    """``torch.profiler`` over the ``steps`` optimiser steps after step ``after``.

    The profile runs from the end of step ``after`` to the end of step ``after + steps``: whole
    turns of the loop, each with the fetch of its batch. ``figures`` holds
    :func:`bench_profile.with_wall_time`'s figures, with the profiled wall time per step (the
    profiler's own overhead included).
    """

    def __init__(self, after: int, steps: int, device: torch.device):
        self.after, self.steps, self.device = after, steps, device
        self.profiler: profile | None = None
        self.start = 0.0
        self.figures: dict | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.after:
            synchronize(self.device)
            self.profiler = profile(activities=activities(self.device))
            self.profiler.start()
            self.start = time.perf_counter()
        elif state.global_step == self.after + self.steps and self.profiler is not None:
            synchronize(self.device)
            wall_ms = (time.perf_counter() - self.start) * 1e3 / self.steps
            self.profiler.stop()
            self.figures = with_wall_time(
                summarize(self.profiler, self.steps, self.device), wall_ms
            )


def write_dataset(folder: Path, windows: int, sensors: int, samples: int) -> Path:
    """A window dataset as ``megfm build-dataset`` leaves it: Arrow, shards, processor."""
    shard_size = max(1, windows // 16)  # 16 subjects, so that some can be held out
    arrow, shards = write_windows(folder, windows, shard_size, sensors, samples)
    shards.rename(arrow / "parquet")  # where `megfm build-dataset` keeps them
    MEGProcessor(
        sfreq=SFREQ, patch_length=PATCH_LENGTH, window_seconds=samples / SFREQ
    ).save_pretrained(str(arrow))
    return arrow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=1024)
    parser.add_argument("--sensors", type=int, default=SENSORS)
    parser.add_argument(
        "--samples", type=int, default=SAMPLES, help=f"a multiple of {PATCH_LENGTH}"
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=80, help="optimiser steps in all")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument(
        "--profile-steps",
        type=int,
        default=0,
        help="steps profiled after the timed ones (default: none)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--sources",
        nargs="+",
        choices=("arrow", "parquet"),
        default=["arrow", "parquet"],
        help="train from the Arrow dataset, its Parquet shards streamed, or both",
    )
    parser.add_argument(
        "--torch-compile-mode",
        choices=("default", "reduce-overhead", "max-autotune"),
        help="the Trainer compiles the whole model (torch_compile=True) in this mode; "
        "reduce-overhead and max-autotune replay CUDA graphs (default: eager)",
    )
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if not 0 < args.warmup < args.steps:
        parser.error("--warmup must lie between 0 and --steps")
    if args.profile_steps < 0:
        parser.error("--profile-steps must be >= 0")
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    output = args.output or RESULTS / f"pretrain_{device_slug(device)}.json"

    rows = []
    with tempfile.TemporaryDirectory(prefix="megfm-bench-") as workdir:
        dataset = write_dataset(Path(workdir), args.windows, args.sensors, args.samples)
        print(
            f"{args.windows} windows of {args.sensors} x {args.samples}, batch {args.batch}, "
            f"{args.steps} steps ({args.warmup} untimed), default model, on {device}"
        )
        compiling = (
            {"torch_compile": True, "torch_compile_mode": args.torch_compile_mode}
            if args.torch_compile_mode
            else {}
        )
        total = args.steps + args.profile_steps
        for streaming in [source == "parquet" for source in args.sources]:
            timer = StepTimer(args.warmup, args.steps, device)
            profiler = StepProfiler(args.steps, args.profile_steps, device)
            start = time.perf_counter()
            pretrain(
                dataset,
                Path(workdir) / f"run-{'stream' if streaming else 'arrow'}",
                max_steps=total,
                batch_size=args.batch,
                test_fraction=0.1,
                streaming=streaming,
                callbacks=[timer, profiler] if args.profile_steps else [timer],
                bf16=cuda,
                use_cpu=not cuda,
                save_steps=total,
                logging_steps=total,
                **compiling,
            )
            rate = (args.steps - args.warmup) * args.batch / timer.seconds
            source = "parquet (streamed)" if streaming else "arrow"
            rows.append(
                {
                    "source": source,
                    "windows_per_s": rate,
                    "timed_steps": args.steps - args.warmup,
                    "run_seconds": time.perf_counter() - start,
                    "profile": profiler.figures,
                }
            )
            print(f"{source:<20} {rate:10.1f} windows/s", flush=True)
            if profiler.figures is not None:
                print(f"profiled: {profiler.figures['wall_ms_per_step']:.1f} ms a step")
                print_figures(profiler.figures)

    steps = training_rates(output.parent)
    for label, step_rate in steps.items():
        ratios = ", ".join(f"{r['source']} {r['windows_per_s'] / step_rate:.2f}x" for r in rows)
        print(f"bare step in {label}: {step_rate:.1f} windows/s; pretraining / bare: {ratios}")
    record = {
        **record_header(
            "pretrain",
            torch,
            transformers,
            datasets,
            **device_identity(device),
        ),
        "settings": {
            "windows": args.windows,
            "sensors": args.sensors,
            "samples": args.samples,
            "batch": args.batch,
            "steps": args.steps,
            "warmup": args.warmup,
            "profiled_steps": args.profile_steps,
            "precision": "bf16" if cuda else "float32",
            "torch_compile_mode": args.torch_compile_mode,
            "model": "MEGConfig defaults (latent, 256 x 8, mask ratio 0.5)",
        },
        "results": rows,
        "bare_step_windows_per_s": steps,
    }
    write_results(output, record)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
