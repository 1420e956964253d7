"""Attention modes side by side: forward speed at the reference shape, and what they learn.

Speed: one forward pass of ``MEGModel`` over 8 windows of 306 sensors x 500 samples (patches of
25) at width 256 x 8 layers, for each attention mode, beside transformers' PatchTST at the
same width and depth on the same input.

Learning: each mode (width 64 x 2 layers) pretrained for the same number of steps on a
simulated cohort, then masked-reconstruction NMSE per sensor type on held-out subjects with
the same fixed masks, beside the zeros predictor (NMSE 1).

    python benchmarks/bench_attention_modes.py [--steps 300] [--skip-speed] [--skip-learning]

Both run on the CPU, where a user without a GPU meets them; on a GPU, ``bench_training.py``
times every mode at the reference shape. Prints a table and writes
``benchmarks/results/attention_modes_cpu.json``; a section skipped in a run is kept from the
existing file, with the date and versions it was measured with.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers

from megfm_hf import MEGConfig, MEGForMaskedSignalModeling, MEGModel

from common import write_results

RESULTS = Path(__file__).parent / "results"
MODES = ("latent", "factorized", "full")


def reference_inputs(
    batch: int = 8, sensors: int = 306, samples: int = 500
) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    positions = torch.randn(sensors, 6, generator=generator) * 0.1
    return {
        "input_values": torch.randn(batch, sensors, samples, generator=generator),
        "sensor_positions": positions.expand(batch, -1, -1).clone(),
        "sensor_types": torch.tensor([0, 1, 1] * (sensors // 3)).expand(batch, -1).clone(),
    }


def time_forward(model: torch.nn.Module, inputs: dict, repeats: int = 2) -> float:
    """Best of ``repeats`` wall-clock seconds of one no-grad forward pass (after a warm-up)."""
    with torch.no_grad():
        model(**inputs)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            model(**inputs)
            best = min(best, time.perf_counter() - start)
    return best


def speed(hidden: int = 256, layers: int = 8, heads: int = 8) -> dict[str, float]:
    inputs = reference_inputs()
    figures = {}
    for mode in MODES:
        config = MEGConfig(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            attention_mode=mode,
        )
        figures[f"megfm_{mode}"] = time_forward(
            MEGModel(config).eval(), inputs, repeats=1 if mode == "full" else 2
        )
        print(f"forward {mode:<10} {figures[f'megfm_{mode}']:.3f} s", flush=True)
    patchtst_config = transformers.PatchTSTConfig(
        num_input_channels=306,
        context_length=500,
        patch_length=25,
        patch_stride=25,
        d_model=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        ffn_dim=4 * hidden,
    )
    patchtst = transformers.PatchTSTModel(patchtst_config).eval()
    past = inputs["input_values"].transpose(1, 2).contiguous()
    figures["patchtst"] = time_forward(lambda **_: patchtst(past_values=past), inputs)
    print(f"forward PatchTST   {figures['patchtst']:.3f} s", flush=True)
    return figures


def learning(steps: int, seed: int = 0) -> dict[str, dict[str, float]]:
    from megfm_hf.data import MEGProcessor, build_dataset
    from megfm_hf.simulation import EVENT_ID, simulate_cohort
    from megfm_hf.training import MEGDataCollator, load_windows, split_subjects, subject_labels
    from megfm_hf.training.data import select_subjects

    root = Path(tempfile.mkdtemp(prefix="megfm-modes-"))
    cohort = simulate_cohort(root / "bids", n_subjects=8, duration=30.0, seed=seed, progress=False)
    processor = MEGProcessor(
        sfreq=100.0,
        patch_length=10,
        window_seconds=1.0,
        tmin=-0.2,
        l_freq=1.0,
        h_freq=40.0,
        event_id=dict(EVENT_ID),
    )
    build_dataset(
        None, root / "dataset", processor=processor, bids_root=cohort.root, event_id=dict(EVENT_ID)
    )
    dataset = load_windows(root / "dataset")
    labels = subject_labels(dataset)
    split = split_subjects(list(labels), 0.25, seed, labels)
    train = select_subjects(dataset, split.train).with_format("numpy")
    test = select_subjects(dataset, split.test).with_format("numpy")
    test_rows = [test[i] for i in range(0, len(test), 2)]

    results = {}
    for mode in MODES:
        torch.manual_seed(seed)
        config = MEGConfig(
            sampling_rate=100.0, patch_length=10, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_latents=8, decoder_hidden_size=64, decoder_num_attention_heads=4, attention_mode=mode,
        )  # fmt: skip
        model = MEGForMaskedSignalModeling(config)
        collate = MEGDataCollator(config, draw_mask=True, seed=seed)
        held_out = MEGDataCollator(config, draw_mask=True, seed=seed + 1)(test_rows)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
        rng = np.random.default_rng(seed)
        start = time.perf_counter()
        for _ in range(steps):
            batch = collate([train[int(i)] for i in rng.choice(len(train), 16, replace=False)])
            loss = model(**batch).loss
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        seconds = time.perf_counter() - start
        model.eval()
        with torch.no_grad():
            reconstruction = model(**held_out).reconstruction
        mask, types = held_out["mask"], held_out["sensor_types"]
        shape = (*mask.shape, config.patch_length)
        row = {"train_seconds": seconds, "steps": steps}
        for code, name in ((0, "magnetometer"), (1, "planar_gradiometer")):
            hidden = mask & (types == code)[:, :, None]
            target = held_out["input_values"].view(shape)[hidden]
            error = reconstruction.view(shape)[hidden] - target
            row[f"nmse_{name}"] = float(error.pow(2).sum() / target.pow(2).sum())
        results[mode] = row
        print(f"learning {mode:<10} {json.dumps(row)}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--skip-speed", action="store_true", help="keep the file's speed figures")
    parser.add_argument(
        "--skip-learning", action="store_true", help="keep the file's learning figures"
    )
    args = parser.parse_args()
    device = "cpu"  # every model and batch here stays on the CPU
    path = RESULTS / f"attention_modes_{device}.json"
    # A section not measured in this run is kept from the existing file, with its own date.
    previous = json.loads(path.read_text()) if path.is_file() else {}
    environment = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "device": device,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    result = {}
    for section, skip, measure in (
        ("forward_seconds_8x306x500_width256x8", args.skip_speed, speed),
        ("learning_width64x2", args.skip_learning, lambda: learning(args.steps)),
    ):
        if skip:
            if section in previous:
                result[section] = previous[section]
            continue
        result[section] = {"measured": environment, "figures": measure()}
    write_results(path, result)
    print(json.dumps(result, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
