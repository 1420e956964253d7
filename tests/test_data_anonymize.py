"""Identifiers of the source files never reach rows, metadata, logs or file names."""

from __future__ import annotations

import json
import logging

import mne
import pytest

from megfm_hf.data import MEGProcessor, anonymize, build_dataset, identifier_strings, read_recording
from megfm_hf.data.anonymize import check_no_identifiers
from megfm_hf.data.errors import PrivacyError

FILES = ["neuromag306/141027_cropped_90Hz_raw.fif", "ctf151-somatosensory/somMDYO-18av.ds"]


def _identifiers(info: mne.Info) -> set[str]:
    """Identifiers read from the source file's info (names, birthday, his_id, date, experimenter)."""
    found = set()
    subject_info = info.get("subject_info") or {}
    for key in ("first_name", "middle_name", "last_name", "his_id"):
        if subject_info.get(key):
            found.add(str(subject_info[key]))
    if subject_info.get("birthday"):
        birthday = subject_info["birthday"]
        found |= {birthday.isoformat(), birthday.strftime("%Y%m%d"), birthday.strftime("%d/%m/%Y")}
    if info.get("experimenter"):
        found.add(info["experimenter"])
    meas_date = info["meas_date"]
    found |= {meas_date.date().isoformat(), meas_date.strftime("%Y%m%d")}
    return found


def test_source_files_carry_identifiers(meg_data_dir):
    neuromag = mne.io.read_raw_fif(meg_data_dir / FILES[0], verbose="error").info
    ctf = mne.io.read_raw_ctf(meg_data_dir / FILES[1], verbose="error").info
    assert (
        neuromag["subject_info"]["birthday"] is not None and neuromag["subject_info"]["last_name"]
    )
    assert ctf["subject_info"]["his_id"]
    assert set(identifier_strings(ctf)) >= {ctf["subject_info"]["his_id"]}


def test_anonymize_clears_info(meg_data_dir):
    for rel in FILES:
        raw = read_recording(meg_data_dir / rel)
        if isinstance(raw, list):  # the averaged CTF dataset reads as one evoked response
            (raw,) = raw
        identifiers = _identifiers(raw.info)
        anonymize(raw)
        fields = [*(raw.info.get("subject_info") or {}).values(), raw.info["meas_date"]]
        fields += [
            raw.info.get(k) for k in ("experimenter", "description", "proj_name", "device_info")
        ]
        text = " ".join(str(f) for f in fields).lower()
        for identifier in identifiers:
            assert identifier.lower() not in text


def test_no_identifier_in_any_output_byte(meg_data_dir, tmp_path, caplog):
    identifiers = set()
    for rel in FILES:
        identifiers |= _identifiers(mne.io.read_raw(meg_data_dir / rel, verbose="error").info)
    assert "Mme Giroud" in identifiers or any("giroud" in i.lower() for i in identifiers)
    manifest = tmp_path / "manifest.tsv"
    manifest.write_text(
        "path\tsubject\tstate\n"
        + "".join(f"{meg_data_dir / rel}\tsub-{i:02d}\trest\n" for i, rel in enumerate(FILES))
    )
    out = tmp_path / "out"
    with caplog.at_level(logging.DEBUG):
        result = build_dataset(
            manifest,
            out,
            # tmin inside the averaged CTF dataset, which starts 0.05 s before the trigger
            processor=MEGProcessor(
                window_seconds=0.2, tmin=-0.04, l_freq=1.0, h_freq=40.0, reject=None
            ),
        )
    assert result.n_recordings == 2
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files) and any(p.suffix == ".arrow" for p in files)
    for path in files:
        content = path.read_bytes().lower()
        name = str(path.relative_to(out)).lower()
        for identifier in identifiers:
            needle = identifier.lower()
            assert needle.encode() not in content, f"identifier found in {path.name}"
            assert needle not in name
    log_text = caplog.text.lower()
    for identifier in identifiers:
        assert identifier.lower() not in log_text


def test_keep_meas_date_option(meg_data_dir):
    raw = read_recording(meg_data_dir / FILES[0])
    date = raw.info["meas_date"]
    anonymize(raw, keep_meas_date=True)
    assert raw.info["meas_date"] == date
    assert raw.info["subject_info"].get("last_name") in (None, "", "mne_anonymize")


def test_identifier_in_subject_column_is_refused(meg_data_dir, tmp_path):
    ctf = mne.io.read_raw_ctf(meg_data_dir / FILES[1], verbose="error").info
    his_id = ctf["subject_info"]["his_id"]
    with pytest.raises(PrivacyError):
        check_no_identifiers(f"subject={his_id}", identifier_strings(ctf), where="dataset rows")
    manifest = tmp_path / "manifest.tsv"
    manifest.write_text(f"path\tsubject\n{meg_data_dir / FILES[1]}\t{his_id}\n")
    with pytest.raises(RuntimeError, match="no recording produced windows"):
        build_dataset(
            manifest,
            tmp_path / "out",
            processor=MEGProcessor(window_seconds=0.2, h_freq=40.0, reject=None),
        )
    report = (tmp_path / "out" / ".megfm-build" / "status").glob("*.json")
    assert all(his_id.lower() not in p.read_text().lower() for p in report)


def test_dates_are_identifiers_in_every_common_spelling(meg_data_dir):
    info = read_recording(meg_data_dir / FILES[0]).info
    birthday = info["subject_info"]["birthday"]
    measured = info["meas_date"].date()
    identifiers = identifier_strings(info)
    for date in (birthday, measured):
        spellings = [
            date.strftime("%Y%m%d"),  # BIDS session labels: ses-20021203
            date.strftime("%d.%m.%Y"),
            date.strftime("%d/%m/%Y"),
        ]
        for text in (f"ses-{spellings[0]}", f"born {spellings[1]}", f"seen {spellings[2]}"):
            with pytest.raises(PrivacyError):
                check_no_identifiers(text, identifiers, where="dataset rows")
    # with keep_meas_date the date may stay; the birthday may not
    kept = identifier_strings(info, include_meas_date=False)
    check_no_identifiers(f"ses-{measured:%Y%m%d}", kept, where="dataset rows")
    with pytest.raises(PrivacyError):
        check_no_identifiers(f"ses-{birthday:%Y%m%d}", kept, where="dataset rows")


def test_measurement_date_as_session_label_is_refused(meg_data_dir, tmp_path):
    path = meg_data_dir / "neuromag306/sample_audvis_trunc_raw_sss.fif"
    session = read_recording(path).info["meas_date"].strftime("%Y%m%d")
    manifest = tmp_path / "manifest.tsv"
    manifest.write_text(f"path\tsubject\tsession\n{path}\ts01\t{session}\n")
    with pytest.raises(RuntimeError, match="no recording produced windows"):
        build_dataset(
            manifest,
            tmp_path / "out",
            processor=MEGProcessor(window_seconds=0.2, h_freq=40.0, reject=None),
            secret="t",
        )
    (status,) = (tmp_path / "out" / ".megfm-build" / "status").glob("*.json")
    assert json.loads(status.read_text())["reason"] == "privacy"
