"""Tests of ``megfm evaluate``: metric functions, bad inputs, and the three claims end to end.

The end-to-end fixture simulates a small cohort on a 120-sensor helmet, builds its dataset,
pretrains a small model for a short while on six subjects, and evaluates it on the other two.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from megfm_hf.demo import DEMO_MODEL
from megfm_hf.evaluation import (
    bootstrap_ci,
    evaluate_model,
    interpolation_weights,
    nmse,
    paired_permutation_test,
    pearson_r,
    sensor_folds,
    shuffled_null,
    subject_folds,
)
from megfm_hf.evaluation.attention import (
    baseline_patches,
    evoked_peak_patch,
    holm,
    induced_map,
    post_stimulus_patches,
    spin_null,
    strongest_sensors,
)
from megfm_hf.evaluation.classification import auroc, band_power_features, compare_features
from megfm_hf.evaluation.cli import configure_parser, run
from megfm_hf.modeling.configuration_megfm import MEGConfig
from megfm_hf.modeling.modeling_megfm import MEGForMaskedSignalModeling
from megfm_hf.simulation import EVENT_ID

SUBJECTS = 8
# The demo's model at the test cohort's rate and patch length.
MODEL_CONFIG = {"sampling_rate": 100.0, "patch_length": 10, **DEMO_MODEL}


# --------------------------------------------------------------------------- metric functions


def test_nmse_and_pearson_on_known_inputs():
    target = np.array([1.0, -1.0, 2.0, -2.0])
    assert nmse(target, target) == 0.0
    assert nmse(target, np.zeros(4)) == 1.0
    assert nmse(target, 0.5 * target) == pytest.approx(0.25)
    assert pearson_r(target, 3.0 * target + 1.0) == pytest.approx(1.0)
    assert pearson_r(target, -target) == pytest.approx(-1.0)
    assert np.isnan(nmse(np.zeros(3), np.ones(3)))


def test_bootstrap_interval_covers_the_true_auroc():
    # Scores from two Gaussians 1 sd apart: the population AUROC is Phi(1 / sqrt(2)) = 0.760.
    true_auc = 0.7602
    covered = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        labels = np.repeat([0, 1], 30)
        scores = rng.normal(size=60) + labels
        estimate, low, high = bootstrap_ci(labels, scores, auroc, n_boot=300, seed=seed)
        assert low <= estimate <= high
        covered += low <= true_auc <= high
    assert covered >= 33  # nominal 95%: 38 of 40; percentile intervals run a little narrow


def test_permutation_test_identical_vs_different_predictions():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 20)
    good = labels + 0.3 * rng.normal(size=40)
    same = paired_permutation_test(labels, good, good.copy(), n_permutations=500)
    assert same["difference_roc_auc"] == 0.0 and same["p_value"] == 1.0
    noise = rng.normal(size=40)
    different = paired_permutation_test(labels, good, noise, n_permutations=500)
    assert different["difference_roc_auc"] > 0.3 and different["p_value"] < 0.01


def test_permutation_test_does_not_depend_on_calibration():
    # AUROC depends on ranks only: squeezing one classifier's probabilities towards 0.5 (as a
    # strongly regularised model does) changes neither AUROC nor the test.
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1], 12)
    a = 1 / (1 + np.exp(-(3 * labels + rng.normal(size=24))))
    b = 1 / (1 + np.exp(-(0.7 * labels + rng.normal(size=24))))
    plain = paired_permutation_test(labels, a, b, n_permutations=2000)
    squeezed = paired_permutation_test(labels, a, 0.5 + 0.02 * (b - 0.5), n_permutations=2000)
    assert squeezed == plain


def test_bad_sensors_do_not_make_band_power_outliers():
    rng = np.random.default_rng(0)
    signals = rng.normal(size=(6, 4, 200))
    valid = np.ones((6, 4), dtype=bool)
    valid[2, 1] = False
    signals[2, 1] = 0.0  # as the dataset stores a bad sensor
    powers = band_power_features(signals, 100.0, valid).reshape(6, 4, -1)
    assert np.isnan(powers[2, 1]).all()
    assert np.isfinite(powers[valid]).all()
    # The comparison imputes them in-fold and still scores every subject.
    subjects = np.repeat(["a", "b", "c", "d", "e", "f"], 1)
    labels = np.array([0, 1, 0, 1, 0, 1])
    section = compare_features(
        rng.normal(size=(6, 3)), signals, 100.0, labels, subjects, valid=valid, n_folds=2,
        n_boot=50, n_permutations=50,
    )  # fmt: skip
    assert all(np.isfinite(p) for p in section["subject_probabilities"]["raw"]["random_forest"])


def test_subject_folds_never_split_a_subject():
    subjects = np.repeat([f"s{i}" for i in range(10)], 7)
    labels = np.repeat([0, 1] * 5, 7)
    folds = subject_folds(subjects, labels, n_folds=4, seed=3)
    assert len(folds) == 4
    tested = np.concatenate([test for _, test in folds])
    assert sorted(tested) == list(range(70))
    for train, test in folds:
        assert not set(subjects[train]) & set(subjects[test])
        assert set(labels[train]) == {0, 1}
    with pytest.raises(ValueError, match="2 subjects per class"):
        subject_folds(subjects[:14], np.array([0] * 7 + [1] * 7), 4)


def test_sensor_folds_and_interpolation_weights():
    types = np.array([0, 1, 1] * 4)
    folds = sensor_folds(types, None, 3, seed=0)
    assert set(folds) == {0, 1, 2}
    for code in (0, 1):  # balanced within type
        counts = np.bincount(folds[types == code], minlength=3)
        assert counts.max() - counts.min() <= 1
    positions = np.zeros((12, 6))
    positions[:, 0] = np.repeat(np.arange(4) * 0.03, 3)
    positions[:, 5] = 1.0
    hidden = folds == 0
    weights = interpolation_weights(positions, types, hidden, ~hidden)
    rows = weights[hidden]
    assert np.allclose(rows.sum(axis=1), 1.0)
    assert np.all(weights[:, hidden] == 0.0)  # hidden sensors never predict
    assert np.all(weights[np.ix_(types == 0, types == 1)] == 0.0)  # only the same type


def _helmet_array() -> tuple[np.ndarray, np.ndarray]:
    """The simulated 102-position Neuromag-style helmet: positions (306, 3) and type codes."""
    import mne

    from megfm_hf.data.sensors import sensor_array
    from megfm_hf.simulation.geometry import make_builtin_helmet

    info = make_builtin_helmet(n_positions=102)
    array = sensor_array(mne.pick_info(info, mne.pick_types(info, meg=True)), "helmet")
    return array.positions[:, :3], np.asarray(array.types)


def _smooth_map(positions: np.ndarray, center: np.ndarray, rng: np.random.Generator):
    bump = np.exp(-(np.linalg.norm(positions - center, axis=1) ** 2) / (2 * 0.04**2))
    values = bump + 0.2 * rng.random(len(positions))
    return values / values.sum()


def _patch_region(positions: np.ndarray, types: np.ndarray, center: int) -> np.ndarray:
    """The 10 sensors of each type nearest a sensor: a compact region like an evoked field's."""
    distance = np.linalg.norm(positions - positions[center], axis=1)
    region = []
    for code in np.unique(types):
        members = np.flatnonzero(types == code)
        region.extend(members[np.argsort(distance[members])[:10]])
    return np.array(region)


def test_spin_null_keeps_its_level_on_smooth_maps_where_shuffling_does_not():
    # Smooth attention maps and compact regions placed independently: a valid test rejects
    # about 5% of the time. Shuffling sensors ignores the spatial smoothness of both and rejects
    # several times too often.
    positions, types = _helmet_array()
    rng = np.random.default_rng(17)
    rejected = {"spin": 0, "shuffled": 0}
    draws = 120
    for k in range(draws):
        attention_map = _smooth_map(positions, positions[rng.integers(len(types))], rng)
        region = _patch_region(positions, types, rng.integers(len(types)))
        spin = spin_null(attention_map, region, positions, types, n_permutations=200, seed=k)
        assert spin["null"] == "spin"
        rejected["spin"] += spin["p_value"] < 0.05
        shuffled = shuffled_null(attention_map, region, types, n_permutations=200, seed=k)
        rejected["shuffled"] += shuffled["p_value"] < 0.05
    assert rejected["spin"] / draws <= 0.1, rejected
    assert rejected["shuffled"] / draws >= 0.12, rejected
    # A map centred on its region is found.
    center = int(rng.integers(len(types)))
    attention_map = _smooth_map(positions, positions[center], rng)
    region = _patch_region(positions, types, center)
    assert spin_null(attention_map, region, positions, types, n_permutations=200)["p_value"] < 0.01


def test_spin_null_falls_back_to_shuffling_for_a_region_covering_the_array():
    positions, types = _helmet_array()
    region = np.arange(len(types) - 20)
    attention_map = _smooth_map(positions, positions[0], np.random.default_rng(0))
    result = spin_null(attention_map, region, positions, types, n_permutations=50)
    assert result["null"] == "shuffled" and result["n_permutations"] == 50


def test_holm_correction():
    corrected = holm({"a": 0.01, "b": 0.04, "c": 0.03})
    assert corrected == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06})
    assert holm({"only": 0.2}) == {"only": 0.2}


def test_shuffled_null_on_a_peaked_and_a_flat_map():
    types = np.zeros(50, dtype=int)
    region = np.arange(5)
    peaked = np.full(50, 0.5 / 45)
    peaked[region] = 0.1
    result = shuffled_null(peaked, region, types, n_permutations=500, seed=0)
    assert result["alignment"] == pytest.approx(0.5)
    assert result["null_mean"] == pytest.approx(0.1, abs=0.02)
    assert result["p_value"] < 0.01
    flat = shuffled_null(np.full(50, 0.02), region, types, n_permutations=500, seed=0)
    assert flat["p_value"] == 1.0


@pytest.mark.parametrize("latency", [0.045, 0.11])
def test_evoked_peak_patch_finds_the_evoked_component(latency):
    # 40 windows from -0.2 s at 100 Hz, patches of 0.1 s: an evoked field (a 15-ms Gaussian at
    # `latency`, a smooth pattern over 20 magnetometers and, 40x larger in units, over 40
    # gradiometers) in 1/f noise as strong as the evoked peak on single trials.
    rng = np.random.default_rng(1)
    times = -0.2 + np.arange(100) / 100.0
    types = np.repeat([0, 1], [20, 40])
    pattern = np.concatenate([np.sin(np.linspace(0, 3, 20)), 40 * np.cos(np.linspace(0, 5, 40))])
    wave = np.exp(-0.5 * ((times - latency) / 0.015) ** 2)
    noise = np.cumsum(rng.normal(size=(40, 60, 100)), axis=-1) * 0.1
    noise -= noise.mean(axis=-1, keepdims=True)
    signals = pattern[None, :, None] * (wave[None, None, :] + noise)
    valid = np.ones((40, 60), dtype=bool)
    valid[::3, 7] = False  # a sensor bad in some windows
    candidates = post_stimulus_patches(10, 0.1, -0.2)
    baseline = baseline_patches(10, 0.1, -0.2)
    peak = evoked_peak_patch(signals, types, valid, 10, candidates, baseline)
    assert peak == 2 + int(latency // 0.1)
    # An evoked component outside the search window is not chosen.
    late = pattern[None, :, None] * np.exp(-0.5 * ((times - 0.55) / 0.015) ** 2)
    assert evoked_peak_patch(signals + 5 * late, types, valid, 10, candidates, baseline) == peak


def test_strongest_sensors_are_where_the_evoked_field_is():
    rng = np.random.default_rng(3)
    types = np.repeat([0, 1], [20, 40])
    pattern = rng.uniform(0.1, 1.0, size=60) * np.where(types == 1, 40.0, 1.0)
    times = -0.2 + np.arange(100) / 100.0
    wave = np.exp(-0.5 * ((times - 0.1) / 0.02) ** 2)
    signals = pattern[None, :, None] * wave + 0.02 * rng.normal(size=(30, 60, 100))
    valid = np.ones((30, 60), dtype=bool)
    region = strongest_sensors(
        signals, types, valid, 10, patch=3, baseline=baseline_patches(10, 0.1, -0.2), top_k=4
    )
    expected = [
        *np.argsort(-pattern[:20])[:4],
        *(20 + np.argsort(-pattern[20:])[:4]),
    ]
    assert region.tolist() == sorted(expected)
    # a sensor bad in every window is never chosen
    valid[:, expected[0]] = False
    assert expected[0] not in strongest_sensors(signals, types, valid, 10, 3, top_k=4)
    assert region.dtype == np.int64
    with pytest.raises(ValueError, match="top_k"):
        strongest_sensors(signals, types, valid, 10, 3, top_k=0)


def test_induced_map_keeps_what_the_stimulus_adds():
    # 10 patches of 0.1 s from -0.2 s: two baseline patches, the peak searched in 0-0.3 s.
    assert baseline_patches(10, 0.1, -0.2).tolist() == [True, True] + [False] * 8
    assert post_stimulus_patches(10, 0.1, -0.2).tolist() == [False] * 2 + [True] * 3 + [False] * 5
    assert post_stimulus_patches(10, 0.1, -0.2, (0.0, 0.2)).tolist() == (
        [False] * 2 + [True] * 2 + [False] * 6
    )
    rng = np.random.default_rng(0)
    prior = rng.uniform(0.5, 1.5, size=30)  # input-independent attention, everywhere
    attention = np.tile(prior, (8, 10, 1)) + rng.uniform(0, 0.05, size=(8, 10, 30))
    attention[:, 2:4, :5] += 1.0  # the stimulus draws attention to sensors 0-4
    induced = induced_map(
        attention,
        post_stimulus_patches(10, 0.1, -0.2, (0.0, 0.2)),
        baseline_patches(10, 0.1, -0.2),
    )
    assert induced.sum() == pytest.approx(0.0, abs=1e-9)
    assert (induced[:5] > 0).all() and (induced[5:] < 0).all()
    result = shuffled_null(induced, np.arange(5), np.zeros(30, dtype=int), n_permutations=500)
    assert result["p_value"] < 0.01


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cohort(simulated_cohort) -> dict[str, Path]:
    return simulated_cohort


@pytest.fixture(scope="module")
def pretrained(pretrained_model) -> Path:
    return pretrained_model


@pytest.fixture(scope="module")
def evaluation(cohort, pretrained) -> tuple[dict, Path, float]:
    """The evaluation's metrics, its folder and its wall-clock seconds."""
    output = cohort["root"] / "evaluation"
    started = time.perf_counter()
    metrics = evaluate_model(
        pretrained,
        cohort["dataset"],
        output,
        ground_truth=cohort["truth"],
        max_windows=20,
        n_permutations=1000,
        n_bootstrap=500,
        progress=False,
    )
    return metrics, output, time.perf_counter() - started


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_evaluation_writes_every_section_and_figures(evaluation, pretrained):
    metrics, output, seconds = evaluation
    saved = json.loads((output / "metrics.json").read_text())
    for section in ("reconstruction", "attention", "classification", "skipped"):
        assert section in saved, section
    split = json.loads((pretrained / "split.json").read_text())
    assert saved["test_subjects"] == split["test"]
    reconstruction = saved["reconstruction"]
    assert set(reconstruction["continuous"]) == {"magnetometer", "planar_gradiometer"}
    assert set(reconstruction["baselines"]) == {"zeros", "interpolation", "ridge"}
    assert set(reconstruction["evoked"]) == set(EVENT_ID)
    assert reconstruction["baselines"]["zeros"]["magnetometer"]["nmse"] == pytest.approx(1.0)
    for condition in EVENT_ID:
        values = saved["attention"][condition]
        # stimulus-induced maps sum to 0, so their scores and null lie in [-1, 1]
        assert -1.0 <= values["null_ci95"][0] <= values["null_ci95"][1] <= 1.0
    classification = saved["classification"]
    assert classification["n_subjects"] == SUBJECTS
    for source in ("features", "raw"):
        for name in ("logistic_regression", "random_forest"):
            estimate, low, high = classification[source][name]["roc_auc"]
            assert low <= estimate <= high
    # the evaluation's own time (rounded to 10 ms), not the clock's
    assert 0 < saved["runtime_s"] <= seconds + 0.005
    report = (output / "report.md").read_text()
    assert "## Summary" in report
    assert f"{saved['runtime_s']:.0f} s." in report
    for name in saved["figures"].values():
        assert f"({name})" in report
        image = mpimg.imread(output / name)
        assert image.std() > 0.02, f"{name} looks blank"
    assert {"attention_topomaps", "evoked_traces", "butterfly"} <= set(saved["figures"])


@pytest.mark.slow
def test_evoked_reconstruction_beats_interpolation(evaluation):
    metrics, _, _ = evaluation
    section = metrics["reconstruction"]
    for condition, per_type in section["evoked"].items():
        for sensor_type, values in per_type.items():
            baseline = section["evoked_baselines"]["interpolation"][condition][sensor_type]
            assert values["nmse"] < baseline["nmse"], (condition, sensor_type, values, baseline)


@pytest.mark.slow
def test_attention_alignment_beats_the_spin_null(evaluation):
    metrics, _, _ = evaluation
    for condition in EVENT_ID:
        values = metrics["attention"][condition]
        assert values["null"] == "spin", (condition, values)
        assert values["alignment"] > values["null_ci95"][1], (condition, values)
        assert values["p_value_holm"] < 0.05, (condition, values)
        assert values["p_value_holm"] >= values["p_value"]


@pytest.mark.slow
def test_classification_says_which_subjects_the_model_was_pretrained_on(evaluation, pretrained):
    metrics, output, _ = evaluation
    split = json.loads((pretrained / "split.json").read_text())
    assert metrics["test_subjects_in_pretraining"] == []
    classification = metrics["classification"]
    assert classification["subjects"] == "all labelled"
    assert classification["n_pretraining_subjects"] == len(split["train"])
    groups = classification["roc_auc_by_pretraining"]
    assert {g: v["n_subjects"] for g, v in groups.items()} == {
        "pretraining": len(split["train"]),
        "held_out": len(split["test"]),
    }
    for values in groups.values():
        for source in ("features", "raw"):
            assert all(0.0 <= v <= 1.0 for v in values[source].values()), values
    # 2 held-out subjects cannot be cross-validated by subject: said, not hidden.
    assert "classification_held_out" not in metrics
    assert "too few subjects per class" in metrics["skipped"]["classification_held_out"]
    report = (output / "report.md").read_text()
    assert "all held out of pretraining" in report
    assert f"({len(split['train'])} of them in the model's pretraining" in report
    assert "### Subjects held out of pretraining" in report
    assert "| pretraining | 6 |" in report and "| held-out | 2 |" in report


@pytest.mark.slow
def test_strongest_evoked_sensors_recover_the_ground_truth_regions(cohort, pretrained):
    from megfm_hf.evaluation.attention import (
        channel_names_from_recording,
        evoked_peak_patch,
        find_recording,
        match_channel_names,
        regions_from_ground_truth,
    )
    from megfm_hf.evaluation.features import load_windows
    from megfm_hf.evaluation.loading import load_evaluation_data, select_subjects

    data = load_evaluation_data(cohort["dataset"])
    test_subjects, _ = select_subjects(data, pretrained)
    windows = load_windows(data, np.flatnonzero(np.isin(data.subjects, test_subjects)))
    events = data.events[windows.indices]
    names, positions = channel_names_from_recording(find_recording(cohort["bids"]))
    truth = regions_from_ground_truth(
        cohort["truth"], match_channel_names(windows.positions, names, positions)
    )
    patches, duration = windows.signals.shape[-1] // 10, 0.1
    candidates = post_stimulus_patches(patches, duration, data.tmin)
    baseline = baseline_patches(patches, duration, data.tmin)
    for condition in EVENT_ID:
        rows = events == condition
        args = (windows.signals[rows], windows.types, windows.valid[rows], 10)
        peak = evoked_peak_patch(*args, candidates, baseline)
        region = strongest_sensors(*args, peak, baseline, top_k=10)
        overlap = np.intersect1d(region, truth[condition]).size / truth[condition].size
        assert overlap >= 0.6, (condition, overlap)


def _evaluate_recording(
    path: Path, state: str, tmp_path: Path, *, window_seconds: float, tmin: float
) -> dict:
    """Evaluate an untrained small model on one real recording, with data-derived regions."""
    from megfm_hf.data import MEGProcessor, build_dataset

    manifest = tmp_path / "manifest.tsv"
    manifest.write_text(f"path\tsubject\tstate\n{path}\ts01\t{state}\n")
    processor = MEGProcessor(
        sfreq=100.0, patch_length=10, window_seconds=window_seconds, tmin=tmin, l_freq=1.0,
        h_freq=40.0, reject=None,
    )  # fmt: skip
    build_dataset(manifest, tmp_path / "dataset", processor=processor, secret="t")
    return evaluate_model(
        _small_model(tmp_path / "model"), tmp_path / "dataset", tmp_path / "out",
        region="strongest:10", n_permutations=200, progress=False,
    )  # fmt: skip


@pytest.mark.slow
def test_attention_on_real_evoked_responses(meg_data_dir, tmp_path):
    """The MNE sample subject's averaged auditory and visual responses, with regions read from
    the evoked fields: auditory fields are strongest over the temporal sensors."""
    from megfm_hf.evaluation.features import load_windows
    from megfm_hf.evaluation.loading import load_evaluation_data

    path = meg_data_dir / "neuromag306-audvis-evoked/test-ave.fif.gz"
    metrics = _evaluate_recording(path, "auditory", tmp_path, window_seconds=0.6, tmin=-0.2)
    attention = metrics["attention"]
    assert set(attention) == {"Left Auditory", "Right Auditory", "Left visual", "Right visual"}
    positions = load_windows(load_evaluation_data(tmp_path / "dataset"), [0]).positions[:, :3]
    lateral, posterior = np.abs(positions[:, 0]), -positions[:, 1]  # head frame: x right, y front
    for condition, values in attention.items():
        region = np.asarray(values["region_sensors"])
        assert values["n_region_sensors"] == region.size == 20, condition
        assert values["region_source"].startswith("strongest evoked field")
        assert values["peak_patch_s"][0] >= 0.0
        if "Auditory" in condition:  # temporal sensors: far from the midline
            assert lateral[region].mean() > lateral.mean() + 0.01, condition
        else:  # occipital sensors
            assert posterior[region].mean() > posterior.mean() + 0.01, condition
    assert "classification" in metrics["skipped"]


@pytest.mark.slow
def test_attention_on_the_real_somatosensory_average(meg_data_dir, tmp_path):
    """The averaged CTF-151 somatosensory dataset reads as one evoked response from 0.05 s
    before the trigger; its alignment is scored against the sensors of its own strongest field,
    and its topomap is drawn from the CTF sensor positions."""
    path = meg_data_dir / "ctf151-somatosensory/somMDYO-18av.ds"
    metrics = _evaluate_recording(path, "somatosensory", tmp_path, window_seconds=0.2, tmin=-0.04)
    values = metrics["attention"]["average"]
    assert values["n_windows"] == 1 and values["n_region_sensors"] == 10
    assert values["peak_patch_s"] == pytest.approx([0.06, 0.16])
    assert values["null_ci95"][0] <= values["null_mean"] <= values["null_ci95"][1]
    assert 0.0 < values["p_value"] <= 1.0
    image = mpimg.imread(tmp_path / "out" / metrics["figures"]["attention_topomaps"])
    assert image.std() > 0.02


# --------------------------------------------------------------------------- bad inputs


def _small_model(folder: Path, **overrides) -> Path:
    config = MEGConfig(**{**MODEL_CONFIG, **overrides})
    MEGForMaskedSignalModeling(config).save_pretrained(folder)
    return folder


def test_missing_model_files_are_named(tmp_path, cohort):
    folder = _small_model(tmp_path / "model")
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        evaluate_model(folder, cohort["dataset"], tmp_path / "out", progress=False)
    folder = _small_model(tmp_path / "model2")
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        evaluate_model(folder, cohort["dataset"], tmp_path / "out", progress=False)


def test_sampling_rate_and_patch_mismatch_name_both_values(tmp_path, cohort):
    folder = _small_model(tmp_path / "rate", sampling_rate=250.0)
    with pytest.raises(ValueError, match=r"sfreq=100 Hz.*sampling_rate=250 Hz"):
        evaluate_model(folder, cohort["dataset"], tmp_path / "out", progress=False)
    folder = _small_model(tmp_path / "patch", patch_length=30)
    with pytest.raises(ValueError, match=r"100 samples.*patch_length=30"):
        evaluate_model(folder, cohort["dataset"], tmp_path / "out", progress=False)


def test_cli_reports_bad_input(tmp_path, cohort, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    configure_parser(parser)
    args = parser.parse_args(
        ["--model", str(tmp_path / "absent"), "--dataset", str(cohort["dataset"]), "--output",
         str(tmp_path / "out")]
    )  # fmt: skip
    assert run(args) == 1
    assert "absent" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluation_classifies_features_pooled_as_asked(tmp_path, cohort, pretrained, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    configure_parser(parser)
    common = ["--dataset", str(cohort["dataset"]), "--max-windows", "6", "--mask-folds", "2",
              "--permutations", "100", "--bootstrap", "100", "--no-progress"]  # fmt: skip
    output = tmp_path / "latents"
    args = ["--model", str(pretrained), "--output", str(output), "--pooling", "latents"]
    assert run(parser.parse_args(args + common)) == 0
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["pooling"] == "latents"
    assert "logistic regression, pooled: latents" in (output / "report.md").read_text()
    assert 0.0 <= metrics["classification"]["features"]["logistic_regression"]["roc_auc"][0] <= 1
    # The saved pooling is left as it is; a mode without latents is refused with the reason.
    assert json.loads((pretrained / "config.json").read_text())["pooling"] == "mean"
    factorized = _small_model(tmp_path / "factorized", attention_mode="factorized")
    args = ["--model", str(factorized), "--output", str(tmp_path / "out"), "--pooling", "latents"]
    assert run(parser.parse_args(args + common)) == 1
    assert "pooling='latents' needs attention_mode='latent'" in capsys.readouterr().err


def test_unlabelled_dataset_skips_classification(tmp_path, cohort, caplog):
    import datasets

    rows = datasets.load_from_disk(str(cohort["dataset"]))
    keep = [i for i, s in enumerate(rows["subject"]) if s in ("01", "02", "07")]
    unlabelled = rows.select(keep).map(lambda row: {"label": ""})
    folder = tmp_path / "unlabelled"
    unlabelled.save_to_disk(str(folder))
    shutil.copy(cohort["dataset"] / "preprocessor_config.json", folder)
    model = _small_model(tmp_path / "model")
    (model / "split.json").write_text(json.dumps({"train": ["01", "02"], "test": ["07"]}))
    metrics = evaluate_model(
        model,
        folder,
        tmp_path / "out",
        subjects=["02", "07"],  # one of them pretrained on
        region="0,1,2,3",
        max_windows=4,
        n_permutations=100,
        progress=False,
    )
    assert metrics["skipped"]["classification"] == "dataset has no labels"
    assert "classification" not in metrics
    assert "reconstruction" in metrics and "attention" in metrics
    report = (tmp_path / "out" / "report.md").read_text()
    assert "dataset has no labels" in report
    # Subjects chosen by hand that the model was pretrained on are named as such.
    assert metrics["test_subjects_in_pretraining"] == ["02"]
    assert "1 of them in pretraining, so not held out: 02" in report
    assert "1 of the 2 evaluated subjects were in the model's pretraining" in caplog.text
