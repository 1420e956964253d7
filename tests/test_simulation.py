"""Tests of the simulated MEG cohort, checked against its own ground truth in sensor space."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import mne
import mne_bids
import numpy as np
import pytest
from scipy.signal import welch

from megfm_hf.cli import main as megfm_main
from megfm_hf.data.manifest import manifest_from_bids
from megfm_hf.simulation import (
    EVENT_ID,
    GROUND_TRUTH_RELPATH,
    CohortConfig,
    load_geometry,
    make_builtin_helmet,
    read_sensor_info,
    simulate_cohort,
)
from megfm_hf.simulation import cli as simulation_cli
from megfm_hf.simulation import cohort as cohort_module

SEED = 7


def _fif(root: Path, participant_id: str, task: str) -> Path:
    return root / participant_id / "meg" / f"{participant_id}_task-{task}_meg.fif"


def _read(root: Path, participant_id: str, task: str) -> mne.io.Raw:
    return mne.io.read_raw_fif(_fif(root, participant_id, task), preload=True, verbose="error")


def _truth(root: Path) -> dict:
    return json.loads((root / GROUND_TRUTH_RELPATH).read_text())


def _head_x(info: mne.Info, ch_names: list[str]) -> np.ndarray:
    """x (left-right) of sensors in head coordinates, m."""
    trans = info["dev_head_t"]["trans"]
    positions = np.array([info["chs"][info["ch_names"].index(n)]["loc"][:3] for n in ch_names])
    return (positions @ trans[:3, :3].T + trans[:3, 3])[:, 0]


def _epochs(raw: mne.io.Raw, l_freq: float = 1.0, h_freq: float = 30.0) -> mne.Epochs:
    events = mne.find_events(raw, stim_channel="STI 014", verbose="error")
    filtered = raw.copy().filter(l_freq, h_freq, picks="meg", verbose="error")
    return mne.Epochs(
        filtered, events, tmin=-0.1, tmax=0.4, baseline=(-0.1, 0.0), picks="meg",
        preload=True, verbose="error",
    )  # fmt: skip


def _top_channels(evoked: mne.Evoked, ch_type: str, tmin: float, tmax: float, k: int = 10):
    picked = evoked.copy().pick(ch_type).crop(tmin, tmax)
    order = np.argsort(-np.abs(picked.data).max(axis=1))[:k]
    return [picked.ch_names[i] for i in order]


def _measured_habituation(raw: mne.io.Raw, window: tuple[float, float]) -> float:
    """Fraction of amplitude lost over the run: single-trial amplitudes by template matching.

    Each trial's gradiometer response in ``window`` is projected on the average of the other
    trials of its condition; a
    line fitted to amplitude against the position in the run gives ``1 - h * position``.
    """
    epochs = _epochs(raw)
    window_mask = (epochs.times >= window[0]) & (epochs.times <= window[1])
    amplitudes = np.zeros(len(epochs))
    for code in np.unique(epochs.events[:, 2]):
        chosen = epochs.events[:, 2] == code
        data = epochs.get_data(picks="grad")[chosen][:, :, window_mask]
        # leave-one-out templates: a trial's own noise must not inflate its projection
        templates = (data.sum(axis=0) - data) / (len(data) - 1)
        amplitudes[chosen] = (data * templates).sum(axis=(1, 2)) / (templates**2).sum(axis=(1, 2))
    position = np.arange(len(amplitudes)) / (len(amplitudes) - 1)
    slope, intercept = np.polyfit(position, amplitudes, 1)
    return float(-slope / intercept)


def _subject_habituation(root: Path, participant_id: str) -> float:
    auditory = _measured_habituation(_read(root, participant_id, "auditory"), (0.08, 0.12))
    somato = _measured_habituation(_read(root, participant_id, "somatosensory"), (0.015, 0.05))
    return (auditory + somato) / 2.0


def _alpha_peak(data: np.ndarray, sfreq: float) -> float:
    """Centroid of the alpha peak above the aperiodic (1/f) spectrum, Hz.

    A power law fitted to the Welch spectrum on both sides of the alpha band (3-6 and 15-25 Hz)
    is subtracted; the centroid of what remains in 6-14 Hz is the peak frequency.
    """
    freqs, psd = welch(data, fs=sfreq, nperseg=int(2 * sfreq), nfft=int(16 * sfreq))
    psd = psd.mean(axis=0)
    flanks = ((freqs >= 3.0) & (freqs < 6.0)) | ((freqs > 15.0) & (freqs < 25.0))
    fit = np.polyfit(np.log(freqs[flanks]), np.log(psd[flanks]), 1)
    band = (freqs >= 6.0) & (freqs <= 14.0)
    excess = np.clip(psd[band] - np.exp(np.polyval(fit, np.log(freqs[band]))), 0.0, None)
    return float((freqs[band] * excess).sum() / excess.sum())


def _group_mean(values: dict[str, float], truth: dict, group: str) -> float:
    return float(
        np.mean([values[s["participant_id"]] for s in truth["subjects"] if s["group"] == group])
    )


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory) -> dict[str, Path]:
    """A planted-effect cohort and a null cohort drawn from the same seed (4 subjects, 30 s)."""
    base = tmp_path_factory.mktemp("cohorts")
    roots = {"effect": base / "effect", "null": base / "null"}
    common = dict(n_subjects=4, seed=SEED, duration=30.0, progress=False)
    simulate_cohort(roots["effect"], effect_size=1.0, **common)
    simulate_cohort(roots["null"], effect_size=0.0, **common)
    return roots


@pytest.fixture(scope="module")
def habituation(cohorts) -> dict[str, dict[str, float]]:
    return {
        name: {s["participant_id"]: _subject_habituation(root, s["participant_id"])
               for s in _truth(root)["subjects"]}
        for name, root in cohorts.items()
    }  # fmt: skip


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("small") / "bids"
    simulate_cohort(root, n_subjects=2, seed=SEED, duration=10.0, progress=False)
    return root


def _data_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_gives_identical_files(small_cohort, tmp_path):
    again = tmp_path / "again"
    simulate_cohort(again, n_subjects=2, seed=SEED, duration=10.0, progress=False)
    first, second = _data_files(small_cohort), _data_files(again)
    assert sorted(first) == sorted(second)
    assert any(name.endswith("_meg.fif") for name in first)
    for name in first:
        assert first[name] == second[name], f"{name} differs between two runs with one seed"


def test_different_seeds_give_different_data(small_cohort, tmp_path):
    other = tmp_path / "other"
    simulate_cohort(other, n_subjects=2, seed=SEED + 1, duration=10.0, progress=False)
    for task in ("rest", "auditory", "somatosensory"):
        a = _read(small_cohort, "sub-01", task).get_data(picks="meg")
        b = _read(other, "sub-01", task).get_data(picks="meg")
        assert a.shape == b.shape
        # data are in tesla: compare relative to the signal, not to numpy's default atol
        assert np.abs(a - b).mean() > 0.5 * np.abs(a).mean()


def test_bids_layout_reads_back_with_mne_bids(small_cohort):
    participants = (small_cohort / "participants.tsv").read_text().splitlines()
    assert participants[0].split("\t") == ["participant_id", "group"]
    assert sorted(line.split("\t")[1] for line in participants[1:]) == ["control", "migraine"]
    for task in ("rest", "auditory", "somatosensory"):
        path = mne_bids.BIDSPath(subject="01", task=task, datatype="meg", root=small_cohort)
        raw = mne_bids.read_raw_bids(path, verbose="error")
        assert len(mne.pick_types(raw.info, meg=True)) == 306
        assert raw.info["sfreq"] == 250.0
        assert raw.info["meas_date"] is None
        descriptions = set(raw.annotations.description)
        if task == "rest":
            assert not descriptions
        else:
            assert descriptions == {f"{task}/left", f"{task}/right"}
            events = mne.find_events(raw, stim_channel="STI 014", verbose="error")
            codes = {EVENT_ID[f"{task}/left"], EVENT_ID[f"{task}/right"]}
            assert set(events[:, 2]) == codes
            intervals = np.diff(events[:, 0]) / raw.info["sfreq"]
            assert 0.8 < intervals.min() and intervals.max() < 1.2 and intervals.std() > 0.02


def test_ground_truth_has_conditions_and_subjects(small_cohort):
    truth = _truth(small_cohort)
    assert set(truth["conditions"]) == set(EVENT_ID) | {"rest/alpha"}
    for name, condition in truth["conditions"].items():
        assert condition["dipoles"], name
        for dipole in condition["dipoles"]:
            assert np.isclose(np.linalg.norm(dipole["orientation"]), 1.0)
        assert len(condition["top_sensors"]["mag"]) == len(condition["top_sensors"]["grad"]) == 10
    ids = [s["participant_id"] for s in truth["subjects"]]
    assert ids == ["sub-01", "sub-02"]
    assert truth["config"]["geometry"] == {
        "source": "builtin",
        "system": "built-in Neuromag-like helmet",
        "n_sensors": {"grad": 204, "mag": 102},
        "coil_types": {"VV_MAG_T3": 102, "VV_PLANAR_T1": 204},
    }
    for subject in truth["subjects"]:
        assert {"group", "alpha_peak_hz", "habituation", "auditory_moment_nAm"} <= set(subject)


def test_auditory_field_peaks_over_temporal_sensors(cohorts):
    root = cohorts["effect"]
    truth = _truth(root)
    raw = _read(root, "sub-01", "auditory")
    epochs = _epochs(raw)
    sensor_x = _head_x(raw.info, raw.ch_names[:306])
    lateral = np.quantile(np.abs(sensor_x), 0.6)  # the outer 40 % of the helmet, left or right
    sides = set()
    for side in ("left", "right"):
        evoked = epochs[f"{EVENT_ID[f'auditory/{side}']}"].average()
        measured = _top_channels(evoked, "grad", 0.08, 0.12)
        expected = truth["conditions"][f"auditory/{side}"]["top_sensors"]["grad"]
        assert len(set(measured) & set(expected)) >= 4, (side, measured, expected)
        x = _head_x(raw.info, measured)
        assert np.all(np.abs(x) > lateral), (side, x)
        both = _top_channels(evoked, "grad", 0.08, 0.12, k=30)
        sides |= set(np.sign(_head_x(raw.info, both)))
    assert sides == {-1.0, 1.0}


def test_auditory_response_is_larger_contralaterally(cohorts):
    root = cohorts["effect"]
    ratios = []
    for subject in _truth(root)["subjects"]:
        raw = _read(root, subject["participant_id"], "auditory")
        epochs = _epochs(raw)
        grads = mne.pick_types(raw.info, meg="grad")
        x = _head_x(raw.info, [raw.ch_names[i] for i in grads])
        for side, contra_sign in (("left", 1.0), ("right", -1.0)):
            evoked = epochs[str(EVENT_ID[f"auditory/{side}"])].average().crop(0.08, 0.12)
            power = (evoked.get_data(picks="grad") ** 2).mean(axis=1)
            ratios.append(
                np.sqrt(
                    power[np.sign(x) == contra_sign].max() / power[np.sign(x) != contra_sign].max()
                )
            )
    # planted: contralateral N100m about 1.25 times the ipsilateral one
    assert np.mean(ratios) > 1.05, ratios


def test_somatosensory_field_peaks_over_contralateral_central_sensors(cohorts):
    root = cohorts["effect"]
    truth = _truth(root)
    raw = _read(root, "sub-02", "somatosensory")
    epochs = _epochs(raw, 1.0, 80.0)
    for side, expected_sign in (("left", 1.0), ("right", -1.0)):
        evoked = epochs[f"{EVENT_ID[f'somatosensory/{side}']}"].average()
        measured = _top_channels(evoked, "grad", 0.015, 0.06)
        expected = truth["conditions"][f"somatosensory/{side}"]["top_sensors"]["grad"]
        assert len(set(measured) & set(expected)) >= 4, (side, measured, expected)
        x = _head_x(raw.info, measured)
        assert np.mean(np.sign(x) == expected_sign) >= 0.8, (side, x)
        for dipole in truth["conditions"][f"somatosensory/{side}"]["dipoles"]:
            assert np.sign(dipole["position_m"][0]) == expected_sign


def test_evoked_amplitudes_are_realistic(cohorts):
    raw = _read(cohorts["effect"], "sub-01", "auditory")
    evoked = _epochs(raw).average()
    peak_mag = np.abs(evoked.copy().pick("mag").crop(0.08, 0.12).data).max()
    assert 50e-15 < peak_mag < 1000e-15  # hundreds of fT
    noise_mag = raw.get_data(picks="mag").std()
    assert 30e-15 < noise_mag < 1000e-15


def test_alpha_peak_matches_planted_value(cohorts):
    root = cohorts["effect"]
    truth = _truth(root)
    posterior = truth["conditions"]["rest/alpha"]["top_sensors"]["mag"]
    measured = {}
    for subject in truth["subjects"]:
        raw = _read(root, subject["participant_id"], "rest")
        origin_y = truth["head_model"]["origin_m"][1]
        trans = raw.info["dev_head_t"]["trans"]
        ys = [(trans[:3, :3] @ raw.info["chs"][raw.ch_names.index(n)]["loc"][:3])[1] + trans[1, 3]
              for n in posterior]  # fmt: skip
        assert np.mean(np.array(ys) < origin_y) >= 0.8  # posterior sensors
        measured[subject["participant_id"]] = _alpha_peak(raw.get_data(picks=posterior), 250.0)
        assert abs(measured[subject["participant_id"]] - subject["alpha_peak_hz"]) < 0.3, subject
    planted = {s["participant_id"]: s["alpha_peak_hz"] for s in truth["subjects"]}
    measured_diff = _group_mean(measured, truth, "control") - _group_mean(
        measured, truth, "migraine"
    )
    planted_diff = _group_mean(planted, truth, "control") - _group_mean(planted, truth, "migraine")
    assert abs(measured_diff - planted_diff) < 0.2


def test_habituation_difference_is_measurable_and_absent_in_null(cohorts, habituation):
    effect, null = _truth(cohorts["effect"]), _truth(cohorts["null"])
    for truth, name in ((effect, "effect"), (null, "null")):
        errors = [
            abs(habituation[name][s["participant_id"]] - s["habituation"])
            for s in truth["subjects"]
        ]
        assert np.mean(errors) < 0.2, (name, errors)
    # the null cohort plants no group difference ...
    null_parameters = null["group_effect"]["parameters"]["habituation"]
    assert null_parameters["control_mean"] == null_parameters["migraine_mean"]
    effect_parameters = effect["group_effect"]["parameters"]["habituation"]
    planted_shift = effect_parameters["control_mean"] - effect_parameters["migraine_mean"]
    assert planted_shift > 0.3
    # ... and, since both cohorts share every random draw, the measured difference between the
    # cohorts isolates the planted effect: patients lose their habituation, controls keep it
    patient_changes = []
    for subject in effect["subjects"]:
        pid = subject["participant_id"]
        change = habituation["null"][pid] - habituation["effect"][pid]
        if subject["group"] == "migraine":
            assert change > 0.15, (pid, change)
            patient_changes.append(change)
        else:
            assert abs(change) < 1e-6, (pid, change)
    assert abs(np.mean(patient_changes) - planted_shift) < 0.15, patient_changes
    effect_gap = _group_mean(habituation["effect"], effect, "control") - _group_mean(
        habituation["effect"], effect, "migraine"
    )
    null_gap = _group_mean(habituation["null"], null, "control") - _group_mean(
        habituation["null"], null, "migraine"
    )
    assert effect_gap - null_gap > 0.2


def _written_text(root: Path) -> dict[str, str]:
    """Every JSON and TSV file the simulation wrote, by path relative to ``root``."""
    return {
        str(p.relative_to(root)): p.read_text(encoding="utf-8")
        for p in sorted(root.rglob("*"))
        if p.suffix in (".json", ".tsv")
    }


@pytest.mark.parametrize(
    ("relative", "system", "coil", "n_sensors"),
    [
        ("ctf275/testdata_ctf_short_discontinuous.ds", "CTF", "CTF_GRAD", 273),
        # its info carries a person's name (his_id): neither it nor the file name may leak
        ("ctf151-somatosensory/somMDYO-18av.ds", "CTF", "CTF_GRAD", 151),
        ("kit157/test.sqd", "KIT/Yokogawa/Ricoh", "KIT_GRAD", 157),
    ],
)
def test_geometry_from_ctf_and_kit_files(meg_data_dir, tmp_path, relative, system, coil, n_sensors):
    source = meg_data_dir / relative
    root = tmp_path / "bids"
    result = simulate_cohort(root, n_subjects=1, duration=8.0, geometry=source, progress=False)
    raw = _read(root, "sub-01", "somatosensory")
    assert len(mne.pick_types(raw.info, meg=True, ref_meg=False)) == n_sensors
    truth = json.loads(result.ground_truth_path.read_text())
    # the sensor array is described by its system and sensors, not by the file it came from
    assert truth["config"]["geometry"] == {
        "source": "recording",
        "system": system,
        "n_sensors": {"mag": n_sensors},
        "coil_types": {coil: n_sensors},
    }
    # no device recorded the data: the sidecars name none, only the simulated system
    sidecars = sorted((root / "sub-01" / "meg").glob("*_meg.json"))
    assert len(sidecars) == 3  # one per task
    for sidecar in sidecars:
        equipment = json.loads(sidecar.read_text())
        assert equipment["Manufacturer"] == "n/a"
        assert equipment["ManufacturersModelName"] == f"simulated: {system}"
    stem = source.name.split(".")[0]  # e.g. somMDYO-18av; a bare "test" would match any text
    forbidden = [source.name, str(source.parent)] + ([stem] if len(stem) > 4 else [])
    written = _written_text(root)
    assert "derivatives/ground_truth.json" in written and "participants.tsv" in written
    for name, text in written.items():
        for word in forbidden:
            assert word.lower() not in text.lower(), (word, name)
    reader = mne.io.read_raw_ctf if source.is_dir() else mne.io.read_raw_kit
    his_id = (reader(source, verbose="error").info["subject_info"] or {}).get("his_id")
    if his_id and not his_id.startswith("Anonymized"):
        for path in root.rglob("*"):
            if path.is_file():
                assert his_id.encode() not in path.read_bytes(), path
    assert "mag" in truth["conditions"]["auditory/left"]["top_sensors"]
    epochs = _epochs(raw, 1.0, 80.0)
    evoked = epochs[str(EVENT_ID["somatosensory/right"])].average()
    top = _top_channels(evoked, "mag", 0.015, 0.06)
    assert np.mean(_head_x(raw.info, top) < 0) >= 0.6, relative


def test_unreadable_geometry_file_raises(tmp_path):
    damaged = tmp_path / "damaged_raw.fif"
    damaged.write_text("not a FIF file")
    with pytest.raises(ValueError, match="damaged_raw.fif.*cannot be read as a FIF file"):
        read_sensor_info(damaged)


def test_builtin_helmet_forward_ready():
    info = make_builtin_helmet()
    assert len(info["ch_names"]) == 306
    assert info.get_channel_types().count("mag") == 102
    coil_types = {ch["coil_type"] for ch in info["chs"]}
    assert coil_types == {mne.io.constants.FIFF.FIFFV_COIL_VV_MAG_T3,
                          mne.io.constants.FIFF.FIFFV_COIL_VV_PLANAR_T1}  # fmt: skip
    geometry = load_geometry(None)
    distances = np.linalg.norm(geometry.sensor_positions() - geometry.origin, axis=1)
    assert np.all(distances > geometry.head_radius + 0.01)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_subjects": 0}, "n_subjects"),
        ({"n_subjects": -3}, "n_subjects"),
        ({"duration": 0.0}, "duration"),
        ({"duration": -10.0}, "duration"),
        ({"sfreq": 50.0}, "sfreq"),
        ({"sfreq": float("nan")}, "sfreq"),
        ({"effect_size": -1.0}, "effect_size"),
        ({"seed": -1}, "seed"),
        ({"isi": 0.2}, "isi"),
    ],
)
def test_bad_options_raise(options, message):
    with pytest.raises(ValueError, match=message) as error:
        CohortConfig(**options)
    assert repr(next(iter(options.values())))[:3] in str(error.value)


def test_unknown_geometry_file_raises(tmp_path):
    missing = tmp_path / "nowhere.fif"
    with pytest.raises(FileNotFoundError, match="nowhere.fif"):
        simulate_cohort(tmp_path / "out", n_subjects=1, duration=8.0, geometry=missing)
    unsupported = tmp_path / "sensors.txt"
    unsupported.write_text("not a recording")
    with pytest.raises(ValueError, match="unsupported format"):
        read_sensor_info(unsupported)


def test_geometry_without_meg_sensors_raises(tmp_path):
    info = mne.create_info(["EEG 001", "EEG 002"], 250.0, "eeg")
    path = tmp_path / "eeg_only_raw.fif"
    mne.io.RawArray(np.zeros((2, 250)), info, verbose="error").save(path, verbose="error")
    with pytest.raises(ValueError, match="no MEG sensors"):
        read_sensor_info(path)


def test_existing_output_needs_overwrite(small_cohort):
    with pytest.raises(FileExistsError, match="overwrite"):
        simulate_cohort(small_cohort, n_subjects=2, seed=SEED, duration=10.0, progress=False)


def _subject_folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("sub-"))


def test_overwrite_replaces_a_larger_cohort(tmp_path):
    root = tmp_path / "bids"
    common = dict(seed=SEED, duration=6.0, progress=False)
    simulate_cohort(root, n_subjects=4, **common)
    assert _subject_folders(root) == ["sub-01", "sub-02", "sub-03", "sub-04"]
    result = simulate_cohort(root, n_subjects=2, overwrite=True, **common)
    assert _subject_folders(root) == ["sub-01", "sub-02"]
    # nothing of the earlier cohort and no staging folder stays
    assert sorted(p.name for p in root.iterdir()) == [
        "README", "dataset_description.json", "derivatives", "participants.json",
        "participants.tsv", "sub-01", "sub-02",
    ]  # fmt: skip
    assert [p.name for p in (root / "derivatives").iterdir()] == ["ground_truth.json"]
    assert all(path.is_file() and root in path.parents for path in result.files)
    assert len(result.files) == 6
    truth = _truth(root)
    assert [s["participant_id"] for s in truth["subjects"]] == ["sub-01", "sub-02"]
    participants = (root / "participants.tsv").read_text().splitlines()[1:]
    assert [line.split("\t")[0] for line in participants] == ["sub-01", "sub-02"]
    manifest = manifest_from_bids(root)
    assert sorted({spec.subject for spec in manifest}) == ["01", "02"]
    assert len(manifest) == 6
    assert {spec.label for spec in manifest} == {"control", "migraine"}
    # the same cohort written fresh is the same, byte for byte
    fresh = tmp_path / "fresh"
    simulate_cohort(fresh, n_subjects=2, **common)
    assert _data_files(root) == _data_files(fresh)


def test_failed_overwrite_keeps_the_previous_cohort(small_cohort, tmp_path, monkeypatch):
    root = tmp_path / "bids"
    shutil.copytree(small_cohort, root)
    before = _data_files(root)

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(cohort_module, "_write_participants", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        simulate_cohort(root, n_subjects=1, duration=6.0, overwrite=True, progress=False)
    assert _data_files(root) == before
    assert sorted(p.name for p in root.iterdir()) == sorted(p.name for p in small_cohort.iterdir())


def test_overwrite_never_deletes_what_the_simulation_did_not_write(small_cohort, tmp_path):
    # a folder that holds no simulated cohort
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    (other / "sub-01").mkdir()
    with pytest.raises(FileExistsError, match=f"{other.name}.*holds no derivatives/ground_truth"):
        simulate_cohort(other, n_subjects=1, duration=6.0, overwrite=True, progress=False)
    assert (other / "notes.txt").read_text() == "keep me"
    # a simulated cohort to which files were added: they are named and nothing is deleted
    root = tmp_path / "bids"
    shutil.copytree(small_cohort, root)
    (root / "code").mkdir()
    (root / "code" / "analysis.py").write_text("print('mine')")
    (root / "sub-01" / "anat").mkdir()
    (root / "sub-01" / "anat" / "sub-01_T1w.nii").write_bytes(b"mri")
    before = _data_files(root)
    with pytest.raises(FileExistsError, match=r"bids.*'code'.*'sub-01/anat/sub-01_T1w.nii'"):
        simulate_cohort(root, n_subjects=1, duration=6.0, overwrite=True, progress=False)
    assert _data_files(root) == before


def test_command_line(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    simulation_cli.configure_parser(parser)
    output = tmp_path / "cli"
    args = parser.parse_args(
        ["--output", str(output), "--subjects", "2", "--seed", "3", "--effect-size", "0",
         "--duration", "6", "--sfreq", "200", "--no-progress"]
    )  # fmt: skip
    assert simulation_cli.run(args) == 0
    assert "Wrote 2 subjects" in capsys.readouterr().out
    truth = _truth(output)
    assert truth["config"]["effect_size"] == 0.0 and truth["config"]["sfreq_hz"] == 200.0
    assert _fif(output, "sub-02", "rest").is_file()


def test_command_line_reports_bad_input_without_traceback(tmp_path, capsys):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    damaged = tmp_path / "damaged_raw.fif"
    damaged.write_text("not a FIF file")
    common = ["--duration", "6", "--no-progress"]
    cases = [
        (["--output", str(tmp_path / "a"), "--seed", "-1"], "seed must be a non-negative"),
        (["--output", str(occupied)], f"output {str(occupied)!r} is not empty"),
        (["--output", str(occupied), "--overwrite"], "holds no derivatives/ground_truth.json"),
        (["--output", str(tmp_path / "b"), "--geometry", str(tmp_path / "nowhere.fif")],
         "nowhere.fif' does not exist"),
        (["--output", str(tmp_path / "c"), "--geometry", str(damaged)],
         "cannot be read as a FIF file"),
    ]  # fmt: skip
    for arguments, message in cases:
        assert megfm_main(["simulate", *arguments, *common]) == 1, arguments
        captured = capsys.readouterr()
        assert captured.err.startswith("megfm simulate: error: "), captured.err
        assert message in captured.err, (arguments, captured.err)
        assert "Traceback" not in captured.err and not captured.out
    assert (occupied / "notes.txt").read_text() == "keep me"
    assert not any((tmp_path / name).exists() for name in "abc")
