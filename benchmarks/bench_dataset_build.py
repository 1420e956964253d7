"""Benchmark: building a window dataset from FIF files, beside reading the same files bare.

Writes synthetic Vectorview-like recordings (306 sensors + stim, 1000 Hz, float32 FIF), then times

- ``mne.io.read_raw(path).get_data()`` for every file (the floor: reading alone),
- ``build_dataset`` (read, anonymize, notch, band-pass, resample to 250 Hz, scale, window 4 s,
  reject, write Parquet shards, assemble the Arrow dataset) with 1 and with ``--num-proc`` workers.

Prints a table and writes ``benchmarks/results/dataset_build_cpu.json``.

Usage::

    python benchmarks/bench_dataset_build.py [--recordings 4] [--seconds 60] [--num-proc 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import datasets
import mne
import numpy as np
import pyarrow
import torch
import transformers

from megfm_hf.data import MEGProcessor, RecordingSpec, build_dataset
from megfm_hf.data.testing import make_raw, write_raw

from common import record_header, write_results

RESULTS = Path(__file__).parent / "results" / "dataset_build_cpu.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recordings", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    mne.set_log_level("ERROR")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    datasets.disable_progress_bars()

    workdir = Path(tempfile.mkdtemp(prefix="megfm-bench-"))
    try:
        paths = []
        for i in range(args.recordings):
            raw = make_raw(n_sites=102, sfreq=1000.0, duration=args.seconds, seed=i)
            paths.append(write_raw(raw, workdir / f"rec{i:02d}_raw.fif"))
        file_mb = sum(p.stat().st_size for p in paths) / 1e6
        meg_mb = args.recordings * 306 * args.seconds * 1000 * 4 / 1e6  # float32 MEG samples

        rows = []
        start = time.perf_counter()
        for path in paths:
            mne.io.read_raw(path, preload=False, verbose="error").get_data()
        elapsed = time.perf_counter() - start
        rows.append(
            {
                "method": "mne.io.read_raw().get_data()",
                "num_proc": 1,
                "seconds": elapsed,
                "windows": None,
                "windows_per_s": None,
                "mb_per_s": file_mb / elapsed,
            }
        )

        processor = MEGProcessor()  # defaults: 250 Hz, 0.5-100 Hz, notch, 4 s windows
        specs = [
            RecordingSpec(path=str(p), subject=f"s{i}", state="rest") for i, p in enumerate(paths)
        ]
        for num_proc in sorted({1, args.num_proc}):
            out = workdir / f"dataset-{num_proc}"
            start = time.perf_counter()
            result = build_dataset(
                specs, out, processor=processor, num_proc=num_proc, secret=b"bench"
            )
            elapsed = time.perf_counter() - start
            size_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6
            rows.append(
                {
                    "method": "build_dataset",
                    "num_proc": num_proc,
                    "seconds": elapsed,
                    "windows": result.n_windows,
                    "windows_per_s": result.n_windows / elapsed,
                    "mb_per_s": file_mb / elapsed,
                    "output_mb": size_mb,
                }
            )

        print(
            f"{args.recordings} FIF recordings x {args.seconds:g} s, 306 MEG sensors at 1000 Hz: "
            f"{file_mb:.0f} MB of files, {meg_mb:.0f} MB of MEG samples"
        )
        print(
            f"{'method':<32} {'num_proc':>8} {'seconds':>8} {'windows':>8} {'windows/s':>10} {'MB/s':>8}"
        )
        for r in rows:
            wps = "-" if r["windows_per_s"] is None else f"{r['windows_per_s']:.1f}"
            print(
                f"{r['method']:<32} {r['num_proc']:>8} {r['seconds']:>8.2f} "
                f"{r['windows'] or '-':>8} {wps:>10} {r['mb_per_s']:>8.1f}"
            )

        record = {
            **record_header("dataset_build", mne, datasets, pyarrow, np, torch, transformers),
            "input": {
                "recordings": args.recordings,
                "seconds_each": args.seconds,
                "sensors": 306,
                "sfreq_hz": 1000.0,
                "file_mb": file_mb,
            },
            "processor": processor.to_dict(),
            "mb_per_s_means": "MB of input FIF files per second of wall time",
            "notes": (
                "bare reads hit the page cache (files were just written); each build worker first "
                "spends several seconds importing torch/transformers, so num_proc > 1 pays off only "
                "when recordings take longer than that to process"
            ),
            "results": rows,
        }
        write_results(args.output, record, indent=1)
        print(f"wrote {args.output}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
