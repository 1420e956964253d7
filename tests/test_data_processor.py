"""MEGProcessor: preprocessing parameters, units, bad sensors, save/load, model inputs."""

from __future__ import annotations

import json

import mne
import numpy as np
import pytest
import torch
from transformers import BatchFeature

from megfm_hf import MEGConfig
from megfm_hf.data import MEGProcessor
from megfm_hf.data.testing import make_raw


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
