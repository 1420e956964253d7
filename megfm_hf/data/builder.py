"""Build a ``datasets`` dataset of preprocessed, anonymized MEG windows.

Output folder layout (``output_dir``)::

    data-00000-of-0000N.arrow, dataset_info.json, state.json   # datasets.load_from_disk(output_dir)
    parquet/train-<recording>.parquet                          # one Parquet shard per recording
    preprocessor_config.json                                   # the MEGProcessor used
    megfm_dataset.json                                         # build report: counts, failures
    README.md                                                  # dataset card
    .megfm-build/                                              # resume state; never published
        secret.key        per-dataset HMAC secret (keep it private, needed to resume)
        settings.json     processing settings the shards were made with
        status/<recording>.json

How a build runs, and why it survives being killed:

1. Every recording is processed independently (``num_proc`` worker processes, one recording in
   memory per worker) into ``parquet/train-<recording>.parquet``, written under a temporary name
   and renamed when complete; then its status file is written the same way. ``<recording>`` is a
   keyed hash (HMAC-SHA256 with the per-dataset secret) of the file path, subject, session and
   state, so neither rows nor file names reveal the file name.
2. A rerun skips recordings whose status says done and whose shard has the recorded number of
   rows, deletes temporary leftovers, and redoes the rest, so nothing is lost or duplicated.
3. Only when every recording is done (or failed with a reported reason) does
   :class:`MEGWindowsBuilder` (a ``GeneratorBasedBuilder``) assemble the shards, in manifest order
   with stable keys, into the Arrow dataset that ``load_from_disk`` reads.

Sensor counts differ between systems: see :mod:`megfm_hf.data.shards` for the ``Array2D`` schema
with a variable first dimension.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import secrets
import shutil
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from tqdm.auto import tqdm

from .anonymize import recording_hash
from .dataset_builder import MEGDatasetConfig, MEGWindowsBuilder
from .manifest import RecordingSpec, check_labels, manifest_from_bids, read_manifest
from .processor import MEGProcessor
from .recording_job import is_complete, process_recording_to_shard, processor_settings
from .shards import (
    atomic_write_text,
    remove_stale_temporaries,
)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
WORK_DIR_NAME = ".megfm-build"
PARQUET_DIR_NAME = "parquet"
REPORT_NAME = "megfm_dataset.json"
#: states that get fixed-length windows even when event ids are given
REST_STATES = (
    "rest",
    "resting",
    "resting_state",
    "restingstate",
    "eyes_open",
    "eyes_closed",
    "noise",
)
SECRET_ENV = "MEGFM_DATASET_SECRET"


# -- the whole build -----------------------------------------------------------------------------


@dataclass
class BuildResult:
    """Outcome of :func:`build_dataset`.

    Attributes
    ----------
    output_dir : Path
    n_windows : int
    n_recordings : int
        Recordings that produced windows.
    failures : list of dict
        ``{"manifest_row", "recording", "reason", "problem"}`` per failed recording.
    rejected : dict
        Windows rejected by peak-to-peak amplitude, per sensor type.
    """

    output_dir: Path
    n_windows: int
    n_recordings: int
    failures: list[dict[str, Any]]
    rejected: dict[str, int]

    def load(self) -> datasets.Dataset:
        """Load the built dataset (memory-mapped)."""
        return datasets.load_from_disk(str(self.output_dir))


def _load_secret(work_dir: Path, secret: str | bytes | None) -> bytes:
    if secret is None:
        secret = os.environ.get(SECRET_ENV)
    if secret:
        return secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    key_file = work_dir / "secret.key"
    if key_file.is_file():
        return bytes.fromhex(key_file.read_text().strip())
    generated = secrets.token_bytes(32)
    atomic_write_text(key_file, generated.hex(), mode=0o600)
    return generated


def _settings(processor: MEGProcessor, event_id, rest_states) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "processor": processor_settings(processor.to_dict()),
        "event_id": event_id,
        "rest_states": list(rest_states),
    }


def _resolve_recordings(
    recordings: Sequence[RecordingSpec] | str | Path | None,
    bids_root: str | Path | None,
    label_column: str | None,
) -> list[RecordingSpec]:
    if bids_root is not None:
        if recordings is not None:
            raise ValueError("give either recordings (or a manifest) or bids_root, not both")
        return manifest_from_bids(bids_root, label_column=label_column)
    if recordings is None:
        raise ValueError(
            "no recordings: give a manifest path, a list of RecordingSpec or bids_root"
        )
    if isinstance(recordings, str | Path):
        return read_manifest(recordings)
    specs = [r if isinstance(r, RecordingSpec) else RecordingSpec(**dict(r)) for r in recordings]
    specs = [RecordingSpec(**{**r.to_dict(), "row": i}) for i, r in enumerate(specs)]
    check_labels(specs, source="<recordings>")
    return specs


def build_dataset(
    recordings: Sequence[RecordingSpec] | str | Path | None,
    output_dir: str | Path,
    *,
    processor: MEGProcessor | None = None,
    bids_root: str | Path | None = None,
    label_column: str | None = "group",
    event_id: Mapping[str, int] | Sequence[str] | str | None = None,
    rest_states: Sequence[str] = REST_STATES,
    num_proc: int = 1,
    fail_fast: bool = False,
    secret: str | bytes | None = None,
    overwrite: bool = False,
    writer_batch_size: int = 64,
    reader_kwargs: Mapping[str, Any] | None = None,
    max_shard_size: str | int = "500MB",
) -> BuildResult:
    """Build (or resume building) a dataset of MEG windows.

    Parameters
    ----------
    recordings : sequence of RecordingSpec | str | Path | None
        The recordings, or a manifest file (TSV/CSV); ``None`` with ``bids_root``.
    output_dir : str | Path
        Output folder (see the module notes for its layout).
    processor : MEGProcessor | None
        Preprocessing and windowing parameters (defaults: ``MEGProcessor()``).
    bids_root : str | Path | None
        Build from a BIDS folder instead (subjects, sessions, tasks from BIDS entities, labels
        from ``participants.tsv``).
    label_column : str | None
        Column of ``participants.tsv`` with the labels (BIDS only).
    event_id : Mapping | Sequence | str | None
        Events for event-locked windows (``{name: stim code}`` or annotation descriptions;
        ``"all"``: every stim code, named by its number); ``None`` takes the processor's
        ``event_id``, if it has one. Recordings whose state is in ``rest_states`` get
        fixed-length windows regardless.
    rest_states : sequence of str
        States windowed with fixed-length windows.
    num_proc : int
        Worker processes (one recording in memory per worker).
    fail_fast : bool
        Stop at the first bad recording; otherwise bad recordings are reported and skipped.
    secret : str | bytes | None
        HMAC secret for recording hashes; defaults to ``$MEGFM_DATASET_SECRET`` or a random
        secret kept in ``.megfm-build/secret.key`` (needed to resume; keep it private).
    overwrite : bool
        Discard shards made with different settings instead of refusing to continue.
    writer_batch_size : int
        Rows per Parquet row group and per Arrow write (keeps memory low).
    reader_kwargs : Mapping | None
        Extra keyword arguments for the MNE readers.
    max_shard_size : str | int
        Largest Arrow file of the ``load_from_disk`` folder.

    Returns
    -------
    result : BuildResult

    Raises
    ------
    MEGDataError
        With ``fail_fast``, the first bad recording (naming the file and the problem).
    RuntimeError
        When no recording produced windows.
    """
    processor = processor or MEGProcessor()
    specs = _resolve_recordings(recordings, bids_root, label_column)
    label_names = check_labels(specs, source="<recordings>")
    output_dir = Path(output_dir)
    work_dir = output_dir / WORK_DIR_NAME
    shard_dir = output_dir / PARQUET_DIR_NAME
    status_dir = work_dir / "status"
    for folder in (work_dir, shard_dir, status_dir):
        folder.mkdir(parents=True, exist_ok=True)
    for folder in (work_dir, shard_dir, status_dir, output_dir):
        remove_stale_temporaries(folder)

    rest_states = tuple(s.lower() for s in rest_states)
    if event_id is None:
        event_id = processor.event_id or None
    settings = _settings(processor, event_id, rest_states)
    settings_file = work_dir / "settings.json"
    if settings_file.is_file() and json.loads(settings_file.read_text()) != settings:
        if not overwrite:
            raise ValueError(
                f"{output_dir}: already holds windows built with different settings; use a new "
                "output folder or overwrite=True (--overwrite) to rebuild"
            )
        logger.warning("settings changed: discarding the shards of the previous build")
        for stale in [*shard_dir.glob("*.parquet"), *status_dir.glob("*.json")]:
            stale.unlink()
    atomic_write_text(settings_file, json.dumps(settings, indent=1, sort_keys=True))

    key = _load_secret(work_dir, secret)
    jobs, seen = [], {}
    for spec in specs:
        digest = recording_hash("\0".join([spec.path, spec.subject, spec.session, spec.state]), key)
        if digest in seen:
            raise ValueError(
                f"manifest rows {seen[digest] + 1} and {spec.row + 1} list the same recording "
                f"({spec.path}) with the same subject, session and state"
            )
        seen[digest] = spec.row
        jobs.append(
            {
                "spec": spec.to_dict(),
                "hash": digest,
                "processor": processor.to_dict(),
                "shard": str(shard_dir / f"train-{digest}.parquet"),
                "status": str(status_dir / f"{digest}.json"),
                "event_id": event_id,
                "rest_states": rest_states,
                "batch_size": writer_batch_size,
                "reader_kwargs": dict(reader_kwargs or {}),
                "fail_fast": fail_fast,
            }
        )

    pending = [job for job in jobs if not is_complete(job)]
    if len(pending) < len(jobs):
        logger.info(
            "resuming: %d of %d recordings already done", len(jobs) - len(pending), len(jobs)
        )
    statuses = _run_jobs(pending, num_proc=num_proc)
    for status in statuses:
        if status["status"] != "done":
            logger.error("skipped recording (%s): %s", status["reason"], status["message"])

    all_status = [json.loads(Path(job["status"]).read_text()) for job in jobs]
    done = [job for job, status in zip(jobs, all_status, strict=True) if status["status"] == "done"]
    failures = [
        {k: s[k] for k in ("manifest_row", "recording", "reason", "problem")}
        for s in all_status
        if s["status"] != "done"
    ]
    if not done:
        reasons = "; ".join(f"row {f['manifest_row'] + 1}: {f['problem']}" for f in failures)
        raise RuntimeError(f"{output_dir}: no recording produced windows ({reasons})")
    _warn_mixed_frames(done, all_status)
    keep = {Path(job["shard"]).name for job in done}
    for shard in shard_dir.glob("*.parquet"):
        if shard.name not in keep:
            logger.info("removing a shard of a recording no longer in the build")
            shard.unlink()

    _assemble(
        done, output_dir, work_dir, processor.window_samples, writer_batch_size, max_shard_size
    )

    rejected: dict[str, int] = {}
    for status in all_status:
        for name, count in (status.get("rejected") or {}).items():
            rejected[name] = rejected.get(name, 0) + count
    result = BuildResult(
        output_dir=output_dir,
        n_windows=sum(s["n_windows"] for s in all_status if s["status"] == "done"),
        n_recordings=len(done),
        failures=failures,
        rejected=rejected,
    )
    processor.save_pretrained(output_dir)
    report = {
        "format_version": FORMAT_VERSION,
        "n_windows": result.n_windows,
        "n_recordings": result.n_recordings,
        "n_failed": len(failures),
        "failures": failures,
        "rejected_windows_per_sensor_type": rejected,
        "window_samples": processor.window_samples,
        "sfreq": processor.sfreq,
        "label_names": label_names,
        "states": sorted({RecordingSpec(**job["spec"]).state for job in done}),
        "subjects": len({RecordingSpec(**job["spec"]).subject for job in done}),
        "event_id": event_id,
        "recordings": [
            {
                k: s.get(k)
                for k in (
                    "recording",
                    "manifest_row",
                    "n_windows",
                    "n_candidates",
                    "rejected",
                    "dropped_at_edges",
                    "dropped_by_annotation",
                    "line_freq",
                    "n_sensors",
                    "n_bad_sensors",
                    "coordinate_frame",
                    "mode",
                )
            }
            for s in all_status
            if s["status"] == "done"
        ],
    }
    atomic_write_text(output_dir / REPORT_NAME, json.dumps(report, indent=1))
    atomic_write_text(output_dir / "README.md", dataset_card(report, processor))
    logger.info(
        "built %d windows from %d recordings (%d failed) in %s",
        result.n_windows,
        result.n_recordings,
        len(failures),
        output_dir,
    )
    return result


def _warn_mixed_frames(done: list[dict[str, Any]], all_status: list[dict[str, Any]]) -> None:
    """Warn when the sensor positions of a build are not all in the same coordinate frame.

    Recordings are named by manifest row and recording hash (as in the build report).

    Head coordinates (from a device-to-head transform) and device coordinates differ by the
    head's position in the helmet, so the model would see the same sensor at different places.
    """
    statuses = {s["recording"]: s for s in all_status if s["status"] == "done"}
    by_frame: dict[str, list[str]] = {}
    for job in done:
        frame = statuses[job["hash"]].get("coordinate_frame")
        # manifest row and recording hash, not the path: file names often hold identifiers
        name = f"row {job['spec']['row'] + 1} (recording {job['hash']})"
        by_frame.setdefault(str(frame), []).append(name)
    if len(by_frame) > 1:
        logger.warning(
            "sensor positions mix coordinate frames (head: from a device-to-head transform; "
            "meg: device coordinates, no transform or an identity one): %s; give the recordings "
            "without one a transform (e.g. KIT marker coils) or build them separately",
            "; ".join(f"{frame}: {', '.join(rows)}" for frame, rows in sorted(by_frame.items())),
        )


def _run_jobs(jobs: list[dict[str, Any]], *, num_proc: int) -> list[dict[str, Any]]:
    if not jobs:
        return []
    statuses = []
    progress = tqdm(total=len(jobs), desc="recordings", unit="rec")
    try:
        if num_proc <= 1 or len(jobs) == 1:
            for job in jobs:
                statuses.append(process_recording_to_shard(job))
                progress.update()
            return statuses
        # spawn, not fork: forked copies of a process that has started BLAS/torch threads can hang
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=min(num_proc, len(jobs)), mp_context=context, initializer=_single_threaded
        ) as pool:
            futures = {pool.submit(process_recording_to_shard, job) for job in jobs}
            while futures:
                finished, futures = wait(futures, return_when=FIRST_EXCEPTION)
                for future in finished:
                    error = future.exception()
                    if error is not None:
                        for other in futures:
                            other.cancel()
                        raise error
                    statuses.append(future.result())
                    progress.update()
        return statuses
    finally:
        progress.close()


def _single_threaded() -> None:
    """Limit each worker to one BLAS/FFT thread: ``num_proc`` workers share the cores."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # installed with scikit-learn; without it workers keep their defaults
        return
    threadpool_limits(1)


def _assemble(
    done: list[dict[str, Any]],
    output_dir: Path,
    work_dir: Path,
    window_samples: int,
    writer_batch_size: int,
    max_shard_size: str | int,
) -> None:
    """Assemble the shards into the ``load_from_disk`` folder, replacing files atomically."""
    cache_dir = work_dir / "cache"
    staging = work_dir / "staging"
    shutil.rmtree(cache_dir, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
    builder = MEGWindowsBuilder(
        cache_dir=str(cache_dir),
        config_name="default",
        jobs=tuple(done),
        window_samples=window_samples,
        writer_batch_size=writer_batch_size,
    )
    builder.download_and_prepare(output_dir=str(cache_dir / "prepared"))
    dataset = builder.as_dataset(split="train")
    dataset.save_to_disk(str(staging), max_shard_size=max_shard_size)
    del dataset
    for old in output_dir.glob("data-*.arrow"):
        old.unlink()
    (output_dir / "state.json").unlink(missing_ok=True)
    for new in sorted(staging.iterdir()):
        if new.name != "state.json":
            os.replace(new, output_dir / new.name)
    # state.json last: load_from_disk only sees the folder as a dataset once it is complete
    os.replace(staging / "state.json", output_dir / "state.json")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(cache_dir, ignore_errors=True)


def dataset_card(report: Mapping[str, Any], processor: MEGProcessor) -> str:
    """Return a dataset card (README.md) describing the windows and their preprocessing."""
    labels = ", ".join(report["label_names"]) or "none"
    line_freqs = [r.get("line_freq") for r in report.get("recordings", [])]
    notch = "off"
    if processor.notch:
        counts = {f: line_freqs.count(f) for f in sorted({f for f in line_freqs if f})}
        used = (
            ", ".join(f"{f:g} Hz in {n} of {len(line_freqs)} recordings" for f, n in counts.items())
            or "none used"
        )
        source = (
            f"{processor.line_freq:g} Hz as set"
            if processor.line_freq
            else "from each file, else detected from its spectrum"
        )
        notch = f"on, {source}: {used}"
    states = ", ".join(s or "(unspecified)" for s in report["states"])
    return f"""---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/*.parquet
tags:
- meg
- magnetoencephalography
- neuroscience
---

# MEG windows

Preprocessed and anonymized MEG windows, one row per window, built with megfm-hf.

- windows: {report["n_windows"]} from {report["n_recordings"]} recordings of {report["subjects"]} subjects
- states: {states}
- labels: {labels}
- window: {report["window_samples"]} samples at {report["sfreq"]:g} Hz

## Columns

| column | type | meaning |
|---|---|---|
| `input_values` | float32 (sensors, samples) | signal; magnetometers, axial gradiometers, OPM in pT; planar gradiometers in 100 fT/cm (with the default physical scaling) |
| `sensor_positions` | float32 (sensors, 6) | position (m) and unit orientation, head coordinates when available |
| `sensor_types` | int64 (sensors) | 0 magnetometer, 1 planar gradiometer, 2 axial gradiometer, 3 OPM |
| `sensor_mask` | bool (sensors) | False for bad sensors (their samples are zero) |
| `sfreq` | float32 | sampling rate (Hz) |
| `onset_s` | float64 | window start (s) from the recording start, or from the event for evoked data |
| `subject`, `session`, `state`, `label`, `event` | string | as given in the manifest / BIDS entities; `event` names the stimulus of event-locked windows |
| `recording` | string | keyed hash of the recording (not reversible without the builder's secret) |

The number of sensors varies between MEG systems: `input_values` and `sensor_positions` have a
variable first dimension. Pad per batch and use `sensor_mask`.

## Preprocessing

Band {processor.l_freq}-{processor.h_freq} Hz, notch at the line frequency and harmonics
({notch}), resampled to {processor.sfreq:g} Hz, scaling mode
`{processor.scaling_mode}`. The full settings are in `preprocessor_config.json`; load them with
`MEGProcessor.from_pretrained`.

Measurement info (names, birthdays, hospital IDs, device serials, measurement dates) is removed on
ingest and never written.
"""


def push_dataset_to_hub(
    output_dir: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = True,
    commit_message: str = "Add MEG windows",
    api: Any | None = None,
) -> Any:
    """Upload a built dataset's Parquet shards, card and processor config to the Hub.

    Parameters
    ----------
    output_dir : str | Path
        A folder written by :func:`build_dataset`.
    repo_id : str
        Dataset repository (``user/name``).
    token : str | None
        Hub token (the logged-in token when ``None``).
    private : bool
        Create the repository as private.
    commit_message : str
    api : huggingface_hub.HfApi | None
        Client to use (tests pass a recording stand-in).

    Returns
    -------
    commit : huggingface_hub.CommitInfo

    Notes
    -----
    Only ``parquet/*.parquet`` (as ``data/*.parquet``), ``README.md``, ``preprocessor_config.json``
    and ``megfm_dataset.json`` are uploaded; the build state (``.megfm-build``, with the hash
    secret) never is.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    output_dir = Path(output_dir)
    shards = sorted((output_dir / PARQUET_DIR_NAME).glob("*.parquet"))
    if not shards:
        raise FileNotFoundError(
            f"{output_dir}: no Parquet shards in {PARQUET_DIR_NAME}/; build first"
        )
    api = api or HfApi(token=token)
    operations = [
        CommitOperationAdd(path_in_repo=f"data/{shard.name}", path_or_fileobj=str(shard))
        for shard in shards
    ]
    for name in ("README.md", "preprocessor_config.json", REPORT_NAME):
        if (output_dir / name).is_file():
            operations.append(
                CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(output_dir / name))
            )
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    return api.create_commit(
        repo_id, operations=operations, commit_message=commit_message, repo_type="dataset"
    )


__all__ = [
    "BuildResult",
    "MEGDatasetConfig",
    "MEGWindowsBuilder",
    "REST_STATES",
    "build_dataset",
    "dataset_card",
    "process_recording_to_shard",
    "push_dataset_to_hub",
]
