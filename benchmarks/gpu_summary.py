"""A GPU run against the speed targets: one table from what ``run_gpu.sh`` wrote.

Reads, for one device (``--device``, the slug in the file names) from ``--results``, the files
of ``benchmarks/run_gpu.sh`` (any may be missing): ``training_<device>_<variant>.json`` for the
variants in ``TRAINING``, ``dataloader_<device>.json``, ``pretrain_<device>[_graphs].json``,
``mixed_arrays_<device>.json``, ``finetuning_<device>.json`` and
``profile_<device>[_graphs].json``. It prints, and writes to ``gpu_summary_<device>.md``,
every target with the figure measured and whether it is met:

- the default model (``latent``, width 256 x 8, mask ratio 0.5) at >= 45% model-FLOP
  utilisation, eager, compiled or compiled with CUDA graphs;
- >= 3x the training windows/s of transformers' PatchTST at equal width and depth (eager beside
  eager, compiled beside compiled, CUDA graphs beside CUDA graphs);
- the 768 x 12 model training at batch 32;
- streaming from shards at >= 2x the default model's fastest training rate;

then the default's hidden-only decoding against decoding every token, its eager rate at a
larger batch against the reference batch's, the rate of ``megfm
pretrain``'s own loop against the bare step (eager, and compiled as CUDA graphs), how busy a
profiled step keeps the GPU, the padding figures of mixed sensor arrays, the
largest fine-tuning batches of 306 sensors x 30 s within 24 GB and the full tables of every
training file.

    python benchmarks/gpu_summary.py --device nvidia-h200 [--results benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import bench_finetuning
from bench_training import markdown

RESULTS = Path(__file__).parent / "results"
MFU_TARGET = 0.45
PEER_TARGET = 3.0
LOADER_TARGET = 2.0
#: the training files of a run, by variant
TRAINING = {
    "eager": "small",
    "compiled": "small_compiled",
    "graphs": "small_graphs",
    "decode_visible": "small_decode_visible",
    "large_batch": "small_large_batch",
    "base": "base",
}
#: the variants that time the default model
DEFAULT_VARIANTS = ("eager", "compiled", "graphs")
#: the profiles of a run (``bench_profile.py``), by the suffix of their files
PROFILES = {"eager": "", "CUDA graphs": "_graphs"}
STREAM = "parquet (megfm stream)"


def load(path: Path) -> dict[str, Any] | None:
    """A results record, or None where the file is absent."""
    return json.loads(path.read_text()) if path.is_file() else None


def find(record: dict | None, section: str = "training", **match: Any) -> dict | None:
    """The first row of ``record[section]`` whose fields equal ``match``."""
    for row in (record or {}).get(section, []):
        if all(row.get(key) == value for key, value in match.items()):
            return row
    return None


def default_row(record: dict | None, size: str = "small") -> dict | None:
    """The default model's training row (``latent``, mask ratio 0.5) at ``size``."""
    return find(record, model="megfm", mode="latent", size=size, mask_ratio=0.5)


def ok(row: dict | None) -> bool:
    return bool(row) and row.get("status") == "ok"


def verdict(measured: bool, met: bool) -> str:
    return "not measured" if not measured else ("**met**" if met else "**missed**")


def peer_ratio(record: dict | None, mode: str, size: str, ratio: float) -> float | None:
    """megfm / PatchTST training windows/s for one mode, size and mask ratio."""
    mine = find(record, model="megfm", mode=mode, size=size, mask_ratio=ratio)
    peer = find(record, model="patchtst", size=size, mask_ratio=ratio)
    if not (ok(mine) and ok(peer)):
        return None
    return mine["windows_per_s"] / peer["windows_per_s"]


def _gib(value: float) -> str:
    return f"{value / 2**30:.1f} GiB"


def target_rows(runs: dict[str, dict | None], loader: dict | None) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for every speed target."""
    rows = []
    # The default model's measured rows, by variant.
    defaults = {
        variant: row for variant in DEFAULT_VARIANTS if ok(row := default_row(runs.get(variant)))
    }

    mfus = {variant: row["mfu"] for variant, row in defaults.items() if row.get("mfu") is not None}
    # a variant that decodes every token says so: its FLOPs count that work
    text = "; ".join(
        f"{variant} {mfu:.1%} ({defaults[variant]['windows_per_s']:,.0f} windows/s"
        + (", every token decoded" if defaults[variant].get("decodes_every_token") else "")
        + ")"
        for variant, mfu in mfus.items()
    )
    rows.append(
        (
            f"default model (latent 256 x 8, mask 0.5): MFU >= {MFU_TARGET:.0%}",
            text or "no GPU MFU in these files",
            verdict(bool(mfus), max(mfus.values(), default=0) >= MFU_TARGET),
        )
    )

    ratios = {
        variant: peer_ratio(runs.get(variant), "latent", "small", 0.5)
        for variant in DEFAULT_VARIANTS
    }
    ratios = {variant: value for variant, value in ratios.items() if value is not None}
    others = [
        f"{size} {mode} {value:.2f}x"
        for size, variant in (("small", "eager"), ("base", "base"))
        for mode in ("latent", "factorized", "full")
        if (size, mode) != ("small", "latent")
        and (value := peer_ratio(runs.get(variant), mode, size, 0.5)) is not None
    ]
    text = "; ".join(f"default, {variant}: {value:.2f}x" for variant, value in ratios.items())
    if others:
        text += f" (mask 0.5, eager: {', '.join(others)})"
    rows.append(
        (
            f"training windows/s >= {PEER_TARGET:g}x PatchTST at equal width and depth",
            text or "no megfm and PatchTST pair in these files",
            verdict(bool(ratios), bool(ratios) and min(ratios.values()) >= PEER_TARGET),
        )
    )

    base = [row for row in (runs.get("base") or {}).get("training", []) if row["model"] == "megfm"]
    latent = [row for row in base if row["mode"] == "latent"]
    batch = (runs.get("base") or {}).get("settings", {}).get("batch")
    memory = (runs.get("base") or {}).get("device", {}).get("memory_bytes")
    text = ", ".join(
        f"{row['mode']} {row['mask_ratio']:g}: "
        + (_gib(row["peak_memory_bytes"]) if ok(row) else row["status"])
        for row in base
    )
    if memory:
        text += f" (of {_gib(memory)})"
    rows.append(
        (
            "768 x 12 trains at batch 32" + (f" (here: batch {batch})" if batch else ""),
            text or "no base run in these files",
            verdict(bool(latent), batch == 32 and all(ok(row) for row in latent)),
        )
    )

    steps = [row["windows_per_s"] for row in defaults.values()]
    streams = [row for row in (loader or {}).get("results", []) if row["source"] == STREAM]
    best = max(streams, key=lambda row: row["windows_per_s"], default=None)
    measured = bool(steps) and best is not None
    text = "no loader and training rates in these files"
    if measured:
        text = (
            f"{best['windows_per_s']:,.0f} windows/s streamed ({best['workers']} workers) against "
            f"{max(steps):,.0f} training windows/s: {best['windows_per_s'] / max(steps):.1f}x"
        )
    rows.append(
        (
            f"streaming from shards >= {LOADER_TARGET:g}x the default model's training rate",
            text,
            verdict(measured, measured and best["windows_per_s"] >= LOADER_TARGET * max(steps)),
        )
    )
    return rows


def luna_text(record: dict | None) -> str | None:
    """The default model beside braindecode's LUNA-Base (no target: the closest design)."""
    pairs = []
    for section, match, what in (
        ("training", {"mask_ratio": 0.5}, "training (mask 0.5)"),
        ("feature_extraction", {}, "features"),
    ):
        mine = find(record, section, model="megfm", mode="latent", size="small", **match)
        peer = find(record, section, model="luna", size="small", **match)
        if ok(mine) and ok(peer):
            pairs.append(
                f"{what} {mine['windows_per_s']:,.0f} against {peer['windows_per_s']:,.0f} "
                f"windows/s ({mine['windows_per_s'] / peer['windows_per_s']:.2f}x)"
            )
    if not pairs:
        return None
    return (
        "Beside braindecode's LUNA-Base (the default's width and depth): " + "; ".join(pairs) + "."
    )


def large_batch_text(bare: dict | None, record: dict | None) -> str | None:
    """The default model eager at a larger batch, beside its rate at the reference batch."""
    large = default_row(record)
    if not (ok(bare) and ok(large)):
        return None
    batch = record["settings"]["batch"]
    mfu = f", MFU {large['mfu']:.1%}" if large.get("mfu") is not None else ""
    return (
        f"Eager at batch {batch}: {large['windows_per_s']:,.0f} windows/s, "
        f"{large['windows_per_s'] / bare['windows_per_s']:.2f}x the reference batch's "
        f"{bare['windows_per_s']:,.0f}{mfu}, {_gib(large['peak_memory_bytes'])} peak memory."
    )


def loop_rates(loop: dict, bare: dict) -> str:
    """Each source's windows/s in a ``bench_pretrain.py`` record, as a share of ``bare``'s."""
    return ", ".join(
        f"{row['source']} {row['windows_per_s']:,.0f} windows/s "
        f"({row['windows_per_s'] / bare['windows_per_s']:.0%})"
        for row in loop["results"]
    )


def profile_text(title: str, figures: dict) -> str:
    """A profile's figures (``bench_profile.summarize``) after ``title``: wall time, device
    busy share, kernels, the host's waits for the device and for batches, the top operators."""
    text = f"{title}: {figures['wall_ms_per_step']:.1f} ms a step"
    if figures.get("device_busy_ms_per_step") is not None:
        text += (
            f", the GPU busy {figures['device_busy_ms_per_step']:.1f} ms of it "
            f"({figures['device_busy_share']:.0%}), {figures['kernels_per_step']:,.0f} kernels"
        )
    text += f", {figures['operators_per_step']:,.0f} operators"
    if figures.get("host_waits_per_step") is not None:
        text += (
            f"; the host waits for the GPU {figures['host_waits_per_step']:.0f} times a step "
            f"({figures['host_wait_ms_per_step']:.1f} ms)"
        )
    if figures.get("loader_ms_per_step"):
        text += f", for the next batch {figures['loader_ms_per_step']:.1f} ms"
    top = ", ".join(f"{row['name']} {row['ms_per_step']:.1f} ms" for row in figures["top"][:5])
    return text + f"; most {figures['top_by']}: {top}."


def loop_profile_lines(loop: dict | None) -> list[str]:
    """A ``bench_pretrain.py --profile-steps`` record's profiles, a paragraph per source."""
    if not loop:
        return []
    mode = loop["settings"].get("torch_compile_mode")
    return [
        line
        for row in loop["results"]
        if row.get("profile")
        for line in (
            "",
            profile_text(
                f"Profile of `megfm pretrain`'s loop ({row['source']}, "
                f"{f'compiled, {mode}' if mode else 'eager'}, batch {loop['settings']['batch']})",
                row["profile"],
            ),
        )
    ]


def finetuning_text(record: dict | None) -> str | None:
    """Whether fine-tuning on the record's long windows fits the GPU budget, per strategy."""
    if not record:
        return None
    s = record["settings"]
    shape = f"{s['sensors']} sensors x {s['seconds']:g} s at {s['sfreq']:g} Hz"
    if record["device"]["kind"] != "cuda":
        return f"Fine-tuning on {shape}: measured on a CPU only (no GPU memory figure)."
    largest = {
        (strategy, setting): bench_finetuning.largest_fitting_batch(
            record, strategy, setting == "on"
        )
        for strategy in s["strategies"]
        for setting in s["checkpointing"]
    }
    parts = "; ".join(
        f"{strategy}, checkpointing {setting}: "
        + (f"batch {batch}" if batch else "not even batch 1")
        for (strategy, setting), batch in largest.items()
    )
    verdict = "Fits" if any(largest.values()) else "Does not fit"
    return (
        f"Fine-tuning on {shape} ({s['precision']}, largest batch measured within "
        f"{s['budget_gib']:g} GiB reserved): {parts}. {verdict} one {s['budget_gib']:g} GB GPU."
    )


def summary(results: Path, device: str) -> str | None:
    """The Markdown summary of one device's files in ``results``; None where there are none."""
    runs = {
        variant: load(results / f"training_{device}_{suffix}.json")
        for variant, suffix in TRAINING.items()
    }
    loader = load(results / f"dataloader_{device}.json")
    loop = load(results / f"pretrain_{device}.json")
    loop_graphs = load(results / f"pretrain_{device}_graphs.json")
    mixed = load(results / f"mixed_arrays_{device}.json")
    finetuning = load(results / f"finetuning_{device}.json")
    profiles = {
        label: load(results / f"profile_{device}{suffix}.json")
        for label, suffix in PROFILES.items()
    }
    present = [
        record
        for record in (*runs.values(), loader, loop, loop_graphs, mixed, finetuning)
        + tuple(profiles.values())
        if record
    ]
    if not present:
        return None
    first = present[0]
    lines = [
        f"# Speed targets on {first['device']['name']}",
        "",
        f"{first['date']}; " + ", ".join(f"{k} {v}" for k, v in first["versions"].items() if v),
    ]
    peak = next((r["bf16_matmul_peak"] for r in runs.values() if r and r["bf16_matmul_peak"]), None)
    if peak:
        lines.append(f"bf16 matmul peak measured in the run: {peak['tflops']:.0f} TFLOP/s")
    lines += ["", "| target | measured | verdict |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in target_rows(runs, loader)]
    bare = default_row(runs.get("eager"))
    everything = default_row(runs.get("decode_visible"))
    if ok(bare) and ok(everything):
        lines += [
            "",
            f"Decoding the hidden tokens alone (the default): {bare['windows_per_s']:,.0f} "
            f"windows/s against {everything['windows_per_s']:,.0f} decoding every token "
            f"({bare['windows_per_s'] / everything['windows_per_s']:.2f}x; "
            f"{bare['gflops_per_window']:.1f} against {everything['gflops_per_window']:.1f} "
            "GFLOP per window).",
        ]
    if text := luna_text(runs.get("eager")):
        lines += ["", text]
    if text := large_batch_text(bare, runs.get("large_batch")):
        lines += ["", text]
    if loop and ok(bare):
        lines += [
            "",
            f"`megfm pretrain` loop (Trainer, collator, loader, batch {loop['settings']['batch']}):"
            f" {loop_rates(loop, bare)} of the bare eager step ({bare['windows_per_s']:,.0f} "
            "windows/s).",
        ]
    graphs = default_row(runs.get("graphs"))
    if loop_graphs and ok(graphs):
        lines += [
            "",
            "`megfm pretrain` loop compiled whole, replayed as CUDA graphs (torch_compile_mode="
            f"{loop_graphs['settings']['torch_compile_mode']}): {loop_rates(loop_graphs, graphs)}"
            f" of the bare step so compiled ({graphs['windows_per_s']:,.0f} windows/s).",
        ]
    for label, record in profiles.items():
        if record:
            batch = record["settings"]["batch"]
            title = f"Profile of a default training step ({label}, batch {batch})"
            lines += ["", profile_text(title, record)]
    lines += loop_profile_lines(loop) + loop_profile_lines(loop_graphs)
    if mixed:
        shares = ", ".join(
            f"{row['sampling']} {row['padded_share']:.1%} padded, {row['windows_per_s']:,.1f} windows/s"
            for row in mixed["results"]
        )
        lines += ["", f"Mixed sensor arrays: {shares}; grouped / random {mixed['speedup']:.2f}x."]
    if text := finetuning_text(finetuning):
        lines += ["", text]
    for variant, record in runs.items():
        if record:
            lines += ["", f"## Training file: {variant}", "", markdown(record)]
    if finetuning:
        lines += ["", "## Fine-tuning file", "", bench_finetuning.markdown(finetuning)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", required=True, help="the slug in the file names")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    text = summary(args.results, args.device)
    if text is None:
        print(f"no results for device '{args.device}' in {args.results}", file=sys.stderr)
        return 1
    path = args.results / f"gpu_summary_{args.device}.md"
    path.write_text(text)
    print(text)
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
