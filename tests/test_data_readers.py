"""Every shared recording reads, keeps its MEG sensors with sane geometry, and yields windows."""

from __future__ import annotations

import mne
import numpy as np
import pytest

from megfm_hf.data import (
    MEGProcessor,
    UnknownSensorTypeError,
    UnreadableRecordingError,
    detect_format,
    read_recording,
    sensor_array,
    sensor_type_code,
)
from megfm_hf.data.preprocessing import boundary_samples, preprocess_raw, resample_by_piece
from megfm_hf.data.readers import CTF_CLOCK_CHANNEL, mark_trial_boundaries
from megfm_hf.data.testing import make_raw
from megfm_hf.data.windowing import annotation_onsets
from megfm_hf.modeling.configuration_megfm import SENSOR_TYPES

MAG, PLANAR, AXIAL, OPM = range(4)

# path, format, expected {type code: count}, coordinate frame, evoked conditions (None: raw)
RECORDINGS = [
    ("neuromag306/sample_audvis_trunc_raw_sss.fif", "fif", {MAG: 102, PLANAR: 204}, "head", None),
    ("neuromag306/141027_cropped_90Hz_raw.fif", "fif", {MAG: 102, PLANAR: 204}, "meg", None),
    ("neuromag122/neuromag122_test_file-raw.fif", "fif", {PLANAR: 122}, "meg", None),
    ("ctf275-fif/test_ctf_comp_raw.fif", "fif", {AXIAL: 274}, "head", None),
    ("ctf275/testdata_ctf_short_discontinuous.ds", "ctf", {AXIAL: 273}, "head", None),
    ("ctf151-somatosensory/somMDYO-18av.ds", "ctf", {AXIAL: 151}, "head", 1),  # an average
    ("kit160/Example_RICOH160-1_10020-export_anonymyze.con", "kit", {AXIAL: 160}, "head", None),
    # read without marker coils: MNE sets an identity dev_head_t, so positions are device ones
    ("kit125/MQKIT_125_2sec.con", "kit", {AXIAL: 125}, "meg", None),
    ("kit157/test.sqd", "kit", {AXIAL: 157}, "head", None),
    ("neuromag306/test_elekta-ave.fif", "evoked", {MAG: 102, PLANAR: 204}, "meg", 7),
    ("neuromag306-audvis-evoked/test-ave.fif.gz", "evoked", {MAG: 102, PLANAR: 204}, "head", 4),
]

# 0.2 s windows (2 patches at 250 Hz) fit every recording, including the 0.5 s CTF file and the
# -0.05..0.3 s TRIUX averages; h_freq=40 Hz fits the 90 Hz empty-room file
PROCESSOR = dict(window_seconds=0.2, tmin=-0.05, l_freq=1.0, h_freq=40.0, reject=None)


@pytest.fixture(scope="module")
def processor() -> MEGProcessor:
    return MEGProcessor(**PROCESSOR)


@pytest.mark.parametrize(("relpath", "fmt", "counts", "frame", "n_conditions"), RECORDINGS)
def test_recording_reads_and_windows(
    meg_data_dir, processor, relpath, fmt, counts, frame, n_conditions
):
    path = meg_data_dir / relpath
    assert detect_format(path) == fmt
    processed = processor.process(path)
    sensors = processed.sensors
    n_sensors = sum(counts.values())

    windows = processed.windows()
    assert windows.dtype == np.float32
    assert windows.shape == (len(processed), n_sensors, 50)
    assert windows.shape[-1] % processor.patch_length == 0
    assert np.isfinite(windows).all()
    assert dict(zip(*np.unique(sensors.types, return_counts=True), strict=True)) == counts
    assert sensors.coordinate_frame == frame
    # no reference sensors: names of CTF/KIT references never appear
    raw_info = _info(path)
    refs = set(np.array(raw_info["ch_names"])[mne.pick_types(raw_info, meg=False, ref_meg=True)])
    assert not refs & set(sensors.ch_names)

    positions = sensors.positions
    assert positions.shape == (n_sensors, 6) and positions.dtype == np.float32
    assert np.linalg.norm(positions[:, :3], axis=1).max() < 0.25
    np.testing.assert_allclose(np.linalg.norm(positions[:, 3:], axis=1), 1.0, atol=1e-5)
    # good sensors carry signal of order one in model units (pT, 100 fT/cm)
    good = processed.sensor_mask
    assert good.sum() >= 0.9 * n_sensors
    assert 1e-3 < np.median(np.abs(windows[:, good])) < 1e3
    assert (windows[:, ~good] == 0).all()

    if n_conditions is None:
        assert processed.segments is None
        # consecutive 0.2 s windows, less those crossing a trial boundary (multi-trial CTF)
        steps = np.diff(processed.plan.onsets_s) / 0.2
        np.testing.assert_allclose(steps, np.round(steps), atol=1e-6)
        assert int(np.round(steps).sum()) - len(steps) == processed.plan.n_dropped_by_annotation
        assert set(processed.plan.events) == {""}
    else:
        assert len(processed) == n_conditions
        assert all(processed.plan.events)
        np.testing.assert_allclose(processed.plan.onsets_s, -0.05, atol=1 / 250)


def _info(path):
    if path.name.endswith(("-ave.fif", "-ave.fif.gz")):
        return mne.read_evokeds(path, verbose="error")[0].info
    return mne.io.read_raw(path, verbose="error").info


def test_planar_gradiometer_pairs_have_different_orientations(meg_data_dir, processor):
    sensors = processor.process(
        meg_data_dir / "neuromag306/sample_audvis_trunc_raw_sss.fif"
    ).sensors
    planar = np.flatnonzero(sensors.types == PLANAR)
    first, second = planar[0::2], planar[1::2]
    np.testing.assert_allclose(sensors.positions[first, :3], sensors.positions[second, :3])
    dots = np.abs(np.sum(sensors.positions[first, 3:] * sensors.positions[second, 3:], axis=1))
    assert dots.max() < 0.1  # orthogonal gradient directions
    mags = np.flatnonzero(sensors.types == MAG)
    # magnetometer normals point outwards, away from the head centre
    outward = np.sum(sensors.positions[mags, :3] * sensors.positions[mags, 3:], axis=1)
    assert (outward > 0).mean() > 0.9


def test_head_coordinates_apply_dev_head_t(meg_data_dir):
    path = meg_data_dir / "kit157/test.sqd"
    raw = read_recording(path)  # marker, digitiser and head-shape files beside it are used
    trans = raw.info["dev_head_t"]["trans"]
    assert not np.allclose(trans, np.eye(4))
    info = mne.pick_info(raw.info, mne.pick_types(raw.info, meg=True, ref_meg=False))
    sensors = sensor_array(info)
    device = np.array([ch["loc"][:3] for ch in info["chs"]])
    np.testing.assert_allclose(
        sensors.positions[:, :3], device @ trans[:3, :3].T + trans[:3, 3], atol=1e-6
    )
    plain = mne.io.read_raw_kit(path, verbose="error")
    assert np.allclose(plain.info["dev_head_t"]["trans"], np.eye(4))


def test_coil_type_mapping_covers_vendors():
    from mne.io.constants import FIFF

    cases = {
        FIFF.FIFFV_COIL_VV_MAG_T3: "magnetometer",
        FIFF.FIFFV_COIL_VV_PLANAR_T1: "planar_gradiometer",
        FIFF.FIFFV_COIL_NM_122: "planar_gradiometer",
        FIFF.FIFFV_COIL_CTF_GRAD: "axial_gradiometer",
        FIFF.FIFFV_COIL_CTF_GRAD + (3 << 16): "axial_gradiometer",  # compensation grade 3
        FIFF.FIFFV_COIL_KIT_GRAD: "axial_gradiometer",
        FIFF.FIFFV_COIL_MAGNES_GRAD: "axial_gradiometer",
        FIFF.FIFFV_COIL_MAGNES_MAG: "magnetometer",
        FIFF.FIFFV_COIL_QUSPIN_ZFOPM_MAG2: "opm",
        FIFF.FIFFV_COIL_FIELDLINE_OPM_MAG_GEN1: "opm",
    }
    for coil, name in cases.items():
        assert SENSOR_TYPES[sensor_type_code({"ch_name": "X", "coil_type": coil})] == name


def test_unknown_coil_type_names_the_channel():
    raw = make_raw(n_sites=4)
    raw.info["chs"][2]["coil_type"] = 4242
    with pytest.raises(UnknownSensorTypeError, match=r"MEG0013.*4242"):
        MEGProcessor(window_seconds=1.0).process(raw, path="synthetic.fif")


def test_opm_array():
    raw = make_raw(kind="opm", n_sites=10)
    inputs = MEGProcessor(window_seconds=1.0, reject=None)(raw, return_tensors="np")
    assert inputs["input_values"].shape == (4, 10, 250)
    assert (inputs["sensor_types"] == OPM).all()


def test_identity_dev_head_t_means_device_coordinates(meg_data_dir):
    # without marker coils MNE sets an identity transform: the head position is unknown
    plain = read_recording(meg_data_dir / "kit125/MQKIT_125_2sec.con")
    np.testing.assert_allclose(plain.info["dev_head_t"]["trans"], np.eye(4))
    info = mne.pick_info(plain.info, mne.pick_types(plain.info, meg=True, ref_meg=False))
    assert sensor_array(info).coordinate_frame == "meg"
    # with marker coils and digitisation (found beside the file) the transform is real
    coregistered = read_recording(meg_data_dir / "kit157/test.sqd")
    assert not np.allclose(coregistered.info["dev_head_t"]["trans"], np.eye(4))
    info = mne.pick_info(
        coregistered.info, mne.pick_types(coregistered.info, meg=True, ref_meg=False)
    )
    assert sensor_array(info).coordinate_frame == "head"


# -- recordings in pieces (trials, concatenations): resampled piece by piece ----------------

CTF_TRIALS = "ctf275/testdata_ctf_short_discontinuous.ds"  # two trials of 1201 samples, 1200 Hz
# no high-pass: removing each sensor's mean over the whole recording would differ from the pieces
PIECEWISE = dict(sfreq=250.0, l_freq=None, h_freq=40.0, line_freq=None, detect_bads=False)


def _preprocessed(raw: mne.io.BaseRaw) -> np.ndarray:
    return preprocess_raw(raw, scalings=MEGProcessor().scalings, **PIECEWISE).data


def test_ctf_trials_are_resampled_one_by_one(meg_data_dir):
    path = meg_data_dir / CTF_TRIALS
    whole = _preprocessed(read_recording(path))
    # each trial read and preprocessed on its own
    raw = mne.io.read_raw_ctf(path, verbose="error")
    trial = raw.n_times // 2
    first = _preprocessed(raw.copy().crop(0, (trial - 1) / raw.info["sfreq"]))
    second = _preprocessed(raw.copy().crop(trial / raw.info["sfreq"], None))
    np.testing.assert_allclose(whole, np.concatenate([first, second], axis=1), rtol=0, atol=1e-6)
    # read as one piece, resampling rings across the jump between the trials
    one_piece = _preprocessed(raw)
    assert np.abs(one_piece[:, first.shape[1] :] - second).max() > 1e-3 * np.abs(second).max()


def test_saved_concatenation_is_resampled_piece_by_piece(meg_data_dir, tmp_path):
    raw = mne.io.read_raw_fif(
        meg_data_dir / "neuromag306/sample_audvis_trunc_raw_sss.fif", verbose="error"
    )
    half = raw.n_times // 2 / raw.info["sfreq"]
    pieces = [raw.copy().crop(0, half, include_tmax=False), raw.copy().crop(half, None)]
    saved = tmp_path / "joined_raw.fif"
    joined = mne.concatenate_raws([p.copy() for p in pieces], verbose="error")
    joined.annotations.append(joined.first_time + 0.1, 0.2, "BAD_blink")
    joined.save(saved, verbose="error")
    # read back, MNE sees one piece; its boundary is still annotated
    recording = read_recording(saved)
    assert len(recording.filenames) == 1
    np.testing.assert_array_equal(boundary_samples(recording), [pieces[0].n_times])
    separately = np.concatenate([_preprocessed(p) for p in pieces], axis=1)
    np.testing.assert_allclose(_preprocessed(recording), separately, rtol=0, atol=1e-6)

    resampled = resample_by_piece(recording.load_data(verbose="error"), 150.0)
    assert resampled.info["sfreq"] == 150.0
    # the boundary marked once, where it was; the other annotations kept
    assert sorted(resampled.annotations.description) == [
        "BAD boundary",
        "BAD_blink",
        "EDGE boundary",
    ]
    np.testing.assert_allclose(
        np.sort(annotation_onsets(resampled)), np.sort(annotation_onsets(recording)), atol=1 / 150
    )


def test_recording_in_one_piece_is_resampled_in_place(meg_data_dir):
    path = meg_data_dir / "kit160/Example_RICOH160-1_10020-export_anonymyze.con"
    raw = read_recording(path).load_data(verbose="error")
    assert len(boundary_samples(raw)) == 0
    assert resample_by_piece(raw, 250.0) is raw and raw.info["sfreq"] == 250.0


def test_ctf_datasets_in_a_bids_folder_keep_trials_and_averages(meg_data_dir, tmp_path):
    mne_bids = pytest.importorskip("mne_bids")
    read = {}
    for subject, name in [("01", CTF_TRIALS), ("02", "ctf151-somatosensory/somMDYO-18av.ds")]:
        raw = mne.io.read_raw_ctf(meg_data_dir / name, verbose="error")
        bids_path = mne_bids.BIDSPath(subject=subject, task="rest", root=tmp_path, datatype="meg")
        mne_bids.write_raw_bids(raw, bids_path, verbose="error")
        path = bids_path.copy().update(suffix="meg", extension=".ds").fpath
        assert detect_format(path) == "bids"
        read[subject] = read_recording(path)
    trials = read["01"]
    assert sorted(trials.annotations.description) == ["BAD boundary", "EDGE boundary"]
    np.testing.assert_allclose(
        _preprocessed(trials), _preprocessed(read_recording(meg_data_dir / CTF_TRIALS)), atol=1e-6
    )
    (average,) = read["02"]
    (expected,) = read_recording(meg_data_dir / "ctf151-somatosensory/somMDYO-18av.ds")
    assert isinstance(average, mne.Evoked) and average.nave == expected.nave > 1
    np.testing.assert_array_equal(average.data, expected.data)


def test_bti_layout_is_detected_and_a_broken_one_named(tmp_path):
    folder = tmp_path / "subject" / "run"
    folder.mkdir(parents=True)
    for name in ("c,rfDC", "config", "hs_file"):
        (folder / name).write_bytes(b"\x00" * 64)
    assert detect_format(folder) == "bti"
    assert detect_format(folder / "c,rfDC") == "bti"
    with pytest.raises(UnreadableRecordingError, match=r"run.*cannot be read as bti MEG data"):
        read_recording(folder)


def _ctf_like(clock: np.ndarray | None) -> mne.io.RawArray:
    """Three trials of 100 samples at 100 Hz, with a system clock channel when ``clock``."""
    names, types = ["MLC11"], ["mag"]
    data = [np.random.default_rng(0).standard_normal(300) * 1e-13]
    if clock is not None:
        names, types, data = names + [CTF_CLOCK_CHANNEL], types + ["misc"], data + [clock]
    return mne.io.RawArray(np.array(data), mne.create_info(names, 100.0, types), verbose="error")


def test_only_gaps_between_ctf_trials_are_marked(caplog):
    # continuous acquisition, written in blocks: the clock runs on across trials
    steady = 5000.0 + np.arange(300) / 100.0
    assert len(mark_trial_boundaries(_ctf_like(steady), 100).annotations) == 0
    # epoched acquisition: 7 s missing before the third trial
    gapped = steady + 7.0 * (np.arange(300) >= 200)
    raw = mark_trial_boundaries(_ctf_like(gapped), 100)
    assert sorted(raw.annotations.description) == ["BAD boundary", "EDGE boundary"]
    np.testing.assert_allclose(raw.annotations.onset, 2.0)
    # no clock: continuous, as MNE reads it, and the user is told
    with caplog.at_level("WARNING", logger="megfm_hf.data.readers"):
        assert len(mark_trial_boundaries(_ctf_like(None), 100).annotations) == 0
    assert "3 trials of 100 samples and no system clock channel" in caplog.text
