"""MEGProcessor: preprocessing parameters, units, bad sensors, save/load, model inputs."""

from __future__ import annotations

import json
import logging

import mne
import numpy as np
import pytest
import torch
from transformers import BatchFeature

from megfm_hf import MEGConfig
from megfm_hf.data import MEGDataError, MEGProcessor, build_dataset, read_recording
from megfm_hf.data.manifest import RecordingSpec
from megfm_hf.data.preprocessing import DEFAULT_FLAT_THRESHOLDS, averaged_flat_thresholds
from megfm_hf.data.testing import make_raw, write_raw


def test_save_and_load_round_trip(tmp_path):
    processor = MEGProcessor(
        sfreq=200.0,
        patch_length=20,
        l_freq=1.0,
        h_freq=45.0,
        line_freq=60.0,
        window_seconds=2.0,
        overlap=0.25,
        tmin=-0.1,
        event_id={"tone": 1},
        scalings={"magnetometer": 2e12},
        reject={"magnetometer": 5.0},
    )
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["sfreq"] == 200.0 and saved["scalings"]["magnetometer"] == 2e12
    loaded = MEGProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    raw = make_raw(duration=4.0, sfreq=500.0)
    a = processor(raw, mode="fixed", return_tensors="np")
    b = loaded(raw, mode="fixed", return_tensors="np")
    np.testing.assert_array_equal(a["input_values"], b["input_values"])


def test_from_model_config_matches_rate_and_patch_length():
    config = MEGConfig(sampling_rate=200.0, patch_length=20)
    processor = MEGProcessor.from_model_config(config, window_seconds=1.0)
    assert processor.sfreq == 200.0 and processor.patch_length == 20
    processor.check_model_config(config)
    with pytest.raises(ValueError, match="does not match"):
        MEGProcessor().check_model_config(config)


def test_h_freq_is_capped_below_nyquist():
    processor = MEGProcessor(sfreq=100.0, h_freq=100.0, window_seconds=1.0)
    assert processor.h_freq == pytest.approx(40.0)


@pytest.mark.parametrize("return_tensors", ["pt", "np"])
def test_call_returns_batch_feature(return_tensors):
    raw = make_raw(n_sites=8, duration=4.0)
    inputs = MEGProcessor(window_seconds=1.0)(raw, return_tensors=return_tensors)
    assert isinstance(inputs, BatchFeature)
    kind = torch.Tensor if return_tensors == "pt" else np.ndarray
    assert all(isinstance(inputs[k], kind) for k in inputs)
    assert tuple(inputs["input_values"].shape) == (4, 24, 250)
    assert tuple(inputs["sensor_positions"].shape) == (4, 24, 6)
    assert inputs["input_values"].dtype in (torch.float32, np.float32)
    assert inputs["sensor_types"].dtype in (torch.int64, np.int64)
    assert inputs["sensor_mask"].dtype in (torch.bool, np.bool_)


def test_call_pads_recordings_with_different_sensor_counts():
    small, large = make_raw(n_sites=4, duration=2.0), make_raw(n_sites=6, duration=2.0)
    inputs = MEGProcessor(window_seconds=1.0)([small, large], return_tensors="np")
    assert inputs["input_values"].shape == (4, 18, 250)
    assert not inputs["sensor_mask"][:2, 12:].any() and inputs["sensor_mask"][2:].all()
    assert (inputs["input_values"][:2, 12:] == 0).all()


def test_physical_units():
    """A 1 pT / 1e-11 T/m sine becomes amplitude 1 (pT) / 1 (100 fT/cm)."""
    raw = make_raw(n_sites=4, duration=6.0, noise=0.0)
    times = raw.times
    data = raw.get_data()
    sine = np.sin(2 * np.pi * 10.0 * times)
    types = raw.get_channel_types()
    for i, ch_type in enumerate(types):
        if ch_type == "mag":
            data[i] = 1e-12 * sine
        elif ch_type == "grad":
            data[i] = 1e-11 * sine
    raw = mne.io.RawArray(data, raw.info, verbose="error")
    processed = MEGProcessor(window_seconds=2.0, reject=None, detect_bads=False).process(raw)
    windows = processed.windows()[1]  # the middle window, away from filter edges
    amplitude = np.abs(windows).max(axis=-1)
    np.testing.assert_allclose(amplitude, 1.0, atol=0.05)


def test_robust_scaling_brings_any_calibration_to_order_one():
    raw = make_raw(n_sites=12, duration=4.0, noise=3e-11)  # 100x noisier than usual
    physical = MEGProcessor(window_seconds=1.0, reject=None).process(raw).windows()
    robust = (
        MEGProcessor(window_seconds=1.0, reject=None, scaling_mode="robust").process(raw).windows()
    )
    assert np.median(np.abs(physical)) > 5
    assert 0.2 < np.median(np.abs(robust)) < 2


def test_bad_sensors_are_masked_not_dropped():
    raw = make_raw(n_sites=10, duration=3.0)
    data = raw.get_data()
    data[3] = 0.0  # a flat magnetometer
    data[7] *= 1e3  # a noisy gradiometer
    raw = mne.io.RawArray(data, raw.info, verbose="error")
    raw.info["bads"] = [raw.ch_names[5]]
    processed = MEGProcessor(window_seconds=1.0, reject=None).process(raw)
    assert processed.sensors.n_sensors == 30
    assert np.flatnonzero(~processed.sensor_mask).tolist() == [3, 5, 7]
    assert (processed.windows()[:, [3, 5, 7]] == 0).all()
    kept = MEGProcessor(window_seconds=1.0, reject=None, detect_bads=False).process(raw)
    assert np.flatnonzero(~kept.sensor_mask).tolist() == [5]


def test_nan_on_bad_sensor_is_tolerated():
    raw = make_raw(n_sites=4, duration=2.0)
    data = raw.get_data()
    data[2, 100:200] = np.nan
    raw = mne.io.RawArray(data, raw.info, verbose="error")
    raw.info["bads"] = [raw.ch_names[2]]
    processed = MEGProcessor(window_seconds=1.0, reject=None).process(raw)
    assert np.isfinite(processed.windows()).all()


def test_notch_removes_line_noise():
    raw = make_raw(n_sites=4, duration=8.0, noise=1e-14, line_freq=60.0)
    data = raw.get_data()
    data[:-1] += 1e-12 * np.sin(2 * np.pi * 60.0 * raw.times)
    raw = mne.io.RawArray(data, raw.info, verbose="error")
    with_notch = MEGProcessor(window_seconds=4.0, reject=None).process(raw)
    without = MEGProcessor(window_seconds=4.0, reject=None, notch=False).process(raw)
    mags = with_notch.sensors.types == 0
    residual = np.abs(with_notch.windows()[:, mags, 250:-250]).mean()
    assert residual < 0.1 * np.abs(without.windows()[:, mags, 250:-250]).mean()


def test_epochs_input():
    raw = make_raw(duration=6.0, event_samples=[1000, 2000], event_codes=[1, 2])
    events = mne.find_events(raw, verbose="error")
    epochs = mne.Epochs(
        raw, events, {"a": 1, "b": 2}, tmin=-0.2, tmax=0.6, baseline=None, verbose="error"
    )
    processed = MEGProcessor(window_seconds=0.4, tmin=-0.1, reject=None).process(epochs)
    assert processed.plan.events == ["a", "b"]
    assert processed.windows().shape == (2, 36, 100)
    np.testing.assert_allclose(processed.plan.onsets_s, -0.1, atol=1 / 250)


def _raw_with_line_noise(line_freq, *, info_line_freq=None, seed=0):
    """Sensor noise plus power-line hum at ``line_freq`` (none when ``None``) of 20x its level."""
    raw = make_raw(n_sites=8, duration=10.0, sfreq=500.0, line_freq=info_line_freq, seed=seed)
    if line_freq is not None:
        data = raw.get_data()
        scale = np.where(np.array(raw.get_channel_types()) == "grad", 100.0, 1.0)[:-1, None]
        data[:-1] += 2e-12 * scale * np.sin(2 * np.pi * line_freq * raw.times + 0.3)
        raw = mne.io.RawArray(data, raw.info, verbose="error")
    return raw


def _line_amplitude(processed, line_freq):
    """Amplitude of the ``line_freq`` component of the magnetometers, in pT."""
    windows = processed.windows()[:, processed.sensors.types == 0]
    spectrum = np.abs(np.fft.rfft(windows, axis=-1)) * 2 / windows.shape[-1]
    freqs = np.fft.rfftfreq(windows.shape[-1], 1 / processed.preprocessed.sfreq)
    return spectrum[..., np.argmin(np.abs(freqs - line_freq))].mean()


@pytest.mark.parametrize("line_freq", [50.0, 60.0])
def test_line_freq_is_detected_when_info_lacks_it(line_freq, caplog):
    raw = _raw_with_line_noise(line_freq)
    processor = MEGProcessor(window_seconds=2.0, reject=None)
    with caplog.at_level(logging.INFO, logger="megfm_hf.data.preprocessing"):
        processed = processor.process(raw, path="sub-01_meg.fif")
    assert processed.preprocessed.line_freq == line_freq
    assert f"sub-01_meg.fif: info['line_freq'] is not set; notch at {line_freq:g} Hz" in caplog.text
    unfiltered = MEGProcessor(window_seconds=2.0, reject=None, notch=False).process(raw)
    assert _line_amplitude(processed, line_freq) < 0.05 * _line_amplitude(unfiltered, line_freq)


@pytest.mark.parametrize(
    ("relpath", "expected"),
    [
        ("kit125/MQKIT_125_2sec.con", 50.0),  # Macquarie University, Sydney
        ("kit160/Example_RICOH160-1_10020-export_anonymyze.con", 60.0),  # Ricoh, western Japan
    ],
)
def test_line_freq_of_real_recordings_without_it(meg_data_dir, relpath, expected):
    path = meg_data_dir / relpath
    processor = MEGProcessor(window_seconds=0.4, l_freq=1.0, h_freq=100.0, reject=None)
    assert processor.read(path).info["line_freq"] is None
    assert processor.process(path).preprocessed.line_freq == expected


def test_unclear_line_freq_falls_back_to_50_hz_with_a_warning(caplog):
    raw = _raw_with_line_noise(None)  # white noise only: no line peak
    with caplog.at_level(logging.WARNING, logger="megfm_hf.data.preprocessing"):
        processed = MEGProcessor(window_seconds=2.0, reject=None).process(raw, path="rec.fif")
    assert processed.preprocessed.line_freq == 50.0
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1
    assert warning[0].startswith("rec.fif: info['line_freq'] is not set")
    assert "no clear 50 or 60 Hz peak" in warning[0] and "MEGProcessor(line_freq=...)" in warning[0]


def test_line_freq_given_by_the_user_or_the_file_is_not_overridden():
    hum_at_60 = _raw_with_line_noise(60.0)
    explicit = MEGProcessor(window_seconds=2.0, reject=None, line_freq=50.0).process(hum_at_60)
    assert explicit.preprocessed.line_freq == 50.0
    from_file = _raw_with_line_noise(60.0, info_line_freq=50.0)
    processed = MEGProcessor(window_seconds=2.0, reject=None).process(from_file)
    assert processed.preprocessed.line_freq == 50.0
    without_notch = MEGProcessor(window_seconds=2.0, reject=None, notch=False).process(hum_at_60)
    assert without_notch.preprocessed.line_freq is None


EVOKED = "neuromag306-audvis-evoked/test-ave.fif.gz"
EVOKED_PROCESSOR = dict(sfreq=200.0, patch_length=10, window_seconds=0.5, tmin=-0.2, h_freq=40.0)


def _magnetometer_level(processed):
    """Median over magnetometers of each condition's robust standard deviation."""
    data = processed.windows()[:, processed.sensors.types == 0]
    deviation = np.abs(data - np.median(data, axis=-1, keepdims=True))
    return np.median(1.4826 * np.median(deviation, axis=-1), axis=-1)


def test_robust_scaling_keeps_relative_amplitudes_between_conditions(meg_data_dir):
    evokeds = read_recording(meg_data_dir / EVOKED)
    physical = MEGProcessor(**EVOKED_PROCESSOR, reject=None).process(evokeds)
    robust = MEGProcessor(**EVOKED_PROCESSOR, reject=None, scaling_mode="robust").process(evokeds)
    ratio = _magnetometer_level(robust) / _magnetometer_level(physical)
    # one factor for the recording: conditions keep their amplitudes relative to each other
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)
    assert not np.allclose(_magnetometer_level(physical), _magnetometer_level(physical)[0])

    # the same segments as epochs scale the same way
    epochs = mne.EpochsArray(
        np.stack([evoked.data for evoked in evokeds]),
        evokeds[0].info,
        tmin=evokeds[0].tmin,
        verbose="error",
    )
    as_epochs = MEGProcessor(**EVOKED_PROCESSOR, reject=None, scaling_mode="robust").process(epochs)
    np.testing.assert_allclose(as_epochs.windows(), robust.windows(), rtol=1e-4, atol=1e-5)


def test_conditions_on_different_time_axes_name_the_condition(meg_data_dir):
    evokeds = read_recording(meg_data_dir / EVOKED)
    evokeds[2].crop(tmax=0.3)
    processor = MEGProcessor(**EVOKED_PROCESSOR, reject=None)
    with pytest.raises(MEGDataError, match=r"x-ave\.fif: condition 'Left visual' spans") as err:
        processor.process(evokeds, path="x-ave.fif")
    assert "condition 'Left Auditory'" in str(err.value)
    evokeds = read_recording(meg_data_dir / EVOKED)
    evokeds[1].drop_channels([evokeds[1].ch_names[0]])
    with pytest.raises(MEGDataError, match=r"condition 'Right Auditory' has 305 MEG channels"):
        processor.process(evokeds, path="x-ave.fif")


def test_inconsistent_evoked_file_fails_only_its_recording(meg_data_dir, tmp_path):
    evokeds = read_recording(meg_data_dir / EVOKED)
    evokeds[3].crop(tmax=0.3)
    broken = tmp_path / "broken-ave.fif"
    mne.write_evokeds(broken, evokeds, verbose="error")
    good = write_raw(make_raw(duration=4.0), tmp_path / "good_raw.fif")
    specs = [
        RecordingSpec(str(broken), "s01", "1", "auditory", "", 0),
        RecordingSpec(str(good), "s02", "1", "rest", "", 1),
    ]
    result = build_dataset(
        specs, tmp_path / "out", processor=MEGProcessor(**EVOKED_PROCESSOR), secret="t"
    )
    assert result.n_recordings == 1
    (failure,) = result.failures
    assert failure["manifest_row"] == 0 and failure["reason"] == "inconsistent-segments"
    assert "condition 'Right visual'" in failure["problem"]


# -- bad sensor detection on epochs and evoked responses -------------------------------------

#: the real averages, and the sensors the default detection flags besides ``info["bads"]``:
#: MEG 2443 is the broken gradiometer of the MNE "sample" recording (in the raw file's
#: ``info["bads"]``, not in this evoked file's; 25 times the median gradiometer level)
REAL_AVERAGES = [
    (EVOKED, ["MEG 2443"]),
    ("neuromag306/test_elekta-ave.fif", []),
    ("ctf151-somatosensory/somMDYO-18av.ds", []),
]


def _masked(preprocessed):
    return [preprocessed.sensors.ch_names[i] for i in np.flatnonzero(~preprocessed.mask)]


@pytest.mark.parametrize(("relpath", "known_bad"), REAL_AVERAGES)
def test_detection_flags_no_good_sensor_of_real_averages(meg_data_dir, relpath, known_bad):
    """Neither the flat thresholds (over sqrt(nave)) nor the noisy z-score flag a sensor that
    carries the evoked response."""
    evokeds = read_recording(meg_data_dir / relpath)
    bads = set(evokeds[0].info["bads"])
    processor = MEGProcessor(**EVOKED_PROCESSOR, reject=None)
    assert processor.detect_bads
    masked = _masked(processor.preprocess(evokeds))
    assert sorted(set(masked) - bads) == sorted(known_bad)
    assert set(masked) >= bads
    undetected = MEGProcessor(**EVOKED_PROCESSOR, reject=None, detect_bads=False)
    assert set(_masked(undetected.preprocess(evokeds))) == bads


def test_flat_and_noisy_sensors_of_evoked_responses_are_masked(meg_data_dir, caplog):
    evokeds = read_recording(meg_data_dir / EVOKED)
    rng = np.random.default_rng(0)
    flat, noisy = "MEG 0111", "MEG 1332"  # MEG 1332: the largest N100m of the left tone
    for evoked in evokeds:
        i, j = evoked.ch_names.index(flat), evoked.ch_names.index(noisy)
        evoked.data[i] = 3e-13 + 1e-17 * rng.standard_normal(len(evoked.times))
        evoked.data[j] += 1e-10 * rng.standard_normal(len(evoked.times))  # 35x the median
    processor = MEGProcessor(**EVOKED_PROCESSOR, reject=None)
    with caplog.at_level(logging.INFO, logger="megfm_hf.data.preprocessing"):
        preprocessed = processor.preprocess(evokeds)
    assert sorted(_masked(preprocessed)) == sorted([flat, noisy, "MEG 2443"])
    assert (preprocessed.data[:, ~preprocessed.mask] == 0).all()
    assert "3 sensors detected as flat or noisy are masked" in caplog.text
    undetected = MEGProcessor(**EVOKED_PROCESSOR, reject=None, detect_bads=False)
    assert undetected.preprocess(evokeds).mask.all()
    # one condition alone is enough to find them
    assert sorted(_masked(processor.preprocess(evokeds[0]))) == sorted([flat, noisy, "MEG 2443"])


def _real_epochs(meg_data_dir, *, flat=None, noisy=None):
    """0.2-s epochs of the real Neuromag recording, with a sensor made flat or noisy."""
    raw = mne.io.read_raw_fif(
        meg_data_dir / "neuromag306/sample_audvis_trunc_raw_sss.fif", preload=True, verbose="error"
    )
    rng = np.random.default_rng(1)
    if flat is not None:
        raw._data[raw.ch_names.index(flat)] = 0.0
    if noisy is not None:
        raw._data[raw.ch_names.index(noisy)] += 1e-10 * rng.standard_normal(len(raw.times))
    return mne.make_fixed_length_epochs(raw, duration=0.2, preload=True, verbose="error")


def test_flat_and_noisy_sensors_of_epochs_are_masked(meg_data_dir):
    processor = MEGProcessor(**EVOKED_PROCESSOR, reject=None)
    assert processor.preprocess(_real_epochs(meg_data_dir)).mask.all()
    epochs = _real_epochs(meg_data_dir, flat="MEG 0121", noisy="MEG 2412")
    preprocessed = processor.preprocess(epochs)
    assert len(epochs) == 5 and preprocessed.data.shape[0] == 5
    assert sorted(_masked(preprocessed)) == ["MEG 0121", "MEG 2412"]
    assert (preprocessed.data[:, ~preprocessed.mask] == 0).all()  # in every epoch
    undetected = MEGProcessor(**EVOKED_PROCESSOR, reject=None, detect_bads=False)
    assert undetected.preprocess(epochs).mask.all()
    disabled = MEGProcessor(**EVOKED_PROCESSOR, reject=None, noisy_zscore=None)
    assert _masked(disabled.preprocess(epochs)) == ["MEG 0121"]


def test_flat_thresholds_of_averages_scale_with_the_trials_averaged(meg_data_dir):
    """A sensor whose average is below the single-trial threshold is flat as a single trial but
    not as an average of many trials, whose noise is sqrt(nave) times smaller."""
    (evoked,) = read_recording(meg_data_dir / "ctf151-somatosensory/somMDYO-18av.ds")
    evoked.info["bads"] = []
    quiet = evoked.ch_names.index("MLC11-606")
    evoked.data[quiet] *= 2e-16 / evoked.data[quiet].std()  # 5 times below 1e-15 T
    processor = MEGProcessor(**EVOKED_PROCESSOR, reject=None)
    evoked.nave = 302
    assert processor.preprocess(evoked).mask.all()  # threshold 1e-15 / sqrt(302) = 5.8e-17
    evoked.nave = 1
    assert _masked(processor.preprocess(evoked)) == ["MLC11-606"]
    as_epochs = mne.EpochsArray(evoked.data[None], evoked.info, tmin=evoked.tmin, verbose="error")
    assert _masked(processor.preprocess(as_epochs)) == ["MLC11-606"]
    # conditions of 3 and 6 trials have the noise of 1 / mean(1/3, 1/6) = 4 trials
    halved = averaged_flat_thresholds({"magnetometer": 2e-15}, [3, 6])
    assert halved["magnetometer"] == pytest.approx(1e-15)
    assert halved["axial_gradiometer"] == pytest.approx(
        DEFAULT_FLAT_THRESHOLDS["axial_gradiometer"] / 2
    )
