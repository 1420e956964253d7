"""Memory and speed of fine-tuning on long windows: does 306 sensors x 30 s fit one 24 GB GPU?

A clinical fine-tuning run classifies long stretches of MEG. For every fine-tuning strategy
(``full``, ``lora``, ``linear_probe``, as ``megfm finetune --strategy``), with activation
checkpointing off and on, and for each batch size in turn, this times fine-tuning steps of
``MEGForSequenceClassification`` at the library's default configuration (``latent`` mode,
width 256 x 8) on random windows of ``--sensors`` x ``--seconds`` at ``--sfreq`` (default
306 x 30 s at 250 Hz: 300 patches of 25 samples, 91,800 tokens a window):

- a step is forward with labels, backward, and an AdamW step over the trainable parameters
  (fused AdamW and ``torch.autocast(bfloat16)`` on CUDA, float32 on the CPU), as the
  ``Trainer`` runs it; windows/s is the batch over the median of ``--steps`` timed steps after
  ``--warmup`` untimed ones;
- peak memory: on a GPU ``torch.cuda.max_memory_allocated`` and ``max_memory_reserved`` (what
  the caching allocator held, which is what must fit); a batch fits ``--budget-gib`` (24) when
  its reserved peak does. On a CPU the process's peak resident set above its start, in
  float32: an upper bound of what bf16 needs, not a GPU figure.

A configuration stops at its first batch that runs out of memory, so a GPU run finds the
largest batch of each.

    python benchmarks/bench_finetuning.py                        # CPU or GPU defaults
    python benchmarks/bench_finetuning.py --batches 1 2 4 8 16 --strategies full lora
    python benchmarks/bench_finetuning.py --print-table benchmarks/results/finetuning_cpu.json

Writes ``benchmarks/results/finetuning_<device>.json`` (rewritten after every measurement) and
prints a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
from pathlib import Path
from typing import Any

import peft
import torch
import transformers

from megfm_hf import MEGConfig, MEGForSequenceClassification
from megfm_hf.training.finetune import STRATEGIES, apply_strategy

from bench_training import (
    CPU_PEAK_RESETS,
    PATCH_LENGTH,
    RESULTS,
    Settings,
    _cell,
    _memory_key,
    _memory_window,
    batch_of,
    device_identity,
    device_slug,
    guarded,
    make_inputs,
    time_steps,
)
from common import record_header, write_results

#: Defaults per device kind: batches up to the largest that fits on CUDA; one window on a CPU.
DEFAULTS: dict[str, dict[str, Any]] = {
    "cuda": {"batches": [1, 2, 4, 8, 16, 32], "steps": 5, "warmup": 2},
    "cpu": {"batches": [1], "steps": 1, "warmup": 1},
}
GIB = 2**30


def classifier_config(patches: int) -> MEGConfig:
    """The library's default model as a two-class classifier over ``patches`` patches."""
    return MEGConfig(
        patch_length=PATCH_LENGTH,
        max_patches=max(512, patches),
        num_labels=2,
        classifier_dropout=0.0,
    )


def finetune_step_figures(
    settings: Settings, inputs: dict, strategy: str, checkpointing: bool
) -> dict[str, Any]:
    """Figures of fine-tuning steps of the default classifier with ``strategy``."""
    row: dict[str, Any] = {}
    with _memory_window(settings, row):
        with settings.device:
            model = MEGForSequenceClassification(classifier_config(settings.patches)).train()
        if checkpointing:
            model.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False}
            )
        net = apply_strategy(model, strategy)
        trainable = [p for p in net.parameters() if p.requires_grad]
        row["parameters"] = sum(p.numel() for p in net.parameters())
        row["trainable_parameters"] = sum(p.numel() for p in trainable)
        optimizer = torch.optim.AdamW(
            trainable, lr=1e-4, weight_decay=0.05, fused=settings.device.type == "cuda"
        )
        labels = (torch.arange(settings.batch) % 2).to(settings.device)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with settings.autocast():
                loss = net(**inputs, labels=labels).loss
            loss.backward()
            optimizer.step()

        seconds = time_steps(step, settings.warmup, settings.steps, settings.device)
        if settings.device.type == "cuda":
            row["peak_reserved_bytes"] = torch.cuda.max_memory_reserved(settings.device)
    median = statistics.median(seconds)
    row.update(
        status="ok",
        step_seconds_median=median,
        step_seconds=seconds,
        windows_per_s=settings.batch / median,
        tokens_per_s=settings.batch / median * settings.tokens_per_window,
        mfu=None,
    )
    return row


def fits(row: dict, budget_bytes: int) -> bool | None:
    """Whether a GPU measurement's reserved peak fits the budget (None: not a GPU figure)."""
    if row.get("status") == "OOM":
        return False
    if row.get("status") != "ok" or "peak_reserved_bytes" not in row:
        return None
    return row["peak_reserved_bytes"] <= budget_bytes


def largest_fitting_batch(record: dict, strategy: str, checkpointing: bool) -> int | None:
    """The largest batch of one configuration that fits the record's budget on a GPU."""
    budget = record["settings"]["budget_gib"] * GIB
    batches = [
        row["batch"]
        for row in record["results"]
        if row["strategy"] == strategy
        and row["checkpointing"] == checkpointing
        and fits(row, budget)
    ]
    return max(batches, default=None)


def markdown(record: dict) -> str:
    """The Markdown table of a results record."""
    s = record["settings"]
    mem = _memory_key(record["device"]["kind"])
    budget = s["budget_gib"] * GIB
    lines = [
        f"{record['device']['name']} ({record['device']['kind']}), {s['sensors']} sensors x "
        f"{s['seconds']:g} s at {s['sfreq']:g} Hz ({s['tokens_per_window']:,} tokens a window), "
        f"{s['precision']}, median of {s['steps']} steps",
    ]
    if mem != "peak_memory_bytes":
        lines.append(
            "peak memory: the process's peak RSS above its RSS when the measurement began "
            "(float32; a GPU run in bf16 needs less)"
        )
    lines += [
        "",
        f"| strategy | checkpointing | batch | windows/s | s/step | peak memory | GPU reserved "
        f"| fits {s['budget_gib']:g} GiB |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in record["results"]:
        verdict = {True: "yes", False: "no", None: "-"}[fits(row, budget)]
        lines.append(
            f"| {row['strategy']} | {'on' if row['checkpointing'] else 'off'} | {row['batch']} "
            f"| {_cell(row, 'windows_per_s', '.2f')} | {_cell(row, 'step_seconds_median', '.2f')} "
            f"| {_cell(row, mem, 'gib')} | {_cell(row, 'peak_reserved_bytes', 'gib')} | {verdict} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when present")
    parser.add_argument("--sensors", type=int, default=306)
    parser.add_argument("--seconds", type=float, default=30.0, help="window length")
    parser.add_argument("--sfreq", type=float, default=250.0, help="sampling rate (Hz)")
    parser.add_argument("--batches", nargs="+", type=int, help="batch sizes, smallest first")
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument(
        "--checkpointing",
        nargs="+",
        choices=("off", "on"),
        default=["off", "on"],
        help="activation checkpointing settings to measure",
    )
    parser.add_argument("--steps", type=int, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, help="untimed steps first")
    parser.add_argument("--budget-gib", type=float, default=24.0, help="GPU memory to fit")
    parser.add_argument("--output", type=Path, help="default: results/finetuning_<device>.json")
    parser.add_argument("--print-table", type=Path, metavar="FILE", help="print a record's table")
    args = parser.parse_args(argv)
    if args.print_table:
        return args
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    for key, value in DEFAULTS[args.device].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    samples = round(args.seconds * args.sfreq)
    if samples % PATCH_LENGTH or samples == 0:
        parser.error(
            f"--seconds x --sfreq gives {samples} samples, not a positive multiple of the "
            f"patch length {PATCH_LENGTH}"
        )
    args.samples = samples
    if sorted(args.batches) != args.batches or min(args.batches) < 1:
        parser.error("--batches must be positive and in increasing order")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.print_table:
        print(markdown(json.loads(args.print_table.read_text())))
        return
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    base = Settings(
        device=device,
        batch=max(args.batches),
        sensors=args.sensors,
        samples=args.samples,
        steps=args.steps,
        warmup=args.warmup,
        compile_mode=None,
        gradient_checkpointing=False,
    )
    output = args.output or RESULTS / f"finetuning_{device_slug(device)}.json"
    record: dict[str, Any] = {
        **record_header(
            "finetuning",
            torch,
            transformers,
            peft,
            **device_identity(device),
            versions={"cuda": torch.version.cuda},
        ),
        "settings": {
            "sensors": args.sensors,
            "seconds": args.seconds,
            "sfreq": args.sfreq,
            "samples": args.samples,
            "patch_length": PATCH_LENGTH,
            "patches": base.patches,
            "tokens_per_window": base.tokens_per_window,
            "model": "MEGConfig defaults (latent, 256 x 8), two classes",
            "strategies": args.strategies,
            "checkpointing": args.checkpointing,
            "batches": args.batches,
            "steps": args.steps,
            "warmup": args.warmup,
            "precision": "bf16 autocast" if cuda else "float32",
            "optimizer": "AdamW (fused) over the trainable parameters" if cuda else "AdamW",
            "budget_gib": args.budget_gib,
        },
        "cpu_peak_rss_resets": None if cuda else CPU_PEAK_RESETS,
        "results": [],
    }
    if cuda:
        record["device"]["memory_bytes"] = torch.cuda.get_device_properties(device).total_memory
    inputs = make_inputs(base.batch, base.sensors, base.samples, device)
    print(
        f"{args.sensors} sensors x {args.samples} samples ({base.tokens_per_window:,} tokens a "
        f"window) on {record['device']['name']}",
        flush=True,
    )

    for strategy in args.strategies:
        for checkpointing in (setting == "on" for setting in args.checkpointing):
            for batch in args.batches:
                settings = dataclasses.replace(base, batch=batch)
                label = {"strategy": strategy, "checkpointing": checkpointing, "batch": batch}
                measure = functools.partial(
                    finetune_step_figures,
                    settings,
                    batch_of(inputs, batch),
                    strategy,
                    checkpointing,
                )
                row = guarded(settings, label, measure)
                record["results"].append(row)
                write_results(output, record, indent=1)
                if row["status"] == "OOM":
                    break  # larger batches of this configuration cannot fit either

    print()
    print(markdown(record))
    print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()
