"""Fixed-length and event-locked windows, and peak-to-peak rejection."""

from __future__ import annotations

import logging

import mne
import numpy as np
import pytest

from megfm_hf.data import EventNotFoundError, MEGProcessor, NoWindowsError, read_recording
from megfm_hf.data.testing import BURST_DURATION, make_raw
from megfm_hf.data.windowing import (
    event_locked_windows,
    find_events,
    fixed_length_windows,
    peak_to_peak_rejection,
    window_samples,
)

SFREQ_IN = 500.0
EVENTS = [600, 1150, 1700, 2400]  # samples at 500 Hz
CODES = [1, 2, 1, 2]


def test_fixed_length_windows_with_overlap():
    plan = fixed_length_windows(1000, 250, overlap=0.5, sfreq=250.0)
    np.testing.assert_array_equal(plan.starts, [0, 125, 250, 375, 500, 625, 750])
    np.testing.assert_allclose(plan.onsets_s, plan.starts / 250.0)
    assert len(fixed_length_windows(1000, 250, overlap=0.0, sfreq=250.0)) == 4
    with pytest.raises(ValueError, match="overlap"):
        fixed_length_windows(1000, 250, overlap=1.0, sfreq=250.0)


def test_window_length_must_be_whole_patches():
    assert window_samples(4.0, 250.0, 25) == 1000
    with pytest.raises(ValueError, match="whole number of patches"):
        window_samples(0.33, 250.0, 25)


def test_event_windows_drop_windows_outside_the_recording():
    plan = event_locked_windows(
        np.array([0.05, 1.0, 3.9]),
        ["a", "b", "c"],
        tmin=-0.1,
        n_samples=100,
        sfreq=250.0,
        n_times=1000,
    )
    assert plan.events == ["b"] and plan.n_dropped_at_edges == 2
    np.testing.assert_array_equal(plan.starts, [225])


@pytest.mark.parametrize("source", ["stim", "annotations"])
def test_event_locked_windows_land_on_the_events(source):
    raw = make_raw(sfreq=SFREQ_IN, duration=6.0, event_samples=EVENTS, event_codes=CODES)
    if source == "annotations":
        names = {1: "tone/left", 2: "tone/right"}
        raw.set_annotations(
            mne.Annotations(
                onset=np.array(EVENTS) / SFREQ_IN,
                duration=0.0,
                description=[names[c] for c in CODES],
            )
        )
        event_id = ["tone/left", "tone/right"]
        expected = [names[c] for c in CODES]
    else:
        event_id = {"tone/left": 1, "tone/right": 2}
        expected = ["tone/left", "tone/right", "tone/left", "tone/right"]
    processor = MEGProcessor(window_seconds=0.4, tmin=-0.1, reject=None, event_id=event_id)
    processed = processor.process(raw)

    assert processed.plan.events == expected
    np.testing.assert_allclose(
        processed.plan.onsets_s, np.array(EVENTS) / SFREQ_IN - 0.1, atol=0.5 / processor.sfreq
    )
    windows = processed.windows()
    magnetometers = processed.sensors.types == 0
    envelope = np.abs(windows[:, magnetometers]).mean(axis=(0, 1))
    at_event = int(round(0.1 * processor.sfreq))
    burst = int(round(BURST_DURATION * processor.sfreq))
    # the burst starts at the event: quiet before it, strong during it, quiet after it
    assert envelope[at_event : at_event + burst].mean() > 10 * envelope[: at_event - 3].mean()
    assert (
        envelope[at_event : at_event + burst].mean() > 10 * envelope[at_event + burst + 5 :].mean()
    )


def test_event_not_found_names_file_and_event():
    raw = make_raw(sfreq=SFREQ_IN, duration=3.0, event_samples=[500], event_codes=[1])
    processor = MEGProcessor(window_seconds=0.4, tmin=-0.1, reject=None)
    with pytest.raises(EventNotFoundError, match=r"rec\.fif.*'missing'"):
        processor.process(raw, event_id={"missing": 7}, path="rec.fif")


def test_peak_to_peak_rejection_counts_per_type():
    rng = np.random.default_rng(0)
    windows = rng.standard_normal((5, 3, 50)).astype(np.float32)
    windows[1, 0] += 100.0 * np.linspace(0, 1, 50)  # magnetometer artifact
    windows[3, 2] += 100.0 * np.linspace(0, 1, 50)  # gradiometer artifact
    windows[4, 1] += 100.0 * np.linspace(0, 1, 50)  # artifact on a masked sensor: ignored
    types = np.array([0, 1, 1])
    mask = np.array([True, False, True])
    keep, rejected = peak_to_peak_rejection(
        windows, types, mask, {"magnetometer": 20.0, "planar_gradiometer": 20.0}
    )
    np.testing.assert_array_equal(keep, [True, False, True, False, True])
    assert rejected == {"magnetometer": 1, "planar_gradiometer": 1}


def test_processor_reports_rejections():
    raw = make_raw(sfreq=SFREQ_IN, duration=4.0)
    data = raw.get_data()
    data[0, 1200:1300] += 1e-10  # a 100 pT jump on a magnetometer in the third second
    raw = mne.io.RawArray(data, raw.info, verbose="error")
    # detect_bads=False: the jump would otherwise mark the sensor noisy and mask it
    processor = MEGProcessor(window_seconds=1.0, l_freq=None, notch=False, detect_bads=False)
    processed = processor.process(raw)
    assert processed.n_candidates == 4 and len(processed) == 3
    assert processed.plan.rejected == {"magnetometer": 1}
    np.testing.assert_allclose(processed.plan.onsets_s, [0.0, 1.0, 3.0])


@pytest.mark.parametrize("meas_date", ["from the file", None])
def test_annotation_events_count_from_the_first_sample(meg_data_dir, meas_date):
    # the file starts at first_samp 12900 (43 s into the acquisition)
    raw = mne.io.read_raw_fif(
        meg_data_dir / "neuromag306/sample_audvis_trunc_raw_sss.fif", verbose="error"
    )
    if meas_date is None:
        raw.set_meas_date(None)
    raw.set_annotations(mne.Annotations([0.5], [0.0], ["tone"], orig_time=None))
    times, names = find_events(raw, ["tone"])
    events, _ = mne.events_from_annotations(raw, verbose="error")
    assert names == ["tone"]
    np.testing.assert_allclose(
        times, (events[:, 0] - raw.first_samp) / raw.info["sfreq"], atol=1 / raw.info["sfreq"]
    )
    processor = MEGProcessor(
        sfreq=100.0, patch_length=10, window_seconds=0.3, tmin=-0.1, h_freq=40.0, reject=None
    )
    processed = processor.process(raw, event_id=["tone"])
    np.testing.assert_allclose(processed.plan.onsets_s, [0.4], atol=0.5 / processor.sfreq)


def _raw_with_bad_segment():
    raw = make_raw(n_sites=10, sfreq=200.0, duration=10.0)
    raw.set_annotations(
        mne.Annotations([2.0, 4.5, 7.0], [0.0, 0.0, 0.0], ["tone", "tone", "tone"])
        + mne.Annotations([4.0], [1.0], ["BAD_movement"])
    )
    return raw


def test_windows_overlapping_bad_annotations_are_dropped(caplog):
    processor = MEGProcessor(
        sfreq=100.0, patch_length=10, window_seconds=1.0, tmin=-0.2, l_freq=1.0, h_freq=40.0,
        reject=None,
    )  # fmt: skip
    raw = _raw_with_bad_segment()
    with caplog.at_level(logging.INFO, logger="megfm_hf.data.windowing"):
        fixed = processor.process(raw, mode="fixed")
    # 1 s windows from 0 s; the one from 4 to 5 s lies in BAD_movement (4.0-5.0 s)
    np.testing.assert_allclose(fixed.plan.onsets_s, [0, 1, 2, 3, 5, 6, 7, 8, 9])
    assert fixed.plan.n_dropped_by_annotation == 1
    assert "dropped 1 of 10 windows overlapping BAD or EDGE annotations" in caplog.text

    # every annotation but the bad one is an event; the window around 4.5 s is dropped
    locked = processor.process(raw, event_id=None, mode="events")
    assert locked.plan.events == ["tone", "tone"]
    np.testing.assert_allclose(locked.plan.onsets_s, [1.8, 6.8], atol=0.5 / processor.sfreq)
    assert locked.plan.n_dropped_by_annotation == 1


def test_stim_events_in_bad_segments_are_dropped():
    raw = make_raw(sfreq=SFREQ_IN, duration=6.0, event_samples=EVENTS, event_codes=CODES)
    # 1150 samples = 2.3 s
    raw.set_annotations(mne.Annotations([2.2], [0.3], ["BAD_jump"]))
    processor = MEGProcessor(window_seconds=0.4, tmin=-0.1, reject=None, event_id={"a": 1, "b": 2})
    processed = processor.process(raw)
    np.testing.assert_allclose(
        processed.plan.onsets_s, np.array([600, 1700, 2400]) / SFREQ_IN - 0.1, atol=0.004
    )


def test_all_windows_in_bad_segments_is_a_data_error():
    raw = make_raw(sfreq=SFREQ_IN, duration=3.0)
    raw.set_annotations(mne.Annotations([0.0], [3.0], ["BAD_movement"]))
    processor = MEGProcessor(window_seconds=1.0, reject=None)
    with pytest.raises(NoWindowsError, match=r"rec\.fif.*3 windows.*overlap BAD or EDGE"):
        processor.process(raw, path="rec.fif")


def test_ctf_trials_are_never_crossed(meg_data_dir):
    path = meg_data_dir / "ctf275/testdata_ctf_short_discontinuous.ds"
    raw = read_recording(path)
    trial = raw.n_times // 2 / raw.info["sfreq"]  # two trials of 1201 samples
    # marked as mne.concatenate_raws marks the boundary between two recordings
    assert sorted(raw.annotations.description) == ["BAD boundary", "EDGE boundary"]
    np.testing.assert_allclose(raw.annotations.onset - raw.first_time, trial)
    processor = MEGProcessor(
        sfreq=250.0, window_seconds=0.4, patch_length=25, l_freq=1.0, h_freq=40.0, reject=None
    )
    processed = processor.process(path)
    onsets = processed.plan.onsets_s
    ends = onsets + processor.window_seconds
    assert np.all((ends <= trial) | (onsets >= trial))
    # windows at 0 and 0.4 s in the first trial; the one from 0.8 s would cross into the second
    np.testing.assert_allclose(onsets, [0.0, 0.4, 1.2, 1.6])
    assert processed.plan.n_dropped_by_annotation == 1
