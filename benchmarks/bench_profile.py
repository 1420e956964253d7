"""Where a training step of the default model spends its time: the device's busy share.

``bench_training.py`` gives a step's rate. This says what bounds it: one step of the default
model (latent, 256 x 8, mask 0.5; forward, backward, AdamW) at the reference shape is timed
as ``bench_training.py`` times it, then profiled (``torch.profiler``) over a few more steps.
Beside the wall time of a step it prints

- the device's busy time per step (the kernels' own time, summed): near the wall time, the
  kernels are the limit (their arithmetic, or the memory they move); far below it, the GPU
  waits for the host to launch them;
- the kernels launched and the operators dispatched per step;
- how often, and how long, the host waits for the device (reading a value back, a blocking
  copy): each wait drains the queue of launched kernels, so the device then idles until the
  host has launched the next ones;
- the operators that take the most device time (on a CPU: host time), with their counts.

    python benchmarks/bench_profile.py [--batch 32] [--steps 3] [--compile-mode reduce-overhead]

Writes ``benchmarks/results/profile_<device>.json`` (``_compiled``, ``_graphs`` added when
compiled; ``--output`` elsewhere).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import torch
import transformers
from torch.profiler import ProfilerActivity, profile

from megfm_hf import MEGForMaskedSignalModeling

from bench_training import (
    PATCH_LENGTH,
    SIZES,
    device_identity,
    device_slug,
    make_inputs,
    megfm_config,
    synchronize,
    time_steps,
)
from common import record_header, write_results

RESULTS = Path(__file__).parent / "results"
#: operators listed, by the time they take
TOP = 15
#: CUDA runtime calls in which the host waits for the device: ``.item()``, ``.tolist()``, a
#: tensor's truth value, a blocking copy. (``torch.cuda.synchronize``, which the benchmarks
#: call around what they time, is ``cudaDeviceSynchronize``: not counted.)
WAITS = frozenset({"cudaStreamSynchronize", "cudaEventSynchronize"})
#: how a ``torch.utils.data.DataLoader`` names the ``__next__`` calls it records
LOADER_EVENT = "enumerate(DataLoader)"


def training_step(model: MEGForMaskedSignalModeling, batch: dict, device: torch.device, mode):
    """One pretraining step (forward, backward, AdamW) as a callable, compiled when asked."""
    net = torch.compile(model, mode=mode) if mode else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    graphs = mode in ("reduce-overhead", "max-autotune")

    def step() -> None:
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = net(**batch).loss
        loss.backward()
        optimizer.step()

    return step


def profile_steps(step, steps: int, device: torch.device) -> dict[str, Any]:
    """Per-step figures of ``steps`` profiled calls of ``step``."""
    with profile(activities=activities(device)) as profiler:
        for _ in range(steps):
            step()
        synchronize(device)
    return summarize(profiler, steps, device)


def activities(device: torch.device) -> list[ProfilerActivity]:
    """What ``torch.profiler`` records on ``device``: the host, and a GPU's kernels."""
    return [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])


def summarize(profiler: profile, steps: int, device: torch.device) -> dict[str, Any]:
    """Per-step figures of a finished profile of ``steps`` steps on ``device``.

    Beside the device's busy time, kernels and operators, the host's two kinds of waiting:
    for the device (``WAITS``: reading a value back, a blocking copy) and for the next batch
    (the data loader's ``__next__``, which it records itself; none in a bare step).
    """
    cuda = device.type == "cuda"
    events = profiler.events()
    # The device's own activities (kernels, copies), summed as torch.profiler's table sums them.
    kernels = [
        event
        for event in events
        if event.device_type == torch.autograd.DeviceType.CUDA
        and not getattr(event, "is_user_annotation", False)
    ]
    operators = [event for event in events if event.name.startswith("aten::")]
    # Operators called inside others (aten::linear calls aten::addmm) count once, at the top.
    dispatched = [event for event in operators if not _under_operator(event)]
    waits = [event for event in events if event.name in WAITS]
    loading = [event for event in events if event.name.startswith(LOADER_EVENT)]
    # Each kernel's time goes to the operator that launched it (its "self" device time).
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    averages = [event for event in profiler.key_averages() if event.key.startswith("aten::")]
    top = sorted(averages, key=lambda event: getattr(event, key), reverse=True)[:TOP]
    busy = sum(event.self_device_time_total for event in kernels) / 1e3 / steps
    return {
        "profiled_steps": steps,
        "device_busy_ms_per_step": busy if cuda else None,
        "kernels_per_step": len(kernels) / steps if cuda else None,
        "operators_per_step": len(dispatched) / steps,
        "host_waits_per_step": len(waits) / steps if cuda else None,
        "host_wait_ms_per_step": _elapsed_ms(waits) / steps if cuda else None,
        "loader_ms_per_step": _elapsed_ms(loading) / steps,
        "top": [
            {
                "name": event.key,
                "calls_per_step": event.count / steps,
                "ms_per_step": getattr(event, key) / 1e3 / steps,
            }
            for event in top
        ],
        "top_by": "device time" if cuda else "host time",
    }


def with_wall_time(figures: dict[str, Any], wall_ms: float) -> dict[str, Any]:
    """:func:`summarize`'s ``figures`` with the wall time of a step and the device's busy share
    of it."""
    busy = figures["device_busy_ms_per_step"]
    return {
        "wall_ms_per_step": wall_ms,
        "device_busy_share": None if busy is None else busy / wall_ms,
        **figures,
    }


def print_figures(figures: dict[str, Any]) -> None:
    """Print :func:`with_wall_time`'s figures, after the wall time."""
    if figures["device_busy_share"] is not None:
        print(
            f"device busy per step: {figures['device_busy_ms_per_step']:.1f} ms "
            f"({figures['device_busy_share']:.0%} of the wall time), "
            f"{figures['kernels_per_step']:.0f} kernels"
        )
    if figures["host_waits_per_step"] is not None:
        print(
            f"host waits for the device per step: {figures['host_waits_per_step']:.1f} times, "
            f"{figures['host_wait_ms_per_step']:.1f} ms"
        )
    if figures["loader_ms_per_step"]:
        print(f"host waits for the next batch per step: {figures['loader_ms_per_step']:.1f} ms")
    print(f"operators dispatched per step: {figures['operators_per_step']:.0f}")
    print(f"\nby {figures['top_by']} (per step):")
    for row in figures["top"]:
        print(f"  {row['ms_per_step']:8.2f} ms  {row['calls_per_step']:7.1f} x  {row['name']}")


def _elapsed_ms(events) -> float:
    return sum(event.time_range.elapsed_us() for event in events) / 1e3


def _under_operator(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when present")
    parser.add_argument("--batch", type=int, help="windows per step (default: 32 on CUDA, 2)")
    parser.add_argument("--sensors", type=int, default=306)
    parser.add_argument(
        "--samples", type=int, help=f"a multiple of {PATCH_LENGTH} (default: 1000 on CUDA, 250)"
    )
    parser.add_argument("--steps", type=int, default=3, help="profiled steps")
    parser.add_argument("--timed", type=int, default=10, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument(
        "--compile-mode",
        choices=("default", "reduce-overhead"),
        help="torch.compile the whole model in this mode (default: eager)",
    )
    parser.add_argument("--output", type=Path, help="default: results/profile_<device>.json")
    args = parser.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = args.device == "cuda"
    args.batch = args.batch or (32 if cuda else 2)
    args.samples = args.samples or (1000 if cuda else 250)
    if args.samples % PATCH_LENGTH:
        parser.error(f"--samples {args.samples} is not a multiple of {PATCH_LENGTH}")
    if min(args.batch, args.sensors, args.steps, args.timed) < 1 or args.warmup < 0:
        parser.error("--batch, --sensors, --steps and --timed must be >= 1, --warmup >= 0")
    if args.compile_mode:
        args.warmup = max(args.warmup, 3)  # compiling and recording graphs stay untimed
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    with device:
        model = MEGForMaskedSignalModeling(megfm_config(SIZES["small"], "latent", 0.5)).train()
    inputs = make_inputs(args.batch, args.sensors, args.samples, device)
    valid = torch.ones(args.batch, args.sensors, dtype=torch.bool)
    patches = args.samples // PATCH_LENGTH
    mask = model.draw_mask(valid, patches, torch.Generator().manual_seed(0)).to(device)
    step = training_step(model, {**inputs, "mask": mask}, device, args.compile_mode)

    seconds = time_steps(step, args.warmup, args.timed, device)
    wall_ms = statistics.median(seconds) * 1e3
    figures = with_wall_time(profile_steps(step, args.steps, device), wall_ms)
    mode = args.compile_mode or "eager"
    print(
        f"{args.batch} x {args.sensors} sensors x {args.samples} samples, default model, "
        f"{mode}, on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}"
    )
    print(f"wall time per step (median of {args.timed}): {wall_ms:.1f} ms")
    print_figures(figures)

    record = {
        **record_header("profile", torch, transformers, **device_identity(device)),
        "settings": {
            "batch": args.batch,
            "sensors": args.sensors,
            "samples": args.samples,
            "compile_mode": args.compile_mode,
            "precision": "bf16 autocast" if device.type == "cuda" else "float32",
            "model": "MEGConfig defaults (latent, 256 x 8, mask ratio 0.5)",
        },
        **figures,
    }
    suffix = {None: "", "default": "_compiled", "reduce-overhead": "_graphs"}[args.compile_mode]
    output = args.output or RESULTS / f"profile_{device_slug(device)}{suffix}.json"
    write_results(output, record)
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()
