"""Padding from mixed MEG systems: shuffled batches against batches of one sensor array.

A dataset that mixes systems (306 MEGIN/Elekta, 275 CTF, 248 4D/BTi and 157 KIT sensors, in
equal shares here) is batched by the ``Trainer`` of ``megfm pretrain`` in two ways:

- ``random``: transformers' default shuffle; the collator pads every batch to its largest
  window, so nearly every batch is padded to 306 sensors;
- ``group_by_length``: the megfm default, which makes every batch one sensor count
  (:class:`megfm_hf.training.sampling.SensorGroupedSampler`).

For each, one epoch of batches from the ``Trainer``'s own data loader gives the share of padded
sensor slots, and the same batches train the default model (``latent``, width 256 x 8, mask
ratio 0.5; bf16 autocast and fused AdamW on CUDA): windows/s over the epoch after one warm-up
step.

    python benchmarks/bench_mixed_arrays.py [--windows-per-system 16] [--samples 500]

Prints a table and writes ``benchmarks/results/mixed_arrays_<cpu|gpu name>.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import torch
import transformers
from transformers import TrainingArguments

from megfm_hf import MEGConfig, MEGForMaskedSignalModeling
from megfm_hf.data.shards import rows_table, window_features
from megfm_hf.training import MEGDataCollator
from megfm_hf.training.trainer import build_trainer

from bench_training import device_identity, device_slug, synchronize
from common import record_header, write_results

RESULTS = Path(__file__).parent / "results"
SYSTEMS = {"MEGIN/Elekta": 306, "CTF": 275, "4D/BTi": 248, "KIT": 157}
PATCH_LENGTH = 25


def mixed_windows(per_system: int, samples: int) -> datasets.Dataset:
    """Random windows, ``per_system`` of each system in ``SYSTEMS``, one after the other."""
    rng = np.random.default_rng(0)
    features = window_features(samples)
    tables = []
    for name, sensors in SYSTEMS.items():
        tables.append(
            rows_table(
                features,
                input_values=rng.normal(size=(per_system, sensors, samples)).astype(np.float32),
                sensor_positions=rng.normal(size=(sensors, 6)).astype(np.float32) * 0.1,
                sensor_types=(np.arange(sensors) % 3 != 0).astype(np.int64),
                sensor_mask=np.ones(sensors, dtype=bool),
                sfreq=250.0,
                onset_s=np.arange(per_system) * samples / 250.0,
                strings={
                    "subject": name,
                    "session": "",
                    "state": "rest",
                    "label": "",
                    "event": "",
                    "recording": name,
                },
            )  # fmt: skip
        )
    table = pa.concat_tables(tables)
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=features)).with_format(
        "numpy"
    )


def epoch_batches(
    windows: datasets.Dataset, strategy: str, batch: int, config: MEGConfig, workdir: str
) -> list[dict[str, torch.Tensor]]:
    """One epoch of collated batches, in the order the pretraining ``Trainer`` draws them."""
    args = TrainingArguments(
        output_dir=workdir,
        per_device_train_batch_size=batch,
        train_sampling_strategy=strategy,
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        seed=0,
    )
    collator = MEGDataCollator(config, draw_mask=True)
    trainer = build_trainer(MEGForMaskedSignalModeling(config), args, windows, None, collator)
    return [dict(b) for b in trainer.get_train_dataloader()]


def train_epoch(
    batches: list[dict[str, torch.Tensor]], config: MEGConfig, device: torch.device
) -> float:
    """Windows/s of training steps over ``batches`` (the first one is an untimed warm-up)."""
    torch.manual_seed(0)
    model = MEGForMaskedSignalModeling(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    )

    def step(inputs: dict[str, torch.Tensor]) -> None:
        inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()

    step(batches[0])
    synchronize(device)
    start = time.perf_counter()
    for inputs in batches[1:]:
        step(inputs)
    synchronize(device)
    return sum(len(b["input_values"]) for b in batches[1:]) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows-per-system", type=int, default=16)
    parser.add_argument("--samples", type=int, default=500, help="samples per window")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()

    config = MEGConfig(sampling_rate=250.0, patch_length=PATCH_LENGTH)
    windows = mixed_windows(args.windows_per_system, args.samples)
    print(
        f"{len(windows)} windows ({args.windows_per_system} each of "
        f"{', '.join(f'{k} {v}' for k, v in SYSTEMS.items())} sensors) x {args.samples} "
        f"samples, batch {args.batch}, latent 256 x 8 on {device}"
    )
    print(f"{'sampling':<16} {'padded slots':>12} {'windows/s':>10}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="megfm-bench-") as workdir:
        for strategy in ("random", "group_by_length"):
            batches = epoch_batches(windows, strategy, args.batch, config, workdir)
            slots = sum(b["sensor_mask"].numel() for b in batches)
            padded = sum(int((~b["sensor_mask"]).sum()) for b in batches)
            rate = train_epoch(batches, config, device)
            rows.append(
                {
                    "sampling": strategy,
                    "batches": len(batches),
                    "padded_share": padded / slots,
                    "mean_padded_sensors": slots / sum(len(b["sensor_mask"]) for b in batches),
                    "windows_per_s": rate,
                }
            )
            print(f"{strategy:<16} {padded / slots:>12.1%} {rate:>10.2f}", flush=True)
    speedup = rows[1]["windows_per_s"] / rows[0]["windows_per_s"]
    print(f"group_by_length / random: {speedup:.2f}x")

    record = {
        **record_header(
            "mixed_arrays",
            torch,
            transformers,
            **device_identity(device),
        ),
        "settings": {
            "systems": SYSTEMS,
            "windows_per_system": args.windows_per_system,
            "samples": args.samples,
            "batch": args.batch,
            "model": "latent, 256 x 8, mask ratio 0.5",
        },
        "results": rows,
        "speedup": speedup,
    }
    output = args.output or RESULTS / f"mixed_arrays_{device_slug(device)}.json"
    write_results(output, record)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
