"""Can the data loader keep up with training? Windows/s from disk to padded batches.

Writes ``--windows`` windows at the reference shape (306 sensors x 1000 samples, float32) as a
window dataset (Arrow, as ``megfm build-dataset`` saves it, and its Parquet shards), then times
one epoch of a ``torch.utils.data.DataLoader`` with ``MEGDataCollator`` (shuffled, batch 32, pretraining masks drawn) for
each number of workers in ``--workers``, from

- the Arrow dataset (``datasets.load_from_disk``) read as ``megfm pretrain`` reads it, a batch
  of rows at a time (:class:`megfm_hf.training.rows.WindowRows`), and, for comparison, with
  ``datasets``' NumPy format (window by window);
- the Parquet shards streamed as ``megfm pretrain --streaming`` does
  (:func:`megfm_hf.training.streaming.stream_windows`: a record batch at a time, shuffle buffer
  256), and, for comparison, with ``datasets.load_dataset(..., streaming=True)`` (which
  formats every window on its own).

The target is at least twice the training step rate. Where ``training_*.json`` files lie
beside the output (``results/`` by default), every loader rate is set beside the default
model's training rate in them (``latent``, width 256 x 8, mask ratio 0.5), as the ratio
loader / step.

    python benchmarks/bench_dataloader.py [--windows 512] [--workers 0 1 2]

Prints a table and writes ``benchmarks/results/dataloader_cpu.json`` (``--output`` elsewhere).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader

from megfm_hf import MEGConfig
from megfm_hf.data.shards import rows_table, window_features
from megfm_hf.training import MEGDataCollator, load_windows
from megfm_hf.training.rows import WindowRows
from megfm_hf.training.streaming import stream_windows

from common import record_header, write_results

RESULTS = Path(__file__).parent / "results"
SENSORS, SAMPLES, BATCH, SFREQ = 306, 1000, 32, 250.0


def write_windows(
    folder: Path,
    count: int,
    shard_size: int = 64,
    sensors: int = SENSORS,
    samples: int = SAMPLES,
) -> tuple[Path, Path]:
    """Write ``count`` random windows as an Arrow dataset and as Parquet shards, one subject
    per shard."""
    rng = np.random.default_rng(0)
    features = window_features(samples)
    positions = rng.normal(size=(sensors, 6)).astype(np.float32) * 0.1
    types = (np.arange(sensors) % 3 != 0).astype(np.int64)
    shards = folder / "parquet"
    shards.mkdir(parents=True)
    for index, start in enumerate(range(0, count, shard_size)):
        n = min(shard_size, count - start)
        table = rows_table(
            features,
            input_values=rng.normal(size=(n, sensors, samples)).astype(np.float32),
            sensor_positions=positions,
            sensor_types=types,
            sensor_mask=np.ones(sensors, dtype=bool),
            sfreq=SFREQ,
            onset_s=np.arange(n) * samples / SFREQ,
            strings={
                "subject": f"s{index:03d}", "session": "", "state": "rest", "label": "",
                "event": "", "recording": f"r{index:03d}",
            },
        )  # fmt: skip
        pq.write_table(table, shards / f"shard-{index:05d}.parquet", row_group_size=32)
    arrow = folder / "arrow"
    datasets.load_dataset(
        "parquet", data_files=sorted(str(p) for p in shards.glob("*.parquet")), split="train"
    ).save_to_disk(str(arrow))
    return arrow, shards


def epoch_rate(loader: DataLoader, count: int) -> float:
    """Windows/s of one pass over ``loader`` after its first batch (worker start-up)."""
    iterator = iter(loader)
    seen = len(next(iterator)["input_values"])
    start = time.perf_counter()
    for batch in iterator:
        seen += len(batch["input_values"])
    elapsed = time.perf_counter() - start
    return (seen - BATCH) / elapsed if seen > BATCH else float("nan")


def training_rates(folder: Path) -> dict[str, float]:
    """The default model's training windows/s, per ``training_*.json`` file in ``folder``."""
    rates = {}
    for path in sorted(folder.glob("training_*.json")):
        record = json.loads(path.read_text())
        settings = record.get("settings", {})
        for row in record.get("training", []):
            if (
                row.get("model") == "megfm" and row.get("mode") == "latent"
                and row.get("size") == "small" and row.get("mask_ratio") == 0.5
                and row.get("status") == "ok"
            ):  # fmt: skip
                shape = f"{settings.get('sensors')}x{settings.get('samples')}"
                rates[f"{path.name} ({shape}, batch {settings.get('batch')})"] = row[
                    "windows_per_s"
                ]
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=512)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output", type=Path, default=RESULTS / "dataloader_cpu.json")
    args = parser.parse_args()
    datasets.disable_progress_bars()
    collate = MEGDataCollator(MEGConfig(), draw_mask=True)  # as pretraining batches them
    rows = []
    with tempfile.TemporaryDirectory(prefix="megfm-bench-") as workdir:
        arrow, shards = write_windows(Path(workdir), args.windows)
        size_mb = sum(p.stat().st_size for p in shards.glob("*.parquet")) / 1e6
        print(
            f"{args.windows} windows of {SENSORS} x {SAMPLES} float32 ({size_mb:.0f} MB of "
            f"Parquet), batch {BATCH}, MEGDataCollator"
        )
        print(f"{'source':<26} {'workers':>7} {'windows/s':>10} {'MB/s':>8}")
        for workers in args.workers:
            sources = {
                "arrow (megfm rows)": WindowRows(load_windows(arrow)),
                "arrow (datasets numpy)": load_windows(arrow).with_format("numpy"),
                "parquet (megfm stream)": stream_windows(
                    sorted(shards.glob("*.parquet")), buffer_size=256, seed=0
                ),
                "parquet (datasets stream)": datasets.load_dataset(
                    "parquet", data_files=sorted(str(p) for p in shards.glob("*.parquet")),
                    split="train", streaming=True,
                ).with_format("numpy").shuffle(seed=0, buffer_size=256),
            }  # fmt: skip
            for name, dataset in sources.items():
                iterable = isinstance(dataset, datasets.IterableDataset)
                if iterable and workers > dataset.num_shards:
                    continue
                loader = DataLoader(
                    dataset,
                    batch_size=BATCH,
                    shuffle=not iterable,
                    collate_fn=collate,
                    num_workers=workers,
                    generator=torch.Generator().manual_seed(0),
                )
                rate = epoch_rate(loader, args.windows)
                mb_s = rate * SENSORS * SAMPLES * 4 / 1e6
                rows.append(
                    {"source": name, "workers": workers, "windows_per_s": rate, "mb_per_s": mb_s}
                )
                print(f"{name:<26} {workers:>7} {rate:>10.1f} {mb_s:>8.0f}", flush=True)

    steps = training_rates(args.output.parent)
    for label, step_rate in steps.items():
        best = max(r["windows_per_s"] for r in rows)
        print(
            f"training {label}: {step_rate:.2f} windows/s; best loader / step = {best / step_rate:.1f}x"
        )
    record = {
        **record_header("dataloader", torch, datasets),
        "settings": {
            "windows": args.windows,
            "sensors": SENSORS,
            "samples": SAMPLES,
            "batch": BATCH,
        },
        "results": rows,
        "training_windows_per_s": steps,
    }
    write_results(args.output, record)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
