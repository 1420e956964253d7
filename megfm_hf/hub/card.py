"""Model cards: fill the card template from a saved model folder and its evaluation results.

A model folder (``save_pretrained`` output) holds ``config.json``, ``model.safetensors`` and
usually ``preprocessor_config.json``; the training entry points may add ``training_args.json`` and
``trainer_state.json``, the evaluation command ``metrics.json``. :func:`build_model_card` reads
what is there, says "not evaluated" for what is not, turns the metrics into ``model-index``
metadata (``ModelCardData(eval_results=...)``) and checks the rendered card with the privacy gate.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..modeling.configuration_megfm import MEGConfig
from .identifiers import ORDINAL_LABEL, SPLIT_FILE
from .privacy import WEIGHTS_INDEX, check_text, safetensors_header, weight_files

logger = logging.getLogger(__name__)

#: the card template shipped with the package (``model_cards/megfm_card_template.md``)
TEMPLATE_NAME = "megfm_card_template.md"

METRICS_FILE = "metrics.json"
DATASET_SUMMARY_FILE = "dataset_summary.json"

REFERENCE_TITLE = (
    "A pretrained foundation model for headache disorders based on magnetoencephalography"
)
#: citation of the reference paper whose approach the model follows
REFERENCE_CITATION = f"""@article{{meg_headache_foundation_model_2025,
  title   = {{{REFERENCE_TITLE}}},
  journal = {{Journal of Neural Engineering}},
  year    = {{2025}}
}}"""

DEFAULT_LICENSE = "bsd-3-clause"

#: key prefix of the backbone weights in saved heads (``MEGPreTrainedModel.base_model_prefix``)
BACKBONE_PREFIX = "megfm"

_ATTENTION_MODES = {
    "latent": (
        "per time patch, learned latent queries cross-attend to all sensors, then a temporal "
        "transformer runs over the latents (cost linear in the number of sensors; the "
        "cross-attention weights are a map over the sensor array)"
    ),
    "factorized": "each block attends over sensors within a time patch, then over time patches",
    "full": "every (sensor, time patch) token attends to every other token",
}

_METRIC_LABELS = {
    "nmse": "NMSE",
    "pearson_r": "Pearson r",
    "roc_auc": "ROC AUC",
    "balanced_accuracy": "balanced accuracy",
    "alignment": "attention alignment",
}

# Which systems a set of sensor-type codes (indices of SENSOR_TYPES) points to.
_SENSOR_SYSTEMS = {
    frozenset({0, 1}): "MEGIN/Neuromag (magnetometers and planar gradiometers)",
    frozenset({1}): "planar gradiometers only (MEGIN/Neuromag)",
    frozenset({0}): "magnetometers only",
    frozenset({2}): "axial gradiometers (CTF, KIT/Yokogawa/Ricoh or BTi/4D)",
    frozenset({0, 2}): "axial gradiometers with reference magnetometers (CTF, KIT or BTi/4D)",
    frozenset({3}): "optically pumped magnetometers (OPM)",
}

#: what each reconstruction baseline predicts for the hidden sensors
_BASELINE_DESCRIPTIONS = {
    "zeros": "predicts zero (NMSE 1)",
    "interpolation": (
        "a Gaussian-kernel average of the visible sensors of the same type at the same instant"
    ),
    "ridge": (
        "a ridge regression from the visible sensors to the hidden ones at the same instant, "
        "fitted on windows of the dataset's subjects that were not evaluated"
    ),
}

#: how an attention condition's expected sensors were chosen, by the start of ``region_source``
_REGION_SOURCES = {
    "simulated ground truth": (
        "simulated ground truth: the sensors where the simulated stimulus drives cortex"
    ),
    "strongest": "{source}, read from the input windows, not from the model",
    "given": "sensors given to the evaluation",
}

#: ``model-index`` dataset type of evaluation data that is not on the Hub
LOCAL_DATASET_TYPE = "local"

_ORDINAL = re.compile(ORDINAL_LABEL.format(r"\d+"))
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# what the Hub accepts as ``model-index[].results[].dataset.type``
_DATASET_TYPE = re.compile(r"^(?:[\w-]+/)?[\w.-]+$")


# --------------------------------------------------------------------------- small helpers


def check_repo_id(repo_id: str, *, argument: str = "repo_id") -> str:
    """Raise ``ValueError`` unless ``repo_id`` looks like ``ORG/NAME``; return it."""
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id) or ".." in repo_id:
        raise ValueError(
            f"{argument}={repo_id!r}; expected 'ORG/NAME' (letters, digits, '-', '_', '.')"
        )
    return repo_id


def _dataset_type(value: str) -> str:
    """A ``dataset.type`` the Hub accepts: a dataset id, else a slug of ``value``."""
    if _DATASET_TYPE.match(value):
        return value
    slug = re.sub(r"[^\w.-]+", "-", value).strip("-")
    logger.warning("dataset type %r is not a Hub dataset id; using %r", value, slug or "local")
    return slug or "local"


#: the two inputs classifiers are compared on: metrics key and how the card names it
_INPUTS = (("features", "pretrained features"), ("raw", "raw-signal features"))


def _number(value: Any) -> float | None:
    """A finite float, or ``None`` for anything else (missing, NaN, text)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _estimate(value: Any) -> tuple[float | None, float | None, float | None]:
    """``[estimate, ci_low, ci_high]`` or a bare number -> (estimate, low, high)."""
    if isinstance(value, list | tuple):
        parts = [_number(v) for v in value[:3]] + [None] * (3 - min(len(value), 3))
        return parts[0], parts[1], parts[2]
    return _number(value), None, None


def _fmt(value: Any, digits: int = 3) -> str:
    number = _number(value)
    return "n/a" if number is None else f"{number:.{digits}f}"


def _fmt_p(value: Any) -> str:
    number = _number(value)
    return "n/a" if number is None else f"{number:.3g}"


def _fmt_ci(value: Any) -> str:
    estimate, low, high = _estimate(value)
    if estimate is None:
        return "n/a"
    if low is None or high is None:
        return f"{estimate:.3f}"
    return f"{estimate:.3f} [{low:.3f}, {high:.3f}]"


def _fmt_counts(counts: Mapping[str, Any]) -> str:
    return ", ".join(f"{name}: {count}" for name, count in counts.items()) or "n/a"


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: {what} is not valid JSON ({error})") from None


def _section(mapping: Any, key: str) -> dict:
    value = mapping.get(key) if isinstance(mapping, Mapping) else None
    return dict(value) if isinstance(value, Mapping) else {}


# --------------------------------------------------------------------------- inputs


def load_metrics(metrics: Mapping[str, Any] | str | Path | None, model_dir: Path) -> dict:
    """Return evaluation metrics as a dict.

    Parameters
    ----------
    metrics : Mapping | str | Path | None
        The metrics, a path to a ``metrics.json``, or ``None`` to use ``model_dir/metrics.json``
        when it exists (no metrics otherwise).
    model_dir : Path
        The model folder.

    Returns
    -------
    metrics : dict
        Possibly empty; any section may be missing.
    """
    if metrics is None:
        path = model_dir / METRICS_FILE
        if not path.is_file():
            logger.info(
                "no %s in %s: the card says the model was not evaluated", METRICS_FILE, model_dir
            )
            return {}
        metrics = path
    if isinstance(metrics, str | os.PathLike):
        path = Path(metrics)
        if not path.is_file():
            raise FileNotFoundError(f"metrics={str(path)!r}: no such file")
        metrics = _read_json(path, "the metrics file")
    if not isinstance(metrics, Mapping):
        raise ValueError(
            f"metrics: expected a JSON object (dict) of sections, got {type(metrics).__name__}"
        )
    return dict(metrics)


def summarize_dataset(
    dataset_dir: str | Path,
    *,
    name: str | None = None,
    subjects: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Summarize a built window dataset by counts only (no identifiers).

    Parameters
    ----------
    dataset_dir : str | Path
        A folder written by :func:`megfm_hf.data.builder.build_dataset` (Parquet shards under
        ``parquet/``, optionally ``megfm_dataset.json`` and ``preprocessor_config.json``).
    name : str | None
        Display name of the dataset (``"MEG windows"`` when ``None``).
    subjects : iterable of str | None
        Count only the windows of these subjects (for a model card: the subjects the model was
        trained on, ``split.json``'s ``train``); all when ``None``.

    Returns
    -------
    summary : dict
        ``name``, ``n_recordings``, ``n_windows``, ``subjects_per_group`` (label -> number of
        distinct subjects; ``"unlabelled"`` for an empty label), ``windows_per_state``,
        ``total_hours`` (summed window duration, h), ``sensor_systems``, ``sfreq`` (Hz),
        ``window_seconds`` (s).
    """
    dataset_dir = Path(dataset_dir)
    shards = sorted((dataset_dir / "parquet").glob("*.parquet"))
    if not shards:
        raise FileNotFoundError(
            f"{dataset_dir}: no Parquet shards under parquet/; expected a folder written by "
            "build_dataset"
        )
    report_path = dataset_dir / "megfm_dataset.json"
    report = _read_json(report_path, "the build report") if report_path.is_file() else {}

    groups: dict[str, set[str]] = defaultdict(set)
    states: Counter[str] = Counter()
    systems: set[str] = set()
    sfreq: float | None = None
    n_windows = 0
    n_recordings = 0
    wanted = None if subjects is None else pa.array(sorted({str(s) for s in subjects}))
    for shard in shards:
        parquet = pq.ParquetFile(shard)
        missing = {"subject", "label", "state"} - set(parquet.schema_arrow.names)
        if missing:
            raise ValueError(f"{shard}: missing columns {sorted(missing)}")
        table = parquet.read(columns=["subject", "label", "state"])
        if wanted is not None:
            table = table.filter(pc.is_in(table["subject"], value_set=wanted))
            if not table.num_rows:
                continue
        n_recordings += 1
        n_windows += table.num_rows
        for subject, label in zip(
            table["subject"].to_pylist(), table["label"].to_pylist(), strict=True
        ):
            groups[label or "unlabelled"].add(subject or "")
        states.update(state or "unspecified" for state in table["state"].to_pylist())
        # every row of a shard shares one recording's sensor array and rate: one row suffices
        first = next(parquet.iter_batches(batch_size=1, columns=["sensor_types", "sfreq"]), None)
        if first is not None and first.num_rows:
            codes = frozenset(int(c) for c in first["sensor_types"][0].as_py())
            systems.add(_SENSOR_SYSTEMS.get(codes, f"sensor-type codes {sorted(codes)}"))
            sfreq = sfreq or _number(pc.min(first["sfreq"]).as_py())
    sfreq = _number(report.get("sfreq")) or sfreq
    window_samples = _number(report.get("window_samples"))
    processor_path = dataset_dir / "preprocessor_config.json"
    if window_samples is None and processor_path.is_file():
        processor = _read_json(processor_path, "the processor configuration")
        window_seconds = _number(processor.get("window_seconds"))
    else:
        window_seconds = window_samples / sfreq if window_samples and sfreq else None
    total_hours = n_windows * window_seconds / 3600 if window_seconds else None
    return {
        "name": name or "MEG windows",
        "n_recordings": n_recordings,
        "n_windows": n_windows,
        "subjects_per_group": {label: len(groups[label]) for label in sorted(groups)},
        "windows_per_state": dict(sorted(states.items())),
        "total_hours": total_hours,
        "sensor_systems": sorted(systems),
        "sfreq": sfreq,
        "window_seconds": window_seconds,
    }


def _load_dataset_summary(
    dataset_summary: Mapping[str, Any] | str | Path | None, model_dir: Path
) -> dict | None:
    if dataset_summary is None:
        path = model_dir / DATASET_SUMMARY_FILE
        return dict(_read_json(path, "the dataset summary")) if path.is_file() else None
    if isinstance(dataset_summary, str | os.PathLike):
        path = Path(dataset_summary)
        if path.is_dir():
            # The card describes what the model was trained on: the training side of its split.
            split_path = model_dir / SPLIT_FILE
            split = _read_json(split_path, "the split") if split_path.is_file() else {}
            return summarize_dataset(path, subjects=split.get("train"))
        if path.is_file():
            summary = _read_json(path, "the dataset summary")
            if not isinstance(summary, Mapping):
                raise ValueError(f"{path}: expected a JSON object, got {type(summary).__name__}")
            return dict(summary)
        raise FileNotFoundError(
            f"dataset_summary={str(path)!r}: neither a dataset folder nor a JSON file"
        )
    if not isinstance(dataset_summary, Mapping):
        raise TypeError(
            f"dataset_summary: expected a dict, a dataset folder or a JSON file, got "
            f"{type(dataset_summary).__name__}"
        )
    return dict(dataset_summary)


def count_parameters(model_dir: Path, prefix: str = "megfm.") -> tuple[int, int] | None:
    """Count the weights in ``model.safetensors`` (or its shards) from the headers alone.

    Returns
    -------
    counts : (total, backbone) | None
        All parameters, and those of the backbone (``MEGModel``, keys under ``prefix``; all of
        them for a bare ``MEGModel``). ``None`` without weights.

    Raises
    ------
    FileNotFoundError
        If a shard named in the index is missing.
    megfm_hf.hub.privacy.PrivacyError
        If a weight file is not safetensors or the index names one that cannot be published.
    """
    files, missing = weight_files(model_dir)
    if missing:
        raise FileNotFoundError(
            f"{model_dir}: shards {missing} are listed in {WEIGHTS_INDEX} but missing"
        )
    if not files:
        return None
    sizes: dict[str, int] = {}
    for path in (path for name, path in files.items() if name != WEIGHTS_INDEX):
        for key, entry in safetensors_header(path).items():
            if key != "__metadata__":
                sizes[key] = math.prod(entry.get("shape", []))
    total = sum(sizes.values())
    backbone = sum(n for key, n in sizes.items() if key.startswith(prefix))
    return total, backbone or total


# --------------------------------------------------------------------------- template context


def _human(count: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count:,} ({count / scale:.1f} {unit})"
    return f"{count:,}"


def _architecture(config: MEGConfig, model_dir: Path) -> dict[str, Any]:
    counts = count_parameters(model_dir, prefix=f"{BACKBONE_PREFIX}.")
    total, backbone = (None, None) if counts is None else counts
    return {
        "architectures": ", ".join(config.architectures or ["MEGModel"]),
        "attention_mode": config.attention_mode,
        "attention_mode_description": _ATTENTION_MODES[config.attention_mode],
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_latents": config.num_latents if config.attention_mode == "latent" else None,
        "patch_length": config.patch_length,
        "patch_duration": f"{config.patch_duration:g}",
        "sampling_rate": f"{config.sampling_rate:g}",
        "sensor_types": ", ".join(config.sensor_types),
        "decoder_hidden_size": config.decoder_hidden_size,
        "decoder_num_layers": config.decoder_num_layers,
        "mask_ratio": f"{config.mask_ratio:.0%}",
        "num_parameters": "unknown (no weights)" if total is None else _human(total),
        "num_encoder_parameters": "unknown" if backbone is None else _human(backbone),
    }


def _preprocessing(model_dir: Path) -> dict[str, str] | None:
    path = model_dir / "preprocessor_config.json"
    if not path.is_file():
        return None
    cfg = _read_json(path, "the processor configuration")
    l_freq, h_freq = _number(cfg.get("l_freq")), _number(cfg.get("h_freq"))
    if l_freq is not None and h_freq is not None:
        band = f"{l_freq:g}-{h_freq:g} Hz"
    elif l_freq is not None:
        band = f"high-pass at {l_freq:g} Hz"
    elif h_freq is not None:
        band = f"low-pass at {h_freq:g} Hz"
    else:
        band = "none"
    line = _number(cfg.get("line_freq"))
    line_text = f"{line:g} Hz" if line else "the recording's line frequency (50 Hz if unknown)"
    notch = f"at {line_text} and harmonics" if cfg.get("notch", True) else "off"
    overlap = _number(cfg.get("overlap")) or 0.0
    windows = (
        f"{_fmt(cfg.get('window_seconds'), 2)} s, overlap {overlap:.0%} (continuous data); "
        f"event-locked windows start {_fmt(cfg.get('tmin'), 2)} s from the event"
    )
    if cfg.get("scaling_mode") == "robust":
        scaling = "robust: per recording and sensor type"
    else:
        factors = cfg.get("scalings") or {}
        scaling = "physical factors from SI units: " + (
            ", ".join(f"{name} x {float(value):g}" for name, value in sorted(factors.items()))
            or "defaults"
        )
    reject = cfg.get("reject")
    reject_text = (
        "peak-to-peak, in model units: "
        + ", ".join(f"{name} {float(value):g}" for name, value in sorted(reject.items()))
        if isinstance(reject, Mapping) and reject
        else "none"
    )
    bads = "sensors marked bad in the recording are masked"
    if cfg.get("detect_bads", True):
        z = _number(cfg.get("noisy_zscore"))
        bads += ", plus flat sensors" + (f" and noisy ones (robust z > {z:g})" if z else "")
    if cfg.get("anonymize", True):
        anonymize = "on read: names, birthdays, hospital IDs and device serials removed"
        anonymize += (
            "; measurement dates kept"
            if cfg.get("keep_meas_date")
            else "; measurement dates removed"
        )
    else:
        anonymize = "off"
    return {
        "band": band,
        "notch": notch,
        "sfreq": f"{_number(cfg.get('sfreq')) or 0:g}",
        "windows": windows,
        "scaling": scaling,
        "reject": reject_text,
        "bads": bads,
        "anonymize": anonymize,
    }


def _training(model_dir: Path) -> list[dict[str, str]]:
    args_path, state_path = model_dir / "training_args.json", model_dir / "trainer_state.json"
    args = _read_json(args_path, "the training arguments") if args_path.is_file() else {}
    state = _read_json(state_path, "the trainer state") if state_path.is_file() else {}
    if not isinstance(args, Mapping) or not isinstance(state, Mapping):
        raise ValueError(
            f"{model_dir}: training_args.json and trainer_state.json must hold objects"
        )
    rows: list[dict[str, str]] = []

    def add(name: str, value: Any) -> None:
        if value is not None and value != "":
            rows.append({"name": name, "value": str(value)})

    steps = state.get("global_step") or args.get("max_steps") or args.get("steps")
    add("optimizer steps", steps if _number(steps) and _number(steps) > 0 else None)
    epoch = _number(state.get("epoch"))
    add("epochs", f"{epoch:.2f}" if epoch is not None else None)
    add(
        "batch size per device",
        args.get("per_device_train_batch_size")
        or args.get("batch_size")
        or state.get("train_batch_size"),
    )
    accumulation = args.get("gradient_accumulation_steps")
    add("gradient accumulation steps", accumulation if accumulation and accumulation != 1 else None)
    add("learning rate", args.get("learning_rate"))
    add("learning-rate schedule", args.get("lr_scheduler_type"))
    add("warm-up steps", args.get("warmup_steps") or None)
    add("weight decay", args.get("weight_decay"))
    add("optimizer", args.get("optim"))
    if args:
        precision = args.get("precision") or args.get("mixed_precision")
        if not precision:
            precision = (
                "bf16 mixed precision"
                if args.get("bf16")
                else "fp16 mixed precision"
                if args.get("fp16")
                else "fp32"
            )
        add("precision", precision)
    add("seed", args.get("seed"))
    history = state.get("log_history") or []
    losses = [entry["loss"] for entry in history if _number(entry.get("loss")) is not None]
    eval_losses = [e["eval_loss"] for e in history if _number(e.get("eval_loss")) is not None]
    add("final training loss", _fmt(losses[-1], 4) if losses else None)
    add("final evaluation loss", _fmt(eval_losses[-1], 4) if eval_losses else None)
    return rows


def _dataset_context(summary: Mapping[str, Any] | None) -> dict[str, str] | None:
    if not summary:
        return None
    systems = summary.get("sensor_systems") or []
    if isinstance(systems, str):
        systems = [systems]
    sfreq = _number(summary.get("sfreq"))
    hours = _number(summary.get("total_hours"))
    window = _number(summary.get("window_seconds"))
    default_description = (
        "Preprocessed, anonymized MEG windows"
        + (f" of {window:g} s" if window else "")
        + ", one row per window, built with megfm-hf."
    )
    return {
        "name": str(summary.get("name") or "MEG windows"),
        "description": str(summary.get("description") or default_description),
        "subjects_per_group": _fmt_counts(summary.get("subjects_per_group") or {}),
        "windows_per_state": _fmt_counts(summary.get("windows_per_state") or {}),
        "n_windows": str(summary.get("n_windows", "n/a")),
        "n_recordings": str(summary.get("n_recordings", "n/a")),
        "total_hours": "n/a" if hours is None else f"{hours:.2f}",
        "sensor_systems": "; ".join(str(s) for s in systems) or "n/a",
        "sfreq": "n/a" if sfreq is None else f"{sfreq:g}",
    }


def _reconstruction_row(
    scope: str, condition: str, sensor_type: str, values: Mapping, baselines: list[Mapping]
) -> dict:
    return {
        "scope": scope,
        "condition": condition,
        "sensor_type": sensor_type,
        "nmse": _fmt(values.get("nmse")),
        "pearson_r": _fmt(values.get("pearson_r")),
        "n_tokens": values.get("n_tokens", "n/a"),
        "baselines": [_fmt(baseline.get("nmse")) for baseline in baselines],
    }


def _reconstruction_rows(metrics: Mapping[str, Any]) -> tuple[list[dict], list[str]]:
    """Table rows (continuous, then evoked) and the baseline names, one column each.

    Continuous rows read ``baselines[name][sensor_type]``, evoked rows
    ``evoked_baselines[name][condition][sensor_type]``; a baseline of either kind gets a column.
    """
    section = _section(metrics, "reconstruction")
    baselines = _section(section, "baselines")
    evoked_baselines = _section(section, "evoked_baselines")
    names = list(
        dict.fromkeys(
            name
            for table in (baselines, evoked_baselines)
            for name, value in table.items()
            if isinstance(value, Mapping)
        )
    )
    rows = [
        _reconstruction_row(
            "continuous",
            "all",
            sensor_type,
            values,
            [_section(_section(baselines, name), sensor_type) for name in names],
        )
        for sensor_type, values in _section(section, "continuous").items()
        if isinstance(values, Mapping)
    ]
    for condition, per_type in _section(section, "evoked").items():
        if not isinstance(per_type, Mapping):
            continue
        rows += [
            _reconstruction_row(
                "evoked",
                condition,
                sensor_type,
                values,
                [
                    _section(_section(_section(evoked_baselines, name), condition), sensor_type)
                    for name in names
                ],
            )
            for sensor_type, values in per_type.items()
            if isinstance(values, Mapping)
        ]
    return rows, names


def _baseline_descriptions(names: Iterable[str]) -> list[dict[str, str]]:
    return [
        {"name": name, "description": _BASELINE_DESCRIPTIONS.get(name, "(not described)")}
        for name in names
    ]


def _region_text(source: Any) -> str:
    """Where an attention condition's expected sensors came from, for the card."""
    if not isinstance(source, str) or not source.strip():
        return "not recorded"
    for prefix, description in _REGION_SOURCES.items():
        if source.lower().startswith(prefix):
            return description.format(source=source)
    return source


def _attention_rows(metrics: Mapping[str, Any]) -> list[dict]:
    rows = []
    for condition, values in _section(metrics, "attention").items():
        if not isinstance(values, Mapping):
            continue
        ci = values.get("null_ci95")
        ci_text = (
            f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"
            if isinstance(ci, list | tuple) and len(ci) == 2
            else "n/a"
        )
        null = values.get("null")
        rows.append(
            {
                "condition": condition,
                "alignment": _fmt(values.get("alignment")),
                "null_mean": _fmt(values.get("null_mean")),
                "null_ci95": ci_text,
                "p_value": _fmt_p(values.get("p_value")),
                "p_value_holm": _fmt_p(values.get("p_value_holm")),
                "null": str(null) if isinstance(null, str) and null.strip() else "not recorded",
                "region": _region_text(values.get("region_source")),
            }
        )
    return rows


def _attention_columns(metrics: Mapping[str, Any]) -> dict[str, bool]:
    """Which optional attention columns any condition fills (``null``, ``p_value_holm``)."""
    sections = [v for v in _section(metrics, "attention").values() if isinstance(v, Mapping)]
    return {
        "null": any(isinstance(v.get("null"), str) for v in sections),
        "holm": any(_number(v.get("p_value_holm")) is not None for v in sections),
    }


def _label_names(section: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(positive, negative)`` from ``label_names`` and ``positive_label``, when both are known."""
    names = section.get("label_names")
    if not (
        isinstance(names, list | tuple)
        and len(names) == 2
        and all(isinstance(n, str) and n for n in names)
    ):
        return None
    positive = section.get("positive_label")
    positive = positive if positive in names else names[1]
    negative = names[0] if names[1] == positive else names[1]
    return positive, negative


def classification_task_name(section: Mapping[str, Any]) -> str:
    """The task of a ``classification`` section in words (``"migraine vs control ..."``)."""
    labels = _label_names(section)
    if labels is None:
        return "Two-class subject classification from pretrained features"
    return f"{labels[0]} vs {labels[1]} classification from pretrained features"


def _classification_subjects(section: Mapping[str, Any]) -> str:
    """Which subjects were classified and whether the model saw them in pretraining."""
    n_subjects = section.get("n_subjects", "n/a")
    which = section.get("subjects")
    n_pretraining = section.get("n_pretraining_subjects")
    if isinstance(n_pretraining, bool) or not isinstance(n_pretraining, int):
        n_pretraining = None
    if which == "held-out":
        return f"The {n_subjects} classified subjects were all held out of pretraining."
    if which == "all labelled":
        if n_pretraining is None:
            seen = "how many of them were in the pretraining data is not recorded"
        elif n_pretraining == 0:
            seen = "none of them was in the pretraining data"
        else:
            seen = (
                f"{n_pretraining} of them were in the pretraining data (the model saw their "
                "recordings, without labels, when it was pretrained)"
            )
        return f"All {n_subjects} labelled subjects were classified; {seen}."
    if isinstance(which, str) and which.strip():
        return f"Subjects classified: {which} ({n_subjects})."
    return (
        "Which subjects were classified, and whether they were held out of pretraining, is not "
        "recorded with these results."
    )


def _classification_tables(section: Mapping[str, Any]) -> dict | None:
    rows = []
    for source, label in _INPUTS:
        for classifier, values in _section(section, source).items():
            if isinstance(values, Mapping):
                rows.append(
                    {
                        "input": label,
                        "classifier": classifier,
                        "roc_auc": _fmt_ci(values.get("roc_auc")),
                        "balanced_accuracy": _fmt_ci(values.get("balanced_accuracy")),
                    }
                )
    if not rows:
        return None
    permutation = [
        {
            "classifier": classifier,
            "difference_roc_auc": _fmt(values.get("difference_roc_auc")),
            "p_value": _fmt_p(values.get("p_value")),
        }
        for classifier, values in _section(section, "permutation_test").items()
        if isinstance(values, Mapping)
    ]
    return {
        "n_subjects": section.get("n_subjects", "n/a"),
        "folds": section.get("folds", "n/a"),
        "rows": rows,
        "permutation": permutation,
    }


def _classification(metrics: Mapping[str, Any]) -> dict | None:
    section = _section(metrics, "classification")
    tables = _classification_tables(section)
    if tables is None:
        return None
    labels = _label_names(section)
    n_pretraining = section.get("n_pretraining_subjects")
    return {
        **tables,
        "task": f"`{labels[0]}` versus `{labels[1]}`" if labels else None,
        "positive_label": labels[0] if labels else None,
        "subjects": _classification_subjects(section),
        "held_out": _classification_tables(_section(metrics, "classification_held_out")),
        "by_pretraining": _pretraining_split(section),
        # a result on subjects the model saw, with none restricted to the others
        "missing_held_out": section.get("subjects") == "all labelled"
        and n_pretraining != 0
        and not _section(metrics, "classification_held_out"),
    }


def _pretraining_split(section: Mapping[str, Any]) -> dict | None:
    """``roc_auc_by_pretraining`` of a classification section for the card, or ``None``.

    The evaluation scores the same out-of-fold subject probabilities separately on the
    classified subjects the model was pretrained on (group ``pretraining``) and on the others
    (``held_out``): ``{group: {"n_subjects": n, input: {classifier: AUROC}}}``, with ``None``
    where a group holds a single class. One row per input and classifier, one column per group.
    """
    groups = {
        group: values
        for group, values in _section(section, "roc_auc_by_pretraining").items()
        if isinstance(values, Mapping)
    }
    names = {"pretraining": "in pretraining", "held_out": "held out of pretraining"}
    columns = [
        f"{values.get('n_subjects', 'n/a')} subjects {names.get(group, group)}"
        for group, values in groups.items()
    ]
    rows, undefined = [], False
    for source, label in _INPUTS:
        classifiers = dict.fromkeys(c for v in groups.values() for c in _section(v, source))
        for classifier in classifiers:
            cells = [_section(values, source).get(classifier) for values in groups.values()]
            # undefined where a group holds one class: None in JSON, NaN before
            undefined |= any(_number(cell) is None for cell in cells)
            rows.append(
                {"input": label, "classifier": classifier, "cells": [_fmt(c) for c in cells]}
            )
    if not rows:
        return None
    return {"columns": columns, "rows": rows, "undefined": undefined}


def _evaluated_subjects(metrics: Mapping[str, Any], model_dir: Path) -> str | None:
    """Which subjects reconstruction and attention were evaluated on, and whether they were seen.

    ``metrics["test_subjects_in_pretraining"]`` (the evaluated subjects the model was pretrained
    on; ``None`` when unknown) decides; older metrics lack it, and their ``test_subjects`` are
    compared with the ``train`` side of the model's ``split.json``.
    """
    tested = metrics.get("test_subjects")
    if not isinstance(tested, list | tuple) or not tested:
        return None
    where = f"Reconstruction and attention were evaluated on {len(tested)} subjects"
    unknown = f"{where}; whether they were held out of pretraining is not recorded."
    if "test_subjects_in_pretraining" in metrics:
        seen_codes = metrics["test_subjects_in_pretraining"]
        if not isinstance(seen_codes, list | tuple):
            return unknown
        seen = len(seen_codes)
    else:
        split_path = model_dir / SPLIT_FILE
        split = _read_json(split_path, "the subject split") if split_path.is_file() else {}
        train = split.get("train") if isinstance(split, Mapping) else None
        # published metrics carry ordinal labels instead of codes: they cannot be compared
        if not isinstance(train, list | tuple) or any(_ORDINAL.fullmatch(str(c)) for c in tested):
            return unknown
        pretrained = {str(code).removeprefix("sub-").lower() for code in train}
        seen = sum(str(code).removeprefix("sub-").lower() in pretrained for code in tested)
    if seen == 0:
        return f"{where}, all held out of pretraining."
    return (
        f"{where}; {seen} of them were in the pretraining data, so these results are not all on "
        "subjects the model has not seen."
    )


# --------------------------------------------------------------------------- model-index


def evaluation_dataset_id(
    metrics: Mapping[str, Any],
    *,
    dataset_dir: str | Path | None = None,
    dataset_repo_id: str | None = None,
) -> str | None:
    """The Hub id of the data the metrics were computed on, when it is known.

    Parameters
    ----------
    metrics : Mapping
        The evaluation ``metrics.json`` content; ``metrics["dataset"]`` is the evaluated
        dataset's folder, or an object with a Hub id under ``"type"``.
    dataset_dir : str | Path | None
        A local dataset folder published as ``dataset_repo_id``.
    dataset_repo_id : str | None
        Hub id of ``dataset_dir``.

    Returns
    -------
    dataset_id : str | None
        ``metrics["dataset"]["type"]``; else ``dataset_repo_id`` when the evaluated folder is
        ``dataset_dir``; else ``None`` (the training dataset is never assumed).
    """
    evaluated = metrics.get("dataset")
    if isinstance(evaluated, Mapping):
        return str(evaluated["type"]) if evaluated.get("type") else None
    if (
        isinstance(evaluated, str)
        and evaluated
        and dataset_dir is not None
        and dataset_repo_id is not None
        and Path(evaluated).resolve() == Path(dataset_dir).resolve()
    ):
        return dataset_repo_id
    return None


def eval_results_from_metrics(
    metrics: Mapping[str, Any], *, dataset_type: str, dataset_name: str
) -> list[EvalResult]:
    """Turn evaluation metrics into ``model-index`` entries.

    Only the model's own results are listed (baselines and raw-signal classifiers stay in the
    card's tables); missing or non-finite values are left out.

    Parameters
    ----------
    metrics : Mapping
        The evaluation ``metrics.json`` content.
    dataset_type : str
        Dataset identifier (a Hub dataset id, or :data:`LOCAL_DATASET_TYPE` for data that is
        not on the Hub).
    dataset_name : str
        Display name of the evaluation data.

    Returns
    -------
    results : list of huggingface_hub.EvalResult
        Task types ``masked-signal-modeling``, ``sensor-attention-alignment`` and
        ``meg-classification``; metric types ``nmse``, ``pearson_r``, ``alignment``, ``roc_auc``
        and ``balanced_accuracy``. Classification restricted to the subjects held out of
        pretraining (``classification_held_out``) has ``dataset_config`` ``"held-out"``.
    """
    results: list[EvalResult] = []
    common = {"dataset_type": dataset_type, "dataset_name": dataset_name}
    reconstruction = _section(metrics, "reconstruction")
    scopes: list[tuple[str, str | None, Mapping]] = [
        ("continuous", None, _section(reconstruction, "continuous"))
    ]
    scopes += [
        ("evoked", condition, per_type)
        for condition, per_type in _section(reconstruction, "evoked").items()
        if isinstance(per_type, Mapping)
    ]
    for scope, condition, per_type in scopes:
        for sensor_type, values in per_type.items():
            if not isinstance(values, Mapping):
                continue
            for metric in ("nmse", "pearson_r"):
                value = _number(values.get(metric))
                if value is None:
                    continue
                where = sensor_type if condition is None else f"{condition}, {sensor_type}"
                results.append(
                    EvalResult(
                        task_type="masked-signal-modeling",
                        task_name="Masked MEG reconstruction",
                        dataset_config=scope,
                        metric_type=metric,
                        metric_value=value,
                        metric_name=f"{_METRIC_LABELS[metric]} ({scope}, {where})",
                        metric_config=sensor_type
                        if condition is None
                        else f"{condition}/{sensor_type}",
                        **common,
                    )
                )
    for condition, values in _section(metrics, "attention").items():
        value = _number(values.get("alignment")) if isinstance(values, Mapping) else None
        if value is None:
            continue
        p_value, holm = _number(values.get("p_value")), _number(values.get("p_value_holm"))
        p_text = f", p = {p_value:.3g}" if p_value is not None else ""
        p_text += f", Holm-corrected p = {holm:.3g}" if holm is not None else ""
        results.append(
            EvalResult(
                task_type="sensor-attention-alignment",
                task_name="Attention over the sensor array",
                metric_type="alignment",
                metric_value=value,
                metric_name=f"attention alignment ({condition}{p_text})",
                metric_config=condition,
                **common,
            )
        )
    # one task, the label names of the main section; the restricted results are their own group
    task_name = classification_task_name(_section(metrics, "classification"))
    for key, subjects in (("classification", None), ("classification_held_out", "held-out")):
        section = _section(metrics, key)
        for classifier, values in _section(section, "features").items():
            if not isinstance(values, Mapping):
                continue
            for metric in ("roc_auc", "balanced_accuracy"):
                estimate, low, high = _estimate(values.get(metric))
                if estimate is None:
                    continue
                ci = (
                    f", 95% CI {low:.3f}-{high:.3f}" if low is not None and high is not None else ""
                )
                where = classifier if subjects is None else f"{classifier}, {subjects} subjects"
                results.append(
                    EvalResult(
                        task_type="meg-classification",
                        task_name=task_name,
                        dataset_config=subjects,
                        metric_type=metric,
                        metric_value=estimate,
                        metric_name=f"{_METRIC_LABELS[metric]} ({where}{ci})",
                        metric_config=classifier,
                        **common,
                    )
                )
    return results


# --------------------------------------------------------------------------- the card


def _template_text(template_path: str | Path | None) -> str:
    if template_path is not None:
        path = Path(template_path)
        if not path.is_file():
            raise FileNotFoundError(f"template_path={str(path)!r}: no such file")
        return path.read_text(encoding="utf-8")
    return (
        resources.files("megfm_hf.model_cards").joinpath(TEMPLATE_NAME).read_text(encoding="utf-8")
    )


def _license_text(license: str) -> str:
    if license == DEFAULT_LICENSE:
        return (
            "The weights and the model code are released under the BSD 3-Clause license, the "
            "license of megfm-hf. The license does not make the model fit for clinical use."
        )
    return f"Released under the `{license}` license."


def _load_config(model_dir: Path) -> MEGConfig:
    path = model_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json; expected a save_pretrained folder")
    raw = _read_json(path, "the model configuration")
    if not isinstance(raw, Mapping) or raw.get("model_type") != MEGConfig.model_type:
        found = raw.get("model_type") if isinstance(raw, Mapping) else type(raw).__name__
        raise ValueError(
            f"{path}: model_type={found!r}; expected {MEGConfig.model_type!r} (a megfm model)"
        )
    return MEGConfig.from_json_file(str(path))


def build_model_card(
    model_dir: str | Path,
    metrics: Mapping[str, Any] | str | Path | None = None,
    dataset_summary: Mapping[str, Any] | str | Path | None = None,
    repo_id: str | None = None,
    *,
    dataset_repo_id: str | None = None,
    model_name: str | None = None,
    license: str = DEFAULT_LICENSE,
    citation: str = REFERENCE_CITATION,
    template_path: str | Path | None = None,
    forbidden_strings: Iterable[str] | None = None,
    eval_dataset_repo_id: str | None = None,
    subject_codes: Iterable[str] = (),
) -> ModelCard:
    """Build the model card of a saved model.

    Parameters
    ----------
    model_dir : str | Path
        A ``save_pretrained`` folder with ``config.json``; ``model.safetensors``,
        ``preprocessor_config.json``, ``training_args.json``, ``trainer_state.json`` are read
        when present.
    metrics : Mapping | str | Path | None
        Evaluation results (the content of ``metrics.json``) or a path to them; ``None`` reads
        ``model_dir/metrics.json`` when present. Missing sections are reported as not evaluated,
        with the reason from the ``skipped`` section when there is one.
    dataset_summary : Mapping | str | Path | None
        Counts describing the training data (see :func:`summarize_dataset`), a built dataset
        folder to summarize, or a JSON file; ``None`` reads ``model_dir/dataset_summary.json``
        when present.
    repo_id : str | None
        Hub id (``ORG/NAME``) the card is for; used in the usage example and the model name.
    dataset_repo_id : str | None
        Hub id of the training dataset, listed in the card metadata (``datasets``). It is the
        ``model-index`` dataset only when the metrics were computed on that dataset (the
        evaluated folder is ``dataset_summary``; see :func:`evaluation_dataset_id`).
    model_name : str | None
        Display name; defaults to the repository name, else the folder name.
    license : str
        Hub license identifier.
    citation : str
        BibTeX of the reference paper.
    template_path : str | Path | None
        A Jinja card template; the packaged ``megfm_card_template.md`` when ``None``.
    forbidden_strings : iterable of str | None
        Identifier strings that must not appear in the card.
    eval_dataset_repo_id : str | None
        Hub id of the data the metrics were computed on. When neither this nor the metrics name
        one (:func:`evaluation_dataset_id`), the ``model-index`` results give the dataset type
        :data:`LOCAL_DATASET_TYPE`: the Hub requires a type, and the data is not on the Hub.
    subject_codes : iterable of str
        Subject codes of the data, refused in the card as whole words
        (:func:`~megfm_hf.hub.privacy.subject_code_forms`).

    Returns
    -------
    card : huggingface_hub.ModelCard
        With ``model-index`` metadata built from the metrics.

    Raises
    ------
    FileNotFoundError
        If ``config.json`` or a given metrics/summary file is missing.
    ValueError
        If a file is not valid JSON, the model is not a megfm model, or the card would hold an
        identifier (:class:`~megfm_hf.hub.privacy.PrivacyError`).
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model_dir={str(model_dir)!r}: no such folder")
    if repo_id is not None:
        check_repo_id(repo_id)
    if dataset_repo_id is not None:
        check_repo_id(dataset_repo_id, argument="dataset_repo_id")
    if eval_dataset_repo_id is not None:
        check_repo_id(eval_dataset_repo_id, argument="eval_dataset_repo_id")
    config = _load_config(model_dir)
    metrics = load_metrics(metrics, model_dir)
    summary = _load_dataset_summary(dataset_summary, model_dir)
    name = model_name or (repo_id.split("/")[-1] if repo_id else model_dir.resolve().name)

    evaluated = _section(metrics, "dataset")
    summarized_dir = (
        dataset_summary
        if isinstance(dataset_summary, str | os.PathLike) and Path(dataset_summary).is_dir()
        else None
    )
    dataset_id = eval_dataset_repo_id or evaluation_dataset_id(
        metrics, dataset_dir=summarized_dir, dataset_repo_id=dataset_repo_id
    )
    dataset_type = _dataset_type(dataset_id or LOCAL_DATASET_TYPE)
    # the training data's name describes the evaluation data only when they are one dataset
    same_data = dataset_id is not None and dataset_id == dataset_repo_id
    dataset_name = str(
        evaluated.get("name")
        or (same_data and (summary or {}).get("name"))
        or "MEG evaluation data"
    )
    eval_results = eval_results_from_metrics(
        metrics, dataset_type=dataset_type, dataset_name=dataset_name
    )
    card_data = ModelCardData(
        license=license,
        library_name="transformers",
        pipeline_tag="feature-extraction",
        tags=["meg", "magnetoencephalography", "neuroscience", "foundation-model", "megfm"],
        datasets=[dataset_repo_id] if dataset_repo_id else None,
        model_name=name if eval_results else None,
        eval_results=eval_results or None,
    )
    skipped = _section(metrics, "skipped")
    reconstruction, baseline_names = _reconstruction_rows(metrics)
    summary_text = (
        f"**{name}** is a MEG foundation model pretrained by masked-signal reconstruction: parts "
        "of each window (random patches, whole sensors, blocks of time) are hidden and the model "
        "reconstructs them. Its features serve any MEG sensor array. It follows the approach of "
        f'"{REFERENCE_TITLE}" (J. Neural Eng., 2025) and is built with megfm-hf on '
        "transformers."
    )
    card = ModelCard.from_template(
        card_data,
        template_str=_template_text(template_path),
        model_name=name,
        model_summary=summary_text,
        model_path=repo_id or "path/to/model",
        architecture=_architecture(config, model_dir),
        preprocessing=_preprocessing(model_dir),
        training=_training(model_dir),
        dataset=_dataset_context(summary),
        evaluated_subjects=_evaluated_subjects(metrics, model_dir),
        reconstruction=reconstruction,
        reconstruction_baselines=baseline_names,
        reconstruction_has_baselines=bool(baseline_names),
        baseline_descriptions=_baseline_descriptions(baseline_names),
        attention=_attention_rows(metrics),
        attention_columns=_attention_columns(metrics),
        classification=_classification(metrics),
        not_evaluated={key: str(value) for key, value in skipped.items()},
        license=license,
        license_text=_license_text(license),
        citation=citation.strip(),
    )
    check_text(
        card.content,
        source=f"model card of {model_dir}",
        forbidden_strings=forbidden_strings,
        subject_codes=subject_codes,
    )
    return card


def write_model_card(
    model_dir: str | Path,
    metrics: Mapping[str, Any] | str | Path | None = None,
    dataset_summary: Mapping[str, Any] | str | Path | None = None,
    repo_id: str | None = None,
    *,
    output: str | Path | None = None,
    **kwargs: Any,
) -> Path:
    """Build the card and write it atomically (temporary file, then rename).

    Parameters
    ----------
    model_dir, metrics, dataset_summary, repo_id, **kwargs
        See :func:`build_model_card`.
    output : str | Path | None
        Where to write; ``model_dir/README.md`` when ``None``.

    Returns
    -------
    path : Path
        The written card.
    """
    card = build_model_card(model_dir, metrics, dataset_summary, repo_id, **kwargs)
    path = Path(output) if output is not None else Path(model_dir) / "README.md"
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            handle.write(str(card))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("wrote the model card %s", path)
    return path


__all__ = [
    "DEFAULT_LICENSE",
    "LOCAL_DATASET_TYPE",
    "REFERENCE_CITATION",
    "build_model_card",
    "check_repo_id",
    "classification_task_name",
    "count_parameters",
    "eval_results_from_metrics",
    "evaluation_dataset_id",
    "load_metrics",
    "summarize_dataset",
    "write_model_card",
]
