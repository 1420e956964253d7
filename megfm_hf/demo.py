"""``megfm demo``: the whole journey on a simulated cohort, on a CPU, in minutes.

1. simulate a patient/control cohort with resting, auditory and somatosensory runs (BIDS);
2. package it as a window dataset (the same pipeline as for real recordings);
3. pretrain a small model by masked-signal reconstruction on most subjects;
4. evaluate the three claims on the held-out subjects: reconstruction of continuous and evoked
   MEG, attention maps over the sensor array, features against raw MEG (report + figures);
5. fine-tune a classifier with subject-wise splits (linear probe);
6. write the model card, leaving a folder ready for ``megfm push``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from .simulation import EVENT_ID

logger = logging.getLogger(__name__)

#: A model small enough to pretrain on two CPU cores in a few minutes.
DEMO_MODEL = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_latents": 8,
    "decoder_hidden_size": 64,
    "decoder_num_attention_heads": 4,
    "mask_ratio": 0.5,
    "mask_sensor_fraction": 0.6,
    "mask_time_fraction": 0.1,
}


@dataclass
class DemoSettings:
    """Sizes of the demo run (the defaults take about ten minutes on two CPU cores).

    The default helmet has 40 positions (120 sensors: a magnetometer and two planar
    gradiometers at each) so that pretraining reaches its plateau on a CPU; 102 positions give
    the full 306-sensor array.
    """

    subjects: int = 10
    #: 40 s per run give about 20 stimuli per side, enough for the attention test of every
    #: condition on the held-out subjects (20 s were not for one somatosensory condition)
    duration: float = 40.0
    steps: int = 1200
    helmet_positions: int = 40
    seed: int = 0
    sfreq: float = 100.0
    max_windows: int = 20


def run_demo(output: str | Path, settings: DemoSettings | None = None) -> dict:
    """Run every stage into ``output`` and return the summary (also ``summary.json``)."""
    from .data import MEGProcessor, build_dataset
    from .evaluation import evaluate_model
    from .hub import subject_codes, write_model_card
    from .simulation import simulate_cohort, write_builtin_helmet
    from .training.finetune import finetune
    from .training.pretrain import pretrain

    settings = settings or DemoSettings()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def stage(name: str) -> None:
        timings[name] = time.perf_counter()
        print(f"[megfm demo] {name} ...", flush=True)

    stage("simulate")
    helmet = write_builtin_helmet(output / "helmet_raw.fif", n_positions=settings.helmet_positions)
    cohort = simulate_cohort(
        output / "cohort",
        n_subjects=settings.subjects,
        duration=settings.duration,
        seed=settings.seed,
        geometry=helmet,
        overwrite=True,
    )
    stage("build dataset")
    processor = MEGProcessor(
        sfreq=settings.sfreq,
        patch_length=10,
        window_seconds=1.0,
        tmin=-0.2,
        l_freq=1.0,
        h_freq=40.0,
        event_id=dict(EVENT_ID),
    )
    dataset = output / "dataset"
    build_dataset(
        None,
        dataset,
        processor=processor,
        bids_root=cohort.root,
        event_id=dict(EVENT_ID),
        overwrite=True,
    )
    stage("pretrain")
    model_dir = pretrain(
        dataset,
        output / "pretraining",
        config=DEMO_MODEL,
        max_steps=settings.steps,
        batch_size=16,
        learning_rate=1e-3,
        test_fraction=0.25,
        seed=settings.seed,
        save_steps=max(1, settings.steps // 2),
    )
    stage("evaluate")
    report_dir = output / "report"
    metrics = evaluate_model(
        model_dir,
        dataset,
        report_dir,
        ground_truth=cohort.ground_truth_path,
        max_windows=settings.max_windows,
        seed=settings.seed,
        n_permutations=1000,
        n_bootstrap=1000,
    )
    stage("fine-tune")
    classifier_dir = finetune(
        dataset,
        model_dir,
        output / "finetuning",
        strategy="linear_probe",
        epochs=2,
        learning_rate=1e-3,
        seed=settings.seed,
        save_strategy="no",
    )
    stage("model card")
    (model_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    write_model_card(
        model_dir,
        metrics=metrics,
        dataset_summary=dataset,
        subject_codes=subject_codes(model_dir, dataset_dir=dataset, metrics=metrics),
    )
    timings["end"] = time.perf_counter()

    names = list(timings)
    summary = {
        "model": str(model_dir),
        "classifier": str(classifier_dir),
        "report": str(report_dir / "report.md"),
        "seconds": {
            name: round(timings[after] - timings[name], 1)
            for name, after in zip(names, names[1:], strict=False)
        },
        "claims": claims_table(metrics),
        "fine_tuning": json.loads((output / "finetuning" / "subject_metrics.json").read_text()),
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary


def claims_table(metrics: dict) -> list[dict[str, object]]:
    """One row per claim: the model's figure against its baseline or null, the test's p-value
    where there is one, and whether the claim holds by the report's rules
    (:mod:`megfm_hf.evaluation.criteria`)."""
    from .evaluation.criteria import attention_holds, classification_holds, reconstruction_holds

    rows = []
    reconstruction = metrics.get("reconstruction", {})
    evoked = reconstruction.get("evoked", {})
    interpolation = reconstruction.get("evoked_baselines", {}).get("interpolation", {})
    for condition, per_type in evoked.items():
        for sensor_type, values in per_type.items():
            baseline = interpolation.get(condition, {}).get(sensor_type, {}).get("nmse")
            rows.append(
                {
                    "claim": f"1 evoked NMSE {condition} {sensor_type}",
                    "model": values["nmse"],
                    "reference": baseline,
                    "p": None,
                    "holds": reconstruction_holds(values["nmse"], baseline),
                }
            )
    for condition, values in metrics.get("attention", {}).items():
        if condition in EVENT_ID:
            rows.append(
                {
                    "claim": f"2 attention alignment {condition}",
                    "model": values["alignment"],
                    "reference": values["null_ci95"][1],
                    "p": values.get("p_value_holm", values["p_value"]),
                    "holds": attention_holds(values),
                }
            )
    for key, scope in (("classification", ""), ("classification_held_out", " held-out")):
        section = metrics.get(key, {})
        for name, values in section.get("features", {}).items():
            raw = section.get("raw", {}).get(name, {})
            test = section.get("permutation_test", {}).get(name)
            if "roc_auc" in values and "roc_auc" in raw and test:
                rows.append(
                    {
                        "claim": f"3 subject AUROC{scope} {name}",
                        "model": values["roc_auc"][0],
                        "reference": raw["roc_auc"][0],
                        "p": test["p_value"],
                        "holds": classification_holds(test),
                    }
                )
    return rows


def format_summary(summary: dict) -> str:
    """The final table printed by ``megfm demo``."""
    lines = [
        "",
        "claim                                             model   reference       p  holds",
    ]
    for row in summary["claims"]:
        reference = "n/a" if row["reference"] is None else f"{row['reference']:.3f}"
        p_value = "" if row.get("p") is None else f"{row['p']:.3g}"
        lines.append(
            f"{row['claim']:<48}{row['model']:>7.3f}{reference:>12}{p_value:>8}  "
            f"{'yes' if row['holds'] else 'no'}"
        )
    tuning = summary["fine_tuning"]
    lines += [
        "",
        "fine-tuned classifier (held-out subjects): "
        + ", ".join(f"{k}={v:.3f}" for k, v in tuning.items() if isinstance(v, float)),
        "time per stage (s): " + ", ".join(f"{k} {v}" for k, v in summary["seconds"].items()),
        f"report: {summary['report']}",
        f"model (ready for `megfm push`): {summary['model']}",
    ]
    return "\n".join(lines)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    defaults = DemoSettings()
    parser.add_argument("--output", "-o", required=True, help="folder for every output")
    parser.add_argument(
        "--subjects", type=int, default=defaults.subjects, help="simulated subjects"
    )
    parser.add_argument("--duration", type=float, default=defaults.duration, help="seconds per run")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="pretraining steps")
    parser.add_argument(
        "--helmet-positions",
        type=int,
        default=defaults.helmet_positions,
        help="sensor positions of the simulated helmet (3 sensors each; 102 for 306 sensors)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--max-windows",
        type=int,
        default=defaults.max_windows,
        help="windows per subject and condition in evaluation",
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = DemoSettings(
        subjects=args.subjects,
        duration=args.duration,
        steps=args.steps,
        helmet_positions=args.helmet_positions,
        seed=args.seed,
        max_windows=args.max_windows,
    )
    print(format_summary(run_demo(args.output, settings)))
    return 0
