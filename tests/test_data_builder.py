"""The dataset builder: Arrow, Parquet and streaming round trips, BIDS, CLI, Hub push, recipes."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
from pathlib import Path

import datasets
import mne
import numpy as np
import pytest

from megfm_hf.cli import main as megfm_main
from megfm_hf.data import (
    MEGProcessor,
    MEGWindowsBuilder,
    build_dataset,
    build_recipe,
    fetch_recipe,
    push_dataset_to_hub,
    read_manifest,
)
from megfm_hf.data import builder as builder_module
from megfm_hf.data.testing import make_raw, write_raw

PROCESSOR = dict(window_seconds=0.2, tmin=-0.05, l_freq=1.0, h_freq=40.0, reject=None)
SECRET = b"test-secret"


def _manifest(tmp: Path, meg_data_dir: Path) -> Path:
    rows = [
        ("neuromag306/sample_audvis_trunc_raw_sss.fif", "s01", "rest", "control"),
        ("kit157/test.sqd", "s02", "rest", "patient"),
        ("neuromag306-audvis-evoked/test-ave.fif.gz", "s03", "auditory", "control"),
        ("neuromag122/neuromag122_test_file-raw.fif", "s04", "rest", "patient"),
    ]
    path = tmp / "manifest.tsv"
    lines = ["path\tsubject\tsession\tstate\tlabel"]
    lines += [
        f"{meg_data_dir / rel}\t{sub}\t1\t{state}\t{label}" for rel, sub, state, label in rows
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory, meg_data_dir):
    tmp = tmp_path_factory.mktemp("built")
    manifest = _manifest(tmp, meg_data_dir)
    out = tmp / "dataset"
    result = build_dataset(manifest, out, processor=MEGProcessor(**PROCESSOR), secret=SECRET)
    return manifest, out, result


def _rows_by_key(rows):
    keyed = {}
    for row in rows:
        key = (row["recording"], round(float(row["onset_s"]), 6), row["event"])
        assert key not in keyed, f"duplicate window {key}"
        keyed[key] = row
    return keyed


def _assert_same_rows(a, b):
    a, b = _rows_by_key(a), _rows_by_key(b)
    assert a.keys() == b.keys()
    for key, row in a.items():
        other = b[key]
        for name in ("input_values", "sensor_positions", "sensor_types", "sensor_mask"):
            np.testing.assert_array_equal(
                np.asarray(row[name]), np.asarray(other[name]), err_msg=name
            )
        for name in ("subject", "session", "state", "label", "sfreq"):
            assert row[name] == other[name]


def test_folder_layout_and_report(built):
    _, out, result = built
    assert result.n_recordings == 4 and not result.failures
    assert (out / "state.json").is_file() and (out / "dataset_info.json").is_file()
    assert (out / "preprocessor_config.json").is_file() and (out / "README.md").is_file()
    shards = sorted((out / "parquet").glob("train-*.parquet"))
    assert len(shards) == 4
    report = json.loads((out / "megfm_dataset.json").read_text())
    assert report["n_windows"] == result.n_windows
    assert report["label_names"] == ["control", "patient"]
    assert sorted(r["n_sensors"] for r in report["recordings"]) == [122, 157, 306, 306]
    assert MEGProcessor.from_pretrained(out).to_dict() == MEGProcessor(**PROCESSOR).to_dict()


def test_rows_schema_and_sensor_count_heterogeneity(built):
    _, out, result = built
    ds = datasets.load_from_disk(str(out))
    assert len(ds) == result.n_windows
    features = ds.features
    assert features["input_values"] == datasets.Array2D(shape=(None, 50), dtype="float32")
    assert features["sensor_positions"] == datasets.Array2D(shape=(None, 6), dtype="float32")
    counts = set()
    for row in ds.with_format("numpy"):
        n = row["input_values"].shape[0]
        counts.add(n)
        assert row["input_values"].dtype == np.float32 and row["input_values"].shape == (n, 50)
        assert row["sensor_positions"].shape == (n, 6)
        assert row["sensor_types"].dtype == np.int64 and row["sensor_types"].shape == (n,)
        assert row["sensor_mask"].dtype == np.bool_ and row["sensor_mask"].shape == (n,)
        assert row["sfreq"] == 250.0
        assert len(row["recording"]) == 16 and "/" not in row["recording"]
    assert counts == {122, 157, 306}
    auditory = ds.filter(lambda r: r["state"] == "auditory")
    assert sorted(auditory["event"]) == sorted(
        ["Left Auditory", "Right Auditory", "Left visual", "Right visual"]
    )


def test_load_from_disk_parquet_and_streaming_are_identical(built):
    _, out, _ = built
    arrow = datasets.load_from_disk(str(out)).with_format("numpy")
    files = sorted(str(p) for p in (out / "parquet").glob("*.parquet"))
    parquet = datasets.load_dataset("parquet", data_files=files, split="train").with_format("numpy")
    streamed = datasets.load_dataset("parquet", data_files=files, split="train", streaming=True)
    streamed_rows = list(streamed)  # read to the end (pyarrow pitfall with abandoned streams)
    assert len(arrow) == len(parquet) == len(streamed_rows)
    _assert_same_rows(list(arrow), list(parquet))
    _assert_same_rows(list(arrow), streamed_rows)


def test_rows_equal_processor_output(built, meg_data_dir):
    """Dataset building and inference share one code path."""
    _, out, _ = built
    ds = datasets.load_from_disk(str(out)).with_format("numpy")
    kit = ds.filter(lambda r: r["subject"] == "s02")
    inputs = MEGProcessor(**PROCESSOR)(meg_data_dir / "kit157/test.sqd", return_tensors="np")
    np.testing.assert_array_equal(np.stack(list(kit["input_values"])), inputs["input_values"])
    np.testing.assert_array_equal(kit[0]["sensor_positions"], inputs["sensor_positions"][0])


def test_rebuild_is_deterministic(built, tmp_path):
    manifest, out, _ = built
    again = build_dataset(
        read_manifest(manifest),
        tmp_path / "again",
        processor=MEGProcessor(**PROCESSOR),
        secret=SECRET,
    )
    _assert_same_rows(
        list(datasets.load_from_disk(str(out)).with_format("numpy")),
        list(again.load().with_format("numpy")),
    )
    assert datasets.load_from_disk(str(out))["recording"] == again.load()["recording"]


def test_builder_alone_processes_missing_shards(tmp_path):
    raw_path = write_raw(make_raw(duration=2.0), tmp_path / "rec_raw.fif")
    processor = MEGProcessor(window_seconds=0.4, reject=None)
    job = {
        "spec": {
            "path": str(raw_path),
            "subject": "a",
            "session": "",
            "state": "rest",
            "label": "",
            "row": 0,
        },
        "hash": "0123456789abcdef",
        "processor": processor.to_dict(),
        "shard": str(tmp_path / "train-0123456789abcdef.parquet"),
        "status": str(tmp_path / "0123456789abcdef.json"),
        "event_id": None,
        "rest_states": ("rest",),
        "batch_size": 64,
        "reader_kwargs": {},
        "fail_fast": True,
    }
    builder = MEGWindowsBuilder(
        cache_dir=str(tmp_path / "cache"), jobs=(job,), window_samples=processor.window_samples
    )
    builder.download_and_prepare(output_dir=str(tmp_path / "prepared"))
    ds = builder.as_dataset(split="train")
    assert len(ds) == 5 and Path(job["shard"]).is_file()


def _write_bids(root: Path, tmp: Path) -> None:
    from mne_bids import BIDSPath, write_raw_bids

    for i, (subject, task) in enumerate([("01", "rest"), ("01", "auditory"), ("02", "auditory")]):
        events = [] if task == "rest" else [400, 900, 1400]
        raw = make_raw(
            duration=4.0,
            sfreq=500.0,
            event_samples=events,
            event_codes=[1, 2, 1][: len(events)],
            seed=i,
        )
        fname = write_raw(raw, tmp / f"src{i}_raw.fif")
        raw = mne.io.read_raw_fif(fname, verbose="error")
        kwargs = {}
        if events:
            kwargs = dict(
                events=mne.find_events(raw, verbose="error"),
                event_id={"tone/left": 1, "tone/right": 2},
            )
        bids_path = BIDSPath(subject=subject, session="01", task=task, datatype="meg", root=root)
        write_raw_bids(raw, bids_path, overwrite=True, verbose="error", **kwargs)
    participants = root / "participants.tsv"
    lines = participants.read_text().splitlines()
    groups = {"sub-01": "control", "sub-02": "migraine"}
    lines = [lines[0] + "\tgroup"] + [
        line + "\t" + groups[line.split("\t")[0]] for line in lines[1:]
    ]
    participants.write_text("\n".join(lines) + "\n")


def test_bids_build_with_events_and_labels(tmp_path):
    root = tmp_path / "bids"
    _write_bids(root, tmp_path)
    result = build_dataset(
        None,
        tmp_path / "out",
        bids_root=root,
        processor=MEGProcessor(window_seconds=0.4, tmin=-0.1, reject=None),
        event_id=["tone/left", "tone/right"],
    )
    ds = result.load()
    assert not result.failures
    rest = ds.filter(lambda r: r["state"] == "rest")
    auditory = ds.filter(lambda r: r["state"] == "auditory")
    assert len(rest) == 10 and set(rest["event"]) == {""}
    assert len(auditory) == 6
    assert auditory["event"][:3] == ["tone/left", "tone/right", "tone/left"]
    np.testing.assert_allclose(auditory["onset_s"][:3], [0.7, 1.7, 2.7], atol=1 / 250)
    assert dict(zip(ds["subject"], ds["label"], strict=True)) == {"01": "control", "02": "migraine"}
    assert set(ds["session"]) == {"01"}


def test_events_of_the_processor_are_used_when_none_are_given(tmp_path):
    root = tmp_path / "bids"
    _write_bids(root, tmp_path)
    processor = MEGProcessor(
        window_seconds=0.4, tmin=-0.1, reject=None, event_id=["tone/left", "tone/right"]
    )
    ds = build_dataset(None, tmp_path / "out", bids_root=root, processor=processor).load()
    auditory = ds.filter(lambda r: r["state"] == "auditory")
    assert len(auditory) == 6 and set(auditory["event"]) == {"tone/left", "tone/right"}


def test_cli_refuses_preprocessing_flags_beside_a_saved_processor(tmp_path, capsys):
    MEGProcessor(window_seconds=0.4).save_pretrained(tmp_path / "processor")
    code = megfm_main(
        ["build-dataset", "--manifest", str(tmp_path / "m.csv"), "--output", str(tmp_path / "o"),
         "--processor", str(tmp_path / "processor"), "--sfreq", "200", "--tmin", "-0.1"]
    )  # fmt: skip
    assert code == 2
    assert "--sfreq, --tmin would be ignored" in capsys.readouterr().err


def test_cli_build_dataset(tmp_path, meg_data_dir, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "path,subject,state\n"
        f"{meg_data_dir / 'kit125/MQKIT_125_2sec.con'},a,rest\n"
        f"{meg_data_dir / 'kit160/Example_RICOH160-1_10020-export_anonymyze.con'},b,rest\n"
        f"{tmp_path / 'missing.fif'},c,rest\n"
    )
    out = tmp_path / "out"
    code = megfm_main(
        [
            "build-dataset",
            "--manifest",
            str(manifest),
            "--output",
            str(out),
            "--window-seconds",
            "0.4",
            "--overlap",
            "0.5",
            "--h-freq",
            "40",
            "--no-reject",
            "--num-proc",
            "2",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0
    assert "manifest row 3: not-found" in captured.err
    ds = datasets.load_from_disk(str(out))
    # 0.4 s windows with 50% overlap: 9 in the 2 s recording, 4 in the 1 s one
    assert ds["subject"].count("a") == 9 and ds["subject"].count("b") == 4
    assert MEGProcessor.from_pretrained(out).overlap == 0.5


class _RecordingApi:
    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def create_commit(self, repo_id, operations, **kwargs):
        self.calls.append(("create_commit", repo_id, operations, kwargs))
        return "commit"


def test_push_to_hub_uploads_shards_and_card_only(built):
    _, out, _ = built
    api = _RecordingApi()
    assert push_dataset_to_hub(out, "user/meg-windows", api=api) == "commit"
    (_, repo, repo_kwargs), (_, _, operations, commit_kwargs) = api.calls
    assert (
        repo == "user/meg-windows"
        and repo_kwargs["repo_type"] == "dataset"
        and repo_kwargs["private"]
    )
    assert commit_kwargs["repo_type"] == "dataset"
    paths = sorted(op.path_in_repo for op in operations)
    shards = sorted(p.name for p in (out / "parquet").glob("*.parquet"))
    assert paths == sorted(
        ["README.md", "preprocessor_config.json", "megfm_dataset.json"]
        + [f"data/{s}" for s in shards]
    )
    assert not any("megfm-build" in p or "secret" in p for p in paths)
    card = (out / "README.md").read_text()
    assert "path: data/*.parquet" in card


def test_push_to_hub_real_client_offline(built, monkeypatch):
    """The real HfApi code path runs up to the network call, which offline mode refuses."""
    import huggingface_hub

    _, out, _ = built
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(Exception, match="(?i)offline"):
        push_dataset_to_hub(out, "user/meg-windows", api=huggingface_hub.HfApi(token="hf_fake"))


def test_recipes_against_local_folders(tmp_path, meg_data_dir):
    with pytest.raises(FileNotFoundError, match="download=False"):
        fetch_recipe("sample", path=tmp_path, download=False)

    sample_raw = tmp_path / "MNE-sample-data" / "MEG" / "sample" / "sample_audvis_raw.fif"
    write_raw(
        make_raw(duration=5.0, event_samples=[500, 1000, 1500, 2000], event_codes=[1, 2, 3, 4]),
        sample_raw,
    )
    processor = MEGProcessor(window_seconds=0.4, tmin=-0.1, reject=None)
    result = build_recipe(
        "sample", tmp_path / "sample-out", path=tmp_path, download=False, processor=processor
    )
    ds = result.load()
    assert ds["event"] == ["auditory/left", "auditory/right", "visual/left", "visual/right"]
    assert set(ds["subject"]) == {"sample"}

    bst = tmp_path / "MNE-brainstorm-data" / "bst_resting"
    with pytest.raises(PermissionError, match="accept_license"):
        fetch_recipe("brainstorm_resting", path=tmp_path, download=False)
    shutil.copytree(
        meg_data_dir / "ctf275/testdata_ctf_short_discontinuous.ds",
        bst / "subj002_spontaneous_20111102_01_AUX.ds",
    )
    recordings, event_id = fetch_recipe(
        "brainstorm_resting",
        path=tmp_path,
        download=False,
        accept_license=True,
        manifest=tmp_path / "bst.tsv",
    )
    assert event_id is None and [r.state for r in recordings] == ["rest"]
    assert read_manifest(tmp_path / "bst.tsv")[0].path == recordings[0].path

    somato = tmp_path / "MNE-somato-data"
    _write_bids(somato, tmp_path)
    recordings, event_id = fetch_recipe("somato", path=tmp_path, download=False)
    assert event_id == {"somatosensory": 1} and len(recordings) == 3


def test_secret_key_is_private_from_the_moment_it_exists(tmp_path, monkeypatch):
    monkeypatch.delenv("MEGFM_DATASET_SECRET", raising=False)
    modes = []
    real_fsync = os.fsync

    def record_mode(fd):
        # the content is written by now; nobody else may read it before the rename
        modes.append(stat.S_IMODE(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", record_mode)
    previous = os.umask(0)  # the most permissive umask a user can have
    try:
        secret = builder_module._load_secret(tmp_path, None)
    finally:
        os.umask(previous)
    key_file = tmp_path / "secret.key"
    assert modes == [0o600]
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert bytes.fromhex(key_file.read_text()) == secret
    assert [p.name for p in tmp_path.iterdir()] == ["secret.key"]  # no temporary left


def test_mixed_coordinate_frames_warn_and_line_freq_is_recorded(tmp_path, meg_data_dir, caplog):
    # KIT file without marker coils: identity transform, device coordinates; 50 Hz hum
    kit = meg_data_dir / "kit125/MQKIT_125_2sec.con"
    # a Vectorview-like recording with a real head position and 60 Hz hum, no info["line_freq"]
    raw = make_raw(duration=4.0, sfreq=500.0, line_freq=None)
    data = raw.get_data()
    data[:-1] += 5e-12 * np.sin(2 * np.pi * 60.0 * raw.times)
    raw = mne.io.RawArray(data, raw.info, verbose="error")
    trans = np.eye(4)
    trans[:3, 3] = [0.0, 0.01, 0.04]
    raw.info["dev_head_t"] = mne.transforms.Transform("meg", "head", trans)
    vectorview = write_raw(raw, tmp_path / "vv_raw.fif")
    manifest = tmp_path / "manifest.tsv"
    manifest.write_text(f"path\tsubject\n{kit}\ts01\n{vectorview}\ts02\n")
    processor = MEGProcessor(window_seconds=0.4, l_freq=1.0, h_freq=100.0, reject=None)
    with caplog.at_level(logging.WARNING, logger="megfm_hf.data.builder"):
        build_dataset(manifest, tmp_path / "out", processor=processor, secret=SECRET)
    warnings = [r.getMessage() for r in caplog.records if "coordinate frames" in r.getMessage()]
    report = json.loads((tmp_path / "out" / "megfm_dataset.json").read_text())
    recordings = sorted(report["recordings"], key=lambda r: r["manifest_row"])
    assert len(warnings) == 1
    assert f"head: row 2 (recording {recordings[1]['recording']})" in warnings[0]
    assert f"meg: row 1 (recording {recordings[0]['recording']})" in warnings[0]
    assert str(tmp_path) not in warnings[0] and "MQKIT" not in warnings[0]
    assert [r["coordinate_frame"] for r in recordings] == ["meg", "head"]
    assert [r["line_freq"] for r in recordings] == [50.0, 60.0]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "50 Hz in 1 of 2 recordings, 60 Hz in 1 of 2 recordings" in card
