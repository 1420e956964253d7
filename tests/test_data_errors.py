"""Bad input gets a specific error naming the file and the problem."""

from __future__ import annotations

import json

import mne
import numpy as np
import pytest

from megfm_hf.data import (
    EventNotFoundError,
    ManifestError,
    MEGProcessor,
    MissingLabelError,
    MixedLabelVocabularyError,
    NoMEGSensorsError,
    NonFiniteDataError,
    NoWindowsError,
    RecordingNotFoundError,
    RecordingTooShortError,
    SamplingRateError,
    UnreadableRecordingError,
    build_dataset,
    manifest_from_bids,
    read_manifest,
)
from megfm_hf.data.testing import make_raw, write_raw

PROCESSOR = dict(window_seconds=0.4, reject=None)


def _process(path, **kwargs):
    return MEGProcessor(**{**PROCESSOR, **kwargs}).process(path)


def test_missing_file(tmp_path):
    path = tmp_path / "absent_raw.fif"
    with pytest.raises(
        RecordingNotFoundError, match=r"absent_raw\.fif: file or folder does not exist"
    ):
        _process(path)


def test_unreadable_file(tmp_path):
    path = tmp_path / "garbage_raw.fif"
    path.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(UnreadableRecordingError, match=r"garbage_raw\.fif: cannot be read as fif"):
        _process(path)


def test_truncated_file(tmp_path):
    full = write_raw(make_raw(duration=6.0), tmp_path / "full_raw.fif")
    truncated = tmp_path / "truncated_raw.fif"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(UnreadableRecordingError, match=r"truncated_raw\.fif: .*truncated"):
        _process(truncated)


def test_eeg_only_file(tmp_path):
    path = write_raw(make_raw(kind="eeg"), tmp_path / "eeg_raw.fif")
    with pytest.raises(NoMEGSensorsError, match=r"eeg_raw\.fif: no MEG sensors found .*eeg"):
        _process(path)


def test_sampling_rate_too_low_for_band(tmp_path):
    path = write_raw(make_raw(sfreq=150.0, duration=4.0), tmp_path / "slow_raw.fif")
    with pytest.raises(SamplingRateError, match=r"slow_raw\.fif: sfreq=150 Hz .*h_freq=100 Hz"):
        _process(path)
    assert len(_process(path, h_freq=60.0)) == 10


def test_recording_shorter_than_one_window(tmp_path):
    path = write_raw(make_raw(duration=0.3), tmp_path / "short_raw.fif")
    with pytest.raises(RecordingTooShortError, match=r"short_raw\.fif: recording has 75 samples"):
        _process(path)


def test_nans_on_good_sensor(tmp_path):
    raw = make_raw(duration=2.0)
    data = raw.get_data()
    data[4, 300:310] = np.nan
    path = write_raw(mne.io.RawArray(data, raw.info, verbose="error"), tmp_path / "nan_raw.fif")
    with pytest.raises(
        NonFiniteDataError, match=r"nan_raw\.fif: 1 good MEG sensors .*'MEG0022' at 0\.600 s"
    ):
        _process(path)


def test_event_not_found(tmp_path):
    path = write_raw(make_raw(duration=3.0, event_samples=[600]), tmp_path / "ev_raw.fif")
    with pytest.raises(
        EventNotFoundError, match=r"ev_raw\.fif: none of the requested events \['button'\]"
    ):
        _process(path, event_id={"button": 32})


def test_all_windows_rejected(tmp_path):
    path = write_raw(make_raw(duration=2.0), tmp_path / "loud_raw.fif")
    with pytest.raises(NoWindowsError, match=r"loud_raw\.fif: all 5 windows were rejected"):
        _process(path, reject={"magnetometer": 1e-6})


def _write_manifest(path, rows, header="path\tsubject\tlabel"):
    path.write_text(header + "\n" + "\n".join("\t".join(r) for r in rows) + "\n")
    return path


def test_label_missing_for_a_subject(tmp_path):
    manifest = _write_manifest(
        tmp_path / "m.tsv",
        [("a.fif", "s1", "control"), ("b.fif", "s2", ""), ("c.fif", "s3", "n/a")],
    )
    with pytest.raises(
        MissingLabelError, match=r"m\.tsv: label missing for subject\(s\) \['s2', 's3'\]"
    ):
        read_manifest(manifest)


@pytest.mark.parametrize(
    ("labels", "message"),
    [(("control", "Control"), "differ only in case"), (("0", "patient"), "mix numbers")],
)
def test_mixed_label_vocabularies(tmp_path, labels, message):
    manifest = _write_manifest(
        tmp_path / "m.tsv", [("a.fif", "s1", labels[0]), ("b.fif", "s2", labels[1])]
    )
    with pytest.raises(MixedLabelVocabularyError, match=message):
        read_manifest(manifest)


def test_one_subject_with_two_labels(tmp_path):
    manifest = _write_manifest(
        tmp_path / "m.tsv", [("a.fif", "s1", "control"), ("b.fif", "s1", "patient")]
    )
    with pytest.raises(MixedLabelVocabularyError, match="more than one label"):
        read_manifest(manifest)


def test_manifest_without_required_column(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,subject\na.fif,s1\n")
    with pytest.raises(ManifestError, match=r"m\.csv: missing column\(s\) \['path'\]"):
        read_manifest(manifest)


def test_bids_participant_without_label(tmp_path):
    from mne_bids import BIDSPath, write_raw_bids

    root = tmp_path / "bids"
    for subject in ("01", "02"):
        fname = write_raw(make_raw(duration=2.0), tmp_path / f"{subject}_raw.fif")
        raw = mne.io.read_raw_fif(fname, verbose="error")
        write_raw_bids(
            raw, BIDSPath(subject=subject, task="rest", datatype="meg", root=root), verbose="error"
        )
    participants = root / "participants.tsv"
    lines = participants.read_text().splitlines()
    participants.write_text(
        "\n".join([lines[0] + "\tdiagnosis", lines[1] + "\tcontrol", lines[2] + "\tn/a"]) + "\n"
    )
    with pytest.raises(
        MissingLabelError, match=r"'diagnosis' has no value for subject\(s\) \['02'\]"
    ):
        manifest_from_bids(root, label_column="diagnosis")
    with pytest.raises(ManifestError, match="label column 'site' not found"):
        manifest_from_bids(root, label_column="site")
    assert [r.label for r in manifest_from_bids(root)] == ["", ""]  # no "group" column: unlabelled


def test_multi_file_build_reports_bad_files_and_builds_the_rest(tmp_path):
    good = write_raw(make_raw(duration=2.0), tmp_path / "good_raw.fif")
    eeg = write_raw(make_raw(kind="eeg"), tmp_path / "eeg_raw.fif")
    short = write_raw(make_raw(duration=0.2), tmp_path / "short_raw.fif")
    manifest = _write_manifest(
        tmp_path / "m.tsv",
        [
            (str(good), "s1"),
            (str(eeg), "s2"),
            (str(short), "s3"),
            (str(tmp_path / "gone.fif"), "s4"),
        ],
        header="path\tsubject",
    )
    out = tmp_path / "out"
    result = build_dataset(manifest, out, processor=MEGProcessor(**PROCESSOR))
    assert result.n_recordings == 1 and result.n_windows == 5
    reasons = {f["manifest_row"]: f["reason"] for f in result.failures}
    assert reasons == {1: "no-meg-sensors", 2: "too-short", 3: "not-found"}
    report = json.loads((out / "megfm_dataset.json").read_text())
    assert report["n_failed"] == 3
    # the report names manifest rows, never the files
    text = (out / "megfm_dataset.json").read_text()
    assert "eeg_raw" not in text and "short_raw" not in text and "gone.fif" not in text

    with pytest.raises(NoMEGSensorsError, match=r"eeg_raw\.fif"):
        build_dataset(
            manifest, tmp_path / "out2", processor=MEGProcessor(**PROCESSOR), fail_fast=True
        )


def test_no_recording_produces_windows(tmp_path):
    eeg = write_raw(make_raw(kind="eeg"), tmp_path / "eeg_raw.fif")
    manifest = _write_manifest(tmp_path / "m.tsv", [(str(eeg), "s1")], header="path\tsubject")
    with pytest.raises(RuntimeError, match="no recording produced windows .*no MEG sensors"):
        build_dataset(manifest, tmp_path / "out", processor=MEGProcessor(**PROCESSOR))
