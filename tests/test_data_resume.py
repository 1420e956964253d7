"""A killed build, rerun, completes with no corrupted or duplicated windows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import datasets
import numpy as np
import pytest

from megfm_hf.data import MEGProcessor, build_dataset
from megfm_hf.data import builder as builder_module
from megfm_hf.data.manifest import RecordingSpec
from megfm_hf.data.testing import make_raw, write_raw

SECRET = "resume-secret"
PROCESSOR = dict(window_seconds=0.4, reject=None)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("recordings")
    lines = ["path\tsubject\tstate\tlabel"]
    for i in range(6):
        path = write_raw(make_raw(duration=6.0, sfreq=500.0, seed=i), tmp / f"rec{i}_raw.fif")
        lines.append(f"{path}\tsub{i}\trest\t{'control' if i % 2 else 'patient'}")
    path = tmp / "manifest.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def reference(manifest, tmp_path_factory) -> datasets.Dataset:
    out = tmp_path_factory.mktemp("reference") / "dataset"
    return build_dataset(manifest, out, processor=MEGProcessor(**PROCESSOR), secret=SECRET).load()


def _assert_identical(ds: datasets.Dataset, reference: datasets.Dataset) -> None:
    assert len(ds) == len(reference)
    keys = list(zip(ds["recording"], ds["onset_s"], strict=True))
    assert len(set(keys)) == len(keys), "duplicated windows"
    assert keys == list(zip(reference["recording"], reference["onset_s"], strict=True))
    a = ds.with_format("numpy")["input_values"]
    b = reference.with_format("numpy")["input_values"]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_resume_after_simulated_crash(manifest, reference, tmp_path, monkeypatch):
    out = tmp_path / "dataset"
    real = builder_module.process_recording_to_shard
    calls = []

    def crash_after_two(job):
        if len(calls) == 2:
            # a crash in the middle of writing: a partial temporary shard is left behind
            Path(job["shard"] + ".tmp-99999").write_bytes(b"PAR1 partial")
            raise KeyboardInterrupt("simulated crash")
        calls.append(job["hash"])
        return real(job)

    monkeypatch.setattr(builder_module, "process_recording_to_shard", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(manifest, out, processor=MEGProcessor(**PROCESSOR), secret=SECRET)
    assert len(list((out / "parquet").glob("*.parquet"))) == 2
    assert not (out / "state.json").exists()  # no assembly before every recording is done

    monkeypatch.setattr(builder_module, "process_recording_to_shard", real)
    processed = []
    monkeypatch.setattr(
        builder_module, "process_recording_to_shard", lambda job: processed.append(job) or real(job)
    )
    build_dataset(manifest, out, processor=MEGProcessor(**PROCESSOR), secret=SECRET)
    assert len(processed) == 4  # the two finished recordings were skipped
    assert not list((out / "parquet").glob("*.tmp-*"))
    _assert_identical(datasets.load_from_disk(str(out)), reference)


def test_resume_after_sigkill(manifest, reference, tmp_path):
    out = tmp_path / "dataset"
    script = textwrap.dedent(
        f"""
        import time
        from megfm_hf.data import MEGProcessor, build_dataset
        from megfm_hf.data import builder
        real = builder.process_recording_to_shard
        def slow(job):
            status = real(job)
            time.sleep(0.5)
            return status
        builder.process_recording_to_shard = slow
        build_dataset({str(manifest)!r}, {str(out)!r}, processor=MEGProcessor(**{PROCESSOR!r}),
                      secret={SECRET!r})
        """
    )
    env = {**os.environ, "MNE_LOGGING_LEVEL": "ERROR"}
    process = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.DEVNULL)
    status_dir = out / ".megfm-build" / "status"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if status_dir.is_dir() and len(list(status_dir.glob("*.json"))) >= 2:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the build finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done_before = len(list(status_dir.glob("*.json")))
    assert 2 <= done_before < 6
    assert not (out / "state.json").exists()

    result = build_dataset(manifest, out, processor=MEGProcessor(**PROCESSOR), secret=SECRET)
    assert result.n_recordings == 6 and not result.failures
    _assert_identical(datasets.load_from_disk(str(out)), reference)


def test_changed_settings_refuse_to_mix(manifest, tmp_path):
    out = tmp_path / "dataset"
    build_dataset(manifest, out, processor=MEGProcessor(**PROCESSOR), secret=SECRET)
    other = MEGProcessor(window_seconds=0.8, reject=None)
    with pytest.raises(ValueError, match="different settings"):
        build_dataset(manifest, out, processor=other, secret=SECRET)
    result = build_dataset(manifest, out, processor=other, secret=SECRET, overwrite=True)
    assert result.load().features["input_values"].shape == (None, 200)


def _statuses(out: Path) -> dict[str, float]:
    """Modification time of each recording's status file."""
    return {p.name: p.stat().st_mtime_ns for p in (out / ".megfm-build" / "status").iterdir()}


def test_changed_label_or_reader_kwargs_redo_only_that_recording(tmp_path):
    recordings = [
        write_raw(make_raw(duration=3.0, sfreq=500.0, seed=i), tmp_path / f"rec{i}_raw.fif")
        for i in range(2)
    ]

    def specs(label0, label1="patient"):
        return [
            RecordingSpec(str(recordings[0]), "s0", "1", "rest", label0, 0),
            RecordingSpec(str(recordings[1]), "s1", "1", "rest", label1, 1),
        ]

    out = tmp_path / "dataset"
    processor = MEGProcessor(**PROCESSOR)
    build_dataset(specs("control"), out, processor=processor, secret=SECRET)
    before = _statuses(out)
    result = build_dataset(specs("healthy"), out, processor=processor, secret=SECRET)
    assert sorted(set(result.load()["label"])) == ["healthy", "patient"]
    after = _statuses(out)
    assert sum(after[name] != before[name] for name in before) == 1

    # a reader argument changes what is read: every recording is redone
    result = build_dataset(
        specs("healthy"),
        out,
        processor=processor,
        secret=SECRET,
        reader_kwargs={"allow_maxshield": True},
    )
    again = _statuses(out)
    assert all(again[name] != after[name] for name in after)
    assert result.n_windows == 2 * 7
