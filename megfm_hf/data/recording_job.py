"""One recording -> one Parquet shard of window rows, with a status file (the unit of resume)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .anonymize import anonymize, check_no_identifiers, identifier_strings
from .errors import MEGDataError, PrivacyError
from .manifest import RecordingSpec
from .processor import MEGProcessor
from .readers import read_recording
from .shards import (
    AtomicParquetWriter,
    atomic_write_text,
    parquet_num_rows,
    rows_table,
    window_features,
)


def _redact(text: str, path: str) -> str:
    """Remove the file path and name from a message stored in the output folder."""
    candidates = {path, str(Path(path).resolve()), Path(path).name, Path(path).stem}
    for candidate in sorted(candidates, key=len, reverse=True):
        if len(candidate) >= 3:
            text = text.replace(candidate, "<recording>")
    return text


def process_recording_to_shard(job: Mapping[str, Any]) -> dict[str, Any]:
    """Turn one recording into a Parquet shard of window rows; return its status.

    Parameters
    ----------
    job : Mapping
        ``spec`` (RecordingSpec as dict), ``hash``, ``processor`` (processor config dict),
        ``shard`` and ``status`` (paths), ``event_id``, ``rest_states``, ``batch_size``,
        ``reader_kwargs``, ``fail_fast``.

    Returns
    -------
    status : dict
        ``{"status": "done", "n_windows": ..., ...}`` or ``{"status": "failed", "reason": ...,
        "problem": ...}``; also written atomically to ``job["status"]``. The message with the file
        path is returned under ``"message"`` for the caller's log but never written.
    """
    spec = RecordingSpec(**job["spec"])
    processor = MEGProcessor.from_dict(dict(job["processor"]))
    writer = None
    try:
        recording = read_recording(spec.path, reader_kwargs=job.get("reader_kwargs"))
        items = recording if isinstance(recording, list) else [recording]
        identifiers = identifier_strings(
            items[0].info, include_meas_date=not processor.keep_meas_date
        )
        if processor.anonymize:
            for item in items:
                anonymize(item, keep_meas_date=processor.keep_meas_date)
        event_id = job.get("event_id")
        mode = "fixed"
        if event_id and spec.state.lower() not in job["rest_states"]:
            mode = "events"
        processed = processor.process(
            recording, event_id=None if event_id == "all" else event_id, mode=mode, path=spec.path
        )
        strings = {
            "subject": spec.subject,
            "session": spec.session,
            "state": spec.state,
            "label": spec.label,
            "recording": job["hash"],
        }
        check_no_identifiers(
            "\n".join([*strings.values(), *processed.plan.events]),
            identifiers,
            where="dataset rows",
        )
        features = window_features(processed.n_samples)
        writer = AtomicParquetWriter(
            job["shard"], features.arrow_schema, row_group_size=job["batch_size"]
        )
        sensors = processed.sensors
        for indices, windows in processed.iter_batches(job["batch_size"]):
            writer.write(
                rows_table(
                    features,
                    input_values=windows,
                    sensor_positions=sensors.positions,
                    sensor_types=sensors.types,
                    sensor_mask=processed.sensor_mask,
                    sfreq=processed.preprocessed.sfreq,
                    onset_s=processed.plan.onsets_s[indices],
                    strings={**strings, "event": [processed.plan.events[i] for i in indices]},
                )
            )
        writer.commit()
        status = {
            "status": "done",
            "n_windows": writer.num_rows,
            "n_candidates": processed.n_candidates,
            "rejected": processed.plan.rejected,
            "dropped_at_edges": processed.plan.n_dropped_at_edges,
            "dropped_by_annotation": processed.plan.n_dropped_by_annotation,
            "line_freq": processed.preprocessed.line_freq,
            "n_sensors": sensors.n_sensors,
            "n_bad_sensors": int((~processed.sensor_mask).sum()),
            "coordinate_frame": sensors.coordinate_frame,
            "mode": "segments" if processed.segments is not None else mode,
        }
    except (MEGDataError, PrivacyError) as err:
        if writer is not None:
            writer.abort()
        if job.get("fail_fast"):
            raise
        problem = err.problem if isinstance(err, MEGDataError) else str(err)
        status = {
            "status": "failed",
            "reason": getattr(err, "reason", "privacy"),
            "problem": _redact(problem, spec.path),
            "message": str(err),
        }
    record = {k: v for k, v in status.items() if k != "message"}
    record.update(recording=job["hash"], manifest_row=spec.row, job=job_fingerprint(job))
    atomic_write_text(job["status"], json.dumps(record, indent=1))
    return {**record, **({"message": status["message"]} if "message" in status else {})}


#: processor config entries that name software versions, not settings
_VOLATILE_PROCESSOR_KEYS = ("feature_extractor_type", "processor_class", "transformers_version")


def processor_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """Return a processor config (``MEGProcessor.to_dict()``) without its version entries."""
    return {k: v for k, v in config.items() if k not in _VOLATILE_PROCESSOR_KEYS}


def job_fingerprint(job: Mapping[str, Any]) -> str:
    """Digest of everything a recording's shard depends on.

    The shard's rows are made from the recording's manifest entry (path, subject, session,
    state, label; not its row number), the processor settings, the events and rest states, and
    the reader's keyword arguments. A shard is reused only when all of these are unchanged.

    Parameters
    ----------
    job : Mapping
        A job as :func:`process_recording_to_shard` takes it.

    Returns
    -------
    fingerprint : str
        SHA-256 hex digest.
    """
    spec = {k: v for k, v in dict(job["spec"]).items() if k != "row"}
    inputs = {
        "spec": spec,
        "processor": processor_settings(job["processor"]),
        "event_id": job.get("event_id"),
        "rest_states": list(job["rest_states"]),
        "reader_kwargs": dict(job.get("reader_kwargs") or {}),
    }
    # default=repr: reader arguments may hold values JSON cannot write (paths, tuples)
    text = json.dumps(inputs, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def is_complete(job: Mapping[str, Any]) -> bool:
    """Return True when a recording's shard and status are finished and still valid.

    Parameters
    ----------
    job : Mapping
        A job as :func:`process_recording_to_shard` takes it.

    Returns
    -------
    complete : bool
        The status says done, was written for a job with the same :func:`job_fingerprint`
        (a changed label or reader argument makes the shard stale), and the shard holds the
        recorded number of rows.
    """
    status_path = Path(job["status"])
    if not status_path.is_file():
        return False
    try:
        status = json.loads(status_path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return (
        status.get("status") == "done"
        and status.get("job") == job_fingerprint(job)
        and parquet_num_rows(job["shard"]) == status.get("n_windows")
    )


__all__ = ["is_complete", "job_fingerprint", "process_recording_to_shard", "processor_settings"]
