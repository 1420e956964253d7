"""Tests of training: batching, subject splits, subject-level metrics, input checks, pretraining
quality on the simulated cohort, crash-safe resume and two-process training."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from megfm_hf.data import MEGProcessor, build_dataset
from megfm_hf.data.manifest import RecordingSpec
from megfm_hf.data.testing import make_raw, write_raw
from megfm_hf.modeling.configuration_megfm import MEGConfig
from megfm_hf.modeling.modeling_megfm import MEGForMaskedSignalModeling
from megfm_hf.training import (
    CheckpointError,
    MEGDataCollator,
    TrainingDataError,
    WindowRows,
    aggregate_by_subject,
    encode_labels,
    load_windows,
    pretrain,
    split_subjects,
    subject_labels,
    subject_metrics,
)
from megfm_hf.training.checkpoints import COMPLETE_MARKER, last_complete_checkpoint
from megfm_hf.training.collator import WINDOW_INDEX
from megfm_hf.training.data import check_dataset_matches_model, select_subjects

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "pretrain.py"
TINY_MODEL = {
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "num_latents": 4,
    "decoder_hidden_size": 16,
    "decoder_num_attention_heads": 2,
}
#: 4 subjects x 12 one-second windows; the split holds out one subject per label, so 24
#: training windows: 6 steps per epoch at 4 windows per step.
TINY_SUBJECTS = [
    ("s0", 6, "control"),
    ("s1", 6, "patient"),
    ("s2", 5, "control"),
    ("s3", 5, "patient"),
]
MAX_STEPS, SAVE_STEPS, BATCH = 24, 6, 4


def _tiny_config(**overrides) -> MEGConfig:
    return MEGConfig(**{"sampling_rate": 100.0, "patch_length": 10, **TINY_MODEL, **overrides})


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    """Vectorview-like recordings of 18 or 15 sensors, windowed at 100 Hz into 1 s windows."""
    root = tmp_path_factory.mktemp("tiny")
    specs = []
    for row, (subject, n_sites, label) in enumerate(TINY_SUBJECTS):
        raw = make_raw(n_sites=n_sites, sfreq=200.0, duration=12.0, seed=row)
        path = write_raw(raw, root / f"{subject}_raw.fif")
        specs.append(RecordingSpec(str(path), subject, "1", "rest", label, row))
    processor = MEGProcessor(
        sfreq=100.0, patch_length=10, window_seconds=1.0, l_freq=1.0, h_freq=40.0, reject=None
    )
    build_dataset(specs, root / "dataset", processor=processor, secret="t")
    return root / "dataset"


@pytest.fixture(scope="module")
def tiny_windows(tiny_dataset) -> datasets.Dataset:
    return load_windows(tiny_dataset).with_format("numpy")


# --------------------------------------------------------------------------- collator


def _rows(windows: datasets.Dataset) -> list[dict]:
    """Two windows with 18 sensors and one with 15 (a smaller helmet)."""
    counts = np.array([len(row) for row in windows["sensor_types"]])
    return [
        windows[int(i)]
        for i in [*np.flatnonzero(counts == 18)[:2], np.flatnonzero(counts == 15)[0]]
    ]


def test_collator_pads_to_the_batch_maximum(tiny_windows):
    rows = _rows(tiny_windows)
    batch = MEGDataCollator()(rows)
    assert batch["input_values"].shape == (3, 18, 100)
    assert batch["sensor_positions"].shape == (3, 18, 6)
    assert batch["sensor_types"].dtype == torch.long
    assert "mask" not in batch
    small = rows[2]
    np.testing.assert_array_equal(batch["input_values"][2, :15].numpy(), small["input_values"])
    np.testing.assert_array_equal(
        batch["sensor_positions"][2, :15].numpy(), small["sensor_positions"]
    )
    assert not batch["sensor_mask"][2, 15:].any()
    assert batch["input_values"][2, 15:].abs().sum() == 0
    assert batch["sensor_positions"][2, 15:].abs().sum() == 0
    assert batch["sensor_mask"][:2].all()

    # Padding follows the batch, not the dataset: a batch of small windows stays small.
    assert MEGDataCollator()([small, small])["input_values"].shape == (2, 15, 100)
    assert MEGDataCollator(pad_to_multiple_of=8)(rows)["input_values"].shape == (3, 24, 100)


def test_collator_keeps_bad_sensors_of_a_row_and_zeroes_them(tiny_windows):
    rows = _rows(tiny_windows)
    bad = dict(rows[0])
    bad["sensor_mask"] = np.ones(18, dtype=bool)
    bad["sensor_mask"][[3, 7]] = False
    batch = MEGDataCollator()([bad, rows[2]])
    assert batch["sensor_mask"][0].tolist() == bad["sensor_mask"].tolist()
    assert batch["input_values"][0, [3, 7]].abs().sum() == 0
    assert batch["input_values"][0, 4].abs().sum() > 0


def test_collator_masks_are_reproducible_and_never_cover_padding(tiny_windows):
    rows = _rows(tiny_windows)
    config = _tiny_config()

    def masks(seed):
        collator = MEGDataCollator(config, draw_mask=True, seed=seed)
        return [collator(rows)["mask"] for _ in range(3)]

    first, again, other = masks(0), masks(0), masks(1)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    # Successive batches of one run get fresh masks.
    assert not torch.equal(first[0], first[1])
    for mask in first:
        assert mask.shape == (3, 18, 10)
        assert not mask[2, 15:].any(), "a padded sensor was masked"
        hidden = mask[2, :15].float().mean().item()
        assert hidden == pytest.approx(config.mask_ratio, abs=0.02)


def test_collator_masks_of_indexed_windows_depend_on_the_windows_alone(tiny_dataset):
    """Rows from WindowRows carry their dataset position; a batch's mask is a function of them,
    so a resumed run (which skips batches without collating them) draws the masks it would
    have drawn uninterrupted."""
    rows = WindowRows(load_windows(tiny_dataset))
    config = _tiny_config()
    batch_indices = [[5, 1, 9, 30], [2, 3, 4, 7], [30, 9, 1, 5]]

    def masks(collator, order):
        return {i: collator(rows.__getitems__(batch_indices[i]))["mask"] for i in order}

    straight = masks(MEGDataCollator(config, draw_mask=True), [0, 1, 2])
    skipped = masks(MEGDataCollator(config, draw_mask=True), [2, 1])
    assert torch.equal(straight[1], skipped[1]) and torch.equal(straight[2], skipped[2])
    assert not torch.equal(straight[0], straight[2]), "the same windows reordered got one mask"
    other_seed = masks(MEGDataCollator(config, draw_mask=True, seed=1), [1])
    assert not torch.equal(straight[1], other_seed[1])
    # Without positions (a stream), the collator's running stream gives each batch new masks.
    plain = [
        {k: v for k, v in row.items() if k != WINDOW_INDEX} for row in rows.__getitems__([1, 2])
    ]
    stream = MEGDataCollator(config, draw_mask=True)
    assert not torch.equal(stream(plain)["mask"], stream(plain)["mask"])
    with pytest.raises(ValueError, match="seed must be non-negative, got -1"):
        MEGDataCollator(config, draw_mask=True, seed=-1)


def test_collator_stacks_labels(tiny_windows):
    rows = [
        dict(row, labels=np.int64(label))
        for row, label in zip(_rows(tiny_windows), [1, 0, 1], strict=True)
    ]
    batch = MEGDataCollator()(rows)
    assert batch["labels"].tolist() == [1, 0, 1]
    assert batch["labels"].dtype == torch.long
    # Regression targets as the NumPy format delivers them (float32 scalars) stay fractional.
    targets = [np.float32(0.25), np.float32(1.5), np.float32(-2.0)]
    rows = [dict(row, labels=value) for row, value in zip(rows, targets, strict=True)]
    batch = MEGDataCollator()(rows)
    assert batch["labels"].dtype == torch.float32
    assert batch["labels"].tolist() == [0.25, 1.5, -2.0]


def test_collator_errors(tiny_windows):
    rows = _rows(tiny_windows)
    with pytest.raises(ValueError, match="empty list"):
        MEGDataCollator()([])
    short = dict(rows[1], input_values=rows[1]["input_values"][:, :50])
    with pytest.raises(ValueError, match=r"same number of samples; got \[50, 100\]"):
        MEGDataCollator()([rows[0], short])
    with pytest.raises(
        ValueError, match=r"95 samples, not a multiple of the model's patch_length=10"
    ):
        MEGDataCollator(_tiny_config())(
            [dict(rows[0], input_values=rows[0]["input_values"][:, :95])]
        )
    with pytest.raises(ValueError, match="needs the model config"):
        MEGDataCollator(draw_mask=True)


# --------------------------------------------------------------------------- subject splits


def _cohort_labels(n_control: int, n_patient: int, n_other: int = 0) -> dict[str, str]:
    labels = {f"c{i:02d}": "control" for i in range(n_control)}
    labels |= {f"p{i:02d}": "patient" for i in range(n_patient)}
    return labels | {f"o{i:02d}": "other" for i in range(n_other)}


def test_split_never_puts_a_subject_on_both_sides():
    labels = _cohort_labels(7, 12, 1)
    windows = [subject for subject in labels for _ in range(5)]  # subjects repeat, as windows do
    for seed in range(200):
        split = split_subjects(windows, 0.25, seed=seed, labels=labels)
        assert not set(split.train) & set(split.test)
        assert set(split.train) | set(split.test) == set(labels)
        test_labels = [labels[s] for s in split.test]
        train_labels = [labels[s] for s in split.train]
        # Stratified: every label with two or more subjects is on both sides, in proportion.
        assert test_labels.count("control") == 2 and test_labels.count("patient") == 3
        assert "control" in train_labels and "patient" in train_labels
        assert "other" in train_labels, "a single-subject label cannot be tested"
    seeds = {split_subjects(windows, 0.25, seed=s, labels=labels).test for s in range(20)}
    assert len(seeds) > 10, "the seed does not change the split"
    assert split_subjects(windows, 0.25, 3, labels) == split_subjects(windows, 0.25, 3, labels)


def test_split_keeps_one_of_each_label_on_each_side_of_the_smallest_cohort():
    labels = _cohort_labels(2, 2)
    for seed in range(50):
        split = split_subjects(list(labels), 0.2, seed=seed, labels=labels)
        assert sorted(labels[s] for s in split.test) == ["control", "patient"]
        assert sorted(labels[s] for s in split.train) == ["control", "patient"]
    two = split_subjects(["a", "b"], 0.5, seed=0)
    assert len(two.train) == len(two.test) == 1


def test_split_errors():
    with pytest.raises(TrainingDataError, match=r"at least 2 subjects to split, got 1: \['s1'\]"):
        split_subjects(["s1", "s1", "s1"], 0.2)
    with pytest.raises(TrainingDataError, match="got 0"):
        split_subjects([], 0.2)
    with pytest.raises(ValueError, match=r"test_fraction=1.0 must lie in \(0, 1\)"):
        split_subjects(["a", "b"], 1.0)


def test_subject_labels_one_label_per_subject():
    windows = datasets.Dataset.from_dict(
        {"subject": ["a", "a", "b", "b", "c"], "label": ["x", "x", "y", None, ""]}
    )
    assert subject_labels(windows) == {"a": "x", "b": "y", "c": ""}
    assert subject_labels(windows.remove_columns("label")) == {"a": "", "b": "", "c": ""}
    mixed = datasets.Dataset.from_dict({"subject": ["a", "a", "b"], "label": ["x", "y", "x"]})
    with pytest.raises(
        TrainingDataError, match=r"subject a has windows with different labels \['x', 'y'\]"
    ):
        subject_labels(mixed)


def test_select_subjects_keeps_only_their_windows(tiny_windows):
    picked = select_subjects(tiny_windows, ["s1", "s3"])
    assert set(picked["subject"]) == {"s1", "s3"}
    assert len(picked) == sum(s in ("s1", "s3") for s in tiny_windows["subject"])


# --------------------------------------------------------------------------- sampling


def _trainer(windows: datasets.Dataset, output_dir: Path, strategy: str, **loader: Any):
    from transformers import TrainingArguments

    from megfm_hf.training.trainer import build_trainer

    config = _tiny_config()
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=BATCH,
        train_sampling_strategy=strategy,
        report_to=[],
        use_cpu=True,
        seed=0,
        **loader,
    )
    collator = MEGDataCollator(config, draw_mask=True)
    return build_trainer(MEGForMaskedSignalModeling(config), args, windows, windows, collator)


def _padded_slots(batch: dict[str, torch.Tensor]) -> int:
    return int((~batch["sensor_mask"]).sum())


def test_window_rows_are_the_datasets_rows_decoded_a_batch_at_a_time(tiny_windows):
    from megfm_hf.training.rows import WindowRows

    rows = WindowRows(tiny_windows)
    counts = np.array([len(types) for types in tiny_windows["sensor_types"]])
    uniform = [int(i) for i in np.flatnonzero(counts == 18)[:3]]
    mixed = [*uniform[:2], int(np.flatnonzero(counts == 15)[0])]
    for indices in (uniform, mixed, uniform[:1]):
        for index, row in zip(indices, rows.__getitems__(indices), strict=True):
            expected = tiny_windows[index]
            assert set(row) == {*expected, WINDOW_INDEX}
            assert row[WINDOW_INDEX] == index
            for name, value in expected.items():
                np.testing.assert_array_equal(np.asarray(row[name]), value, err_msg=name)
    assert len(rows) == len(tiny_windows)
    assert rows.sensor_counts() == counts.tolist()
    np.testing.assert_array_equal(rows[5]["input_values"], tiny_windows[5]["input_values"])


def test_sensor_counts_come_from_the_arrow_column(tiny_windows):
    from megfm_hf.training.sampling import sensor_counts

    expected = [len(types) for types in tiny_windows["sensor_types"]]
    assert sorted(set(expected)) == [15, 18]
    assert sensor_counts(tiny_windows) == expected
    picked = select_subjects(tiny_windows, ["s1", "s2"])  # through an indices mapping
    assert sensor_counts(picked) == [len(types) for types in picked["sensor_types"]]


def test_sensor_grouped_sampler_mixes_counts_only_in_its_leftovers():
    from megfm_hf.training.sampling import SensorGroupedSampler

    counts = [306] * 10 + [275] * 7 + [157] * 9  # leftovers: 2, 3 and 1 windows
    sampler = SensorGroupedSampler(counts, 4, seed=0)
    order = list(sampler)
    assert sorted(order) == list(range(len(counts))) and len(sampler) == len(counts)
    groups = [[counts[i] for i in order[start : start + 4]] for start in range(0, len(order), 4)]
    assert sum(len(set(group)) > 1 for group in groups) <= 2
    assert all(len(set(group)) == 1 for group in groups[:5])  # the whole groups come first
    with pytest.raises(ValueError, match="group_size must be at least 1"):
        SensorGroupedSampler(counts, 0)


def test_sensor_grouped_sampler_orders_each_epoch_from_its_seed_alone():
    from megfm_hf.training.sampling import SensorGroupedSampler

    counts = [306] * 10 + [275] * 7 + [157] * 9
    sampler = SensorGroupedSampler(counts, 4, seed=3)
    first = list(sampler)
    torch.manual_seed(1234)  # the global random state plays no part
    assert list(sampler) == first == list(SensorGroupedSampler(counts, 4, seed=3))
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and sorted(second) == sorted(first)
    sampler.set_epoch(0)
    assert list(sampler) == first
    assert list(SensorGroupedSampler(counts, 4, seed=4)) != first
    with pytest.raises(ValueError, match="seed must be non-negative"):
        SensorGroupedSampler(counts, 4, seed=-1)


def test_group_by_length_batches_windows_of_one_sensor_array(tiny_windows, tmp_path):
    # Half the windows come from an 18-sensor helmet, half from a 15-sensor one.
    from megfm_hf.training.rows import WindowRows

    trainer = _trainer(tiny_windows, tmp_path, "group_by_length")
    assert isinstance(trainer.train_dataset, WindowRows)  # read a batch at a time
    grouped = list(trainer.get_train_dataloader())
    shuffled = list(_trainer(tiny_windows, tmp_path, "random").get_train_dataloader())
    assert sum(map(_padded_slots, grouped)) == 0
    assert sum(map(_padded_slots, shuffled)) > 0
    # Still one pass over every window, in a shuffled order.
    seen = torch.cat([batch["input_values"][:, 0, :4] for batch in grouped])
    every = torch.as_tensor(np.stack([row[0, :4] for row in tiny_windows["input_values"]]))
    assert len(seen) == len(every)
    assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, every.tolist()))
    assert not torch.equal(seen, every)


def _epochs(trainer, count: int = 2) -> list[list[dict[str, torch.Tensor]]]:
    """The training batches of ``count`` epochs, each begun as the ``Trainer`` begins one."""
    loader = trainer.get_train_dataloader()
    epochs = []
    for epoch in range(count):
        loader.set_epoch(epoch)
        epochs.append(list(loader))
    return epochs


def test_persistent_loader_workers_give_every_epoch_the_batches_of_the_main_process(
    tiny_windows, tmp_path
):
    # Workers that outlive an epoch must still follow the sampler's new order and draw the
    # same masks as batches made in the main process.
    from megfm_hf.training.trainer import LOADER_DEFAULTS

    assert LOADER_DEFAULTS["dataloader_persistent_workers"] == (
        LOADER_DEFAULTS["dataloader_num_workers"] > 0
    )
    persistent = _trainer(
        tiny_windows,
        tmp_path,
        "group_by_length",
        dataloader_num_workers=2,
        dataloader_persistent_workers=True,
    )
    in_process = _trainer(tiny_windows, tmp_path, "group_by_length")
    got, expected = _epochs(persistent), _epochs(in_process)
    orders = [torch.cat([batch["input_values"][:, 0, 0] for batch in epoch]) for epoch in expected]
    assert not torch.equal(*orders)  # a new order each epoch
    for got_epoch, expected_epoch in zip(got, expected, strict=True):
        for batch, reference in zip(got_epoch, expected_epoch, strict=True):
            assert batch.keys() == reference.keys()
            for key in reference:
                assert torch.equal(batch[key], reference[key]), key


def test_gpu_loader_defaults_copy_pinned_batches_without_waiting_for_the_gpu(
    tiny_windows, tmp_path
):
    from megfm_hf.training.pretrain import PretrainingArguments
    from megfm_hf.training.trainer import loader_defaults, run_from_command_line

    cpu, gpu = loader_defaults(cuda=False), loader_defaults(cuda=True)
    assert "accelerator_config" not in cpu and not cpu["dataloader_pin_memory"]
    assert cpu["dataloader_num_workers"] == 0 and not cpu["dataloader_persistent_workers"]
    assert gpu["dataloader_pin_memory"] and gpu["accelerator_config"] == {"non_blocking": True}
    # The GPU defaults reach accelerate, which then copies batches with non_blocking=True.
    loader = {key: value for key, value in gpu.items() if key != "train_sampling_strategy"}
    trainer = _trainer(tiny_windows, tmp_path, gpu["train_sampling_strategy"], **loader)
    assert trainer.accelerator.dataloader_config.non_blocking
    assert trainer.get_train_dataloader()._non_blocking
    # ... also from the command line, where they are the parser's defaults.
    parsed = {}

    def run(arguments, training_arguments):
        parsed["args"] = training_arguments
        return tmp_path

    argv = ["--dataset", str(tmp_path), "--output_dir", str(tmp_path), "--use_cpu", "true"]
    run_from_command_line(PretrainingArguments, gpu, run, argv, "pretrained")
    assert parsed["args"].accelerator_config.non_blocking
    assert parsed["args"].dataloader_num_workers == gpu["dataloader_num_workers"]


@pytest.mark.gpu
def test_pretraining_on_a_gpu_with_its_loader_defaults_follows_blocking_copies(
    tiny_dataset, tmp_path
):
    """On CUDA, `pretrain` with its GPU defaults (loader workers, pinned batches copied without
    waiting for the GPU, bf16) gives the losses of the same run with blocking copies."""
    from megfm_hf.training.trainer import LOADER_DEFAULTS

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    assert LOADER_DEFAULTS["accelerator_config"] == {"non_blocking": True}
    options = {"config": TINY_MODEL, "max_steps": 12, "batch_size": BATCH, "bf16": True}
    options |= {"save_strategy": "no", "logging_steps": 1, "disable_tqdm": True}
    copied = pretrain(tiny_dataset, tmp_path / "non-blocking", **options)
    blocking = pretrain(
        tiny_dataset, tmp_path / "blocking", accelerator_config={"non_blocking": False}, **options
    )
    losses = [_losses_by_step(model_dir.parent) for model_dir in (copied, blocking)]
    assert len(losses[0]) == 12 and losses[0].keys() == losses[1].keys()
    for step, loss in losses[0].items():
        assert loss == pytest.approx(losses[1][step], rel=2e-2), step


def test_persistent_workers_without_workers_are_turned_off(tiny_windows, tmp_path):
    trainer = _trainer(
        tiny_windows, tmp_path, "group_by_length", dataloader_persistent_workers=True
    )
    assert not trainer.args.dataloader_persistent_workers
    assert len(list(trainer.get_train_dataloader())) > 0


def test_evaluation_keeps_the_dataset_order_when_training_groups_by_sensors(tiny_windows, tmp_path):
    # Predictions are matched to windows (and subjects) by position.
    trainer = _trainer(tiny_windows, tmp_path, "group_by_length")
    batches = list(trainer.get_test_dataloader(tiny_windows))
    counts = [int(count) for batch in batches for count in batch["sensor_mask"].sum(dim=1)]
    assert counts == [len(types) for types in tiny_windows["sensor_types"]]
    first = tiny_windows[0]["input_values"]
    np.testing.assert_array_equal(batches[0]["input_values"][0, : len(first)].numpy(), first)


# --------------------------------------------------------------------------- streaming


def _window_key(row: dict) -> tuple[str, float]:
    return str(row["recording"]), round(float(row["onset_s"]), 6)


def test_shards_are_indexed_by_subject_without_reading_signals(tiny_dataset, tiny_windows):
    from megfm_hf.training.streaming import index_shards, shard_subject_labels

    shards = index_shards(tiny_dataset)
    assert sorted(shard.subject for shard in shards) == ["s0", "s1", "s2", "s3"]
    assert shard_subject_labels(shards) == subject_labels(tiny_windows)
    assert sum(shard.n_windows for shard in shards) == len(tiny_windows)
    assert {shard.sfreq for shard in shards} == {100.0}


def test_streamed_windows_are_the_datasets_windows_in_a_new_order_each_epoch(
    tiny_dataset, tiny_windows
):
    from megfm_hf.training.streaming import index_shards, stream_windows

    expected = {_window_key(row): row["input_values"] for row in tiny_windows}
    shards = [shard.path for shard in index_shards(tiny_dataset)]
    in_order = [_window_key(row) for row in stream_windows(shards, buffer_size=None)]
    stream = stream_windows(shards, buffer_size=16, seed=0)
    first = list(stream)
    assert len(first) == len(expected) and len(set(map(_window_key, first))) == len(expected)
    for row in first:
        np.testing.assert_array_equal(row["input_values"], expected[_window_key(row)])
    assert [_window_key(row) for row in first] != in_order
    stream.set_epoch(1)
    assert [_window_key(row) for row in stream] != [_window_key(row) for row in first]


def test_grouped_stream_keeps_every_window_and_groups_one_sensor_array(tiny_dataset, tiny_windows):
    from megfm_hf.training.sampling import SensorGroupedStream
    from megfm_hf.training.streaming import index_shards, stream_windows

    shards = [shard.path for shard in index_shards(tiny_dataset)]
    stream = SensorGroupedStream(stream_windows(shards, buffer_size=16, seed=0), 5)
    rows = list(stream)
    assert sorted(map(_window_key, rows)) == sorted(map(_window_key, tiny_windows))
    counts = [len(row["sensor_types"]) for row in rows]
    groups = [set(counts[start : start + 5]) for start in range(0, len(counts), 5)]
    # 24 windows of each helmet: 4 whole groups each, then 4 + 4 left over.
    assert all(len(group) == 1 for group in groups[:8]) and len(groups) == 10
    stream.set_epoch(1)  # forwarded: another shuffle
    assert [_window_key(row) for row in stream] != [_window_key(row) for row in rows]
    with pytest.raises(ValueError, match="group_size must be at least 1"):
        SensorGroupedStream(rows, 0)


def test_data_loader_workers_share_the_streamed_shards(tiny_dataset, tiny_windows):
    from torch.utils.data import DataLoader

    from megfm_hf.training.streaming import index_shards, stream_windows

    shards = [shard.path for shard in index_shards(tiny_dataset)]
    loader = DataLoader(
        stream_windows(shards, buffer_size=8),
        batch_size=BATCH,
        num_workers=2,
        collate_fn=MEGDataCollator(_tiny_config(), draw_mask=True),
    )
    batches = list(loader)
    assert sum(len(batch["input_values"]) for batch in batches) == len(tiny_windows)
    # Each window once: their first samples are all different.
    firsts = torch.cat([batch["input_values"][:, 0, 0] for batch in batches])
    assert len(set(firsts.tolist())) == len(tiny_windows)


def test_streamed_windows_carry_their_position_in_the_shards(tiny_dataset, tiny_windows):
    from megfm_hf.training.streaming import index_shards, stream_windows

    shards = [shard.path for shard in index_shards(tiny_dataset)]
    in_order = list(stream_windows(shards, buffer_size=None))
    assert [row[WINDOW_INDEX] for row in in_order] == list(range(len(tiny_windows)))
    index_of = {_window_key(row): row[WINDOW_INDEX] for row in in_order}
    for epoch in (0, 1):  # the same index in every order
        stream = stream_windows(shards, buffer_size=16, seed=0)
        stream.set_epoch(epoch)
        rows = list(stream)
        assert [row[WINDOW_INDEX] for row in rows] != list(range(len(rows)))
        assert all(row[WINDOW_INDEX] == index_of[_window_key(row)] for row in rows)
    # So the mask of a batch depends on its windows alone, as for the Arrow dataset's rows.
    collator = MEGDataCollator(_tiny_config(), draw_mask=True)
    mask = collator(in_order[:BATCH])["mask"]
    collator(in_order[BATCH : 2 * BATCH])
    assert torch.equal(collator(in_order[:BATCH])["mask"], mask)


def test_repeated_stream_reshuffles_every_pass_and_never_ends(tiny_dataset, tiny_windows):
    from megfm_hf.training.streaming import RepeatedStream, index_shards

    shards = [shard.path for shard in index_shards(tiny_dataset)]
    n = len(tiny_windows)
    rows = iter(RepeatedStream(shards, buffer_size=16, seed=0))
    passes = [[_window_key(next(rows)) for _ in range(n)] for _ in range(3)]
    assert all(sorted(keys) == sorted(passes[0]) and len(set(keys)) == n for keys in passes)
    assert passes[0] != passes[1] != passes[2]
    again = iter(RepeatedStream(shards, buffer_size=16, seed=0))
    assert [_window_key(next(again)) for _ in range(3 * n)] == sum(passes, [])
    with pytest.raises(TrainingDataError, match="no shards to stream"):
        RepeatedStream([])


def test_evaluating_streamed_windows_changes_neither_training_nor_evaluation_masks(
    tiny_dataset, tiny_windows, tmp_path
):
    from megfm_hf.training.streaming import index_shards, stream_windows

    # Evaluation in the middle of a streamed run leaves its training losses as they were.
    options = {"config": TINY_MODEL, "max_steps": 6, "batch_size": BATCH, "streaming": True}
    options |= {"save_strategy": "no", "logging_steps": 1, "disable_tqdm": True}
    plain = pretrain(tiny_dataset, tmp_path / "plain", **options)
    evaluated = pretrain(
        tiny_dataset, tmp_path / "evaluated", eval_strategy="steps", eval_steps=2, **options
    )
    losses = [_losses_by_step(model_dir.parent) for model_dir in (plain, evaluated)]
    assert len(losses[0]) == 6 and losses[1] == losses[0]
    # Evaluating twice hides the same tokens: the same loss.
    shards = [shard.path for shard in index_shards(tiny_dataset)]
    trainer = _trainer(tiny_windows, tmp_path / "trainer", "random")
    held_out = stream_windows(shards, buffer_size=None)
    first = trainer.evaluate(held_out)["eval_loss"]
    assert trainer.evaluate(held_out)["eval_loss"] == first


class StepCounter(TrainerCallback):
    """Counts the optimiser steps a ``Trainer`` reports to its callbacks."""

    def __init__(self):
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


def test_streaming_pretraining_trains_on_the_training_subjects_shards(tiny_dataset, tmp_path):
    counter = StepCounter()
    model_dir = pretrain(
        tiny_dataset,
        tmp_path / "run",
        config=TINY_MODEL,
        max_steps=4,
        batch_size=BATCH,
        streaming=True,
        callbacks=[counter],
        save_strategy="no",
        disable_tqdm=True,
    )
    assert counter.steps == 4  # user callbacks reach the Trainer
    split = json.loads((model_dir / "split.json").read_text())
    assert split["train"] and split["test"] and not set(split["train"]) & set(split["test"])
    state = json.loads((model_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    metrics = json.loads((model_dir / "training_metrics.json").read_text())
    assert np.isfinite(metrics["eval_loss"]) and metrics["eval_loss"] > 0
    arguments = json.loads((model_dir / "training_args.json").read_text())
    assert arguments["pretraining"]["streaming"] is True
    MEGForMaskedSignalModeling.from_pretrained(model_dir)

    with pytest.raises(TrainingDataError, match="--streaming needs --max_steps"):
        pretrain(tiny_dataset, tmp_path / "epochs", config=TINY_MODEL, max_steps=-1, streaming=True)


# --------------------------------------------------------------------------- subject metrics


def test_aggregate_by_subject_means_window_probabilities():
    subjects = ["b", "a", "b", "a", "a", "c"]
    probabilities = np.array(
        [[0.9, 0.1], [0.2, 0.8], [0.5, 0.5], [0.4, 0.6], [0.3, 0.7], [0.6, 0.4]]
    )
    labels = [0, 1, 0, 1, 1, 1]
    result = aggregate_by_subject(subjects, probabilities, labels)
    assert result.subjects.tolist() == ["a", "b", "c"]  # one prediction per subject
    np.testing.assert_allclose(result.probabilities, [[0.3, 0.7], [0.7, 0.3], [0.6, 0.4]])
    assert result.labels.tolist() == [1, 0, 1]
    assert result.n_windows.tolist() == [3, 2, 1]
    with pytest.raises(ValueError, match=r"subject a has windows with labels \[0, 1\]"):
        aggregate_by_subject(["a", "a"], probabilities[:2], [0, 1])
    with pytest.raises(ValueError, match="got 2 subjects, 3 labels and 2 probability rows"):
        aggregate_by_subject(["a", "b"], probabilities[:2], [0, 1, 1])


def test_subject_metrics_against_hand_computed_values():
    # Subjects 0-3 are controls (label 0), 4-8 patients (label 1); each has two windows.
    patient_probability = np.array([0.1, 0.3, 0.6, 0.45, 0.9, 0.8, 0.4, 0.7, 0.2])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1])
    subjects = np.repeat([f"s{i}" for i in range(9)], 2)
    window = np.repeat(patient_probability, 2) + np.tile([-0.05, 0.05], 9)  # mean is unchanged
    probabilities = np.stack([1 - window, window], axis=1)
    predictions = aggregate_by_subject(subjects, probabilities, np.repeat(labels, 2))
    metrics = subject_metrics(predictions)

    # Predicted patients (p > 0.5): s2 (control), s4, s5, s7 -> TP 3, FN 2, TN 3, FP 1.
    sensitivity, specificity = 3 / 5, 3 / 4
    assert metrics["n_subjects"] == 9
    assert metrics["sensitivity"] == pytest.approx(sensitivity)
    assert metrics["specificity"] == pytest.approx(specificity)
    assert metrics["balanced_accuracy"] == pytest.approx((sensitivity + specificity) / 2)
    precision = 3 / 4
    assert metrics["f1"] == pytest.approx(2 * precision * sensitivity / (precision + sensitivity))
    # AUROC: fraction of (patient, control) pairs ranked correctly; patient 0.4 beats 0.1 and
    # 0.3, patient 0.2 beats 0.1: (4 + 4 + 2 + 4 + 1) / 20.
    assert metrics["roc_auc"] == pytest.approx(15 / 20)

    # Controls as the positive class swap sensitivity and specificity.
    swapped = subject_metrics(predictions, positive_label=0)
    assert swapped["sensitivity"] == pytest.approx(specificity)
    assert swapped["specificity"] == pytest.approx(sensitivity)
    assert swapped["roc_auc"] == pytest.approx(15 / 20)


def test_subject_metrics_with_one_class_reports_nan_auroc():
    predictions = aggregate_by_subject(["a", "b"], [[0.3, 0.7], [0.6, 0.4]], [1, 1])
    metrics = subject_metrics(predictions)
    assert np.isnan(metrics["roc_auc"])
    assert np.isnan(metrics["specificity"])
    assert metrics["sensitivity"] == 0.5


# --------------------------------------------------------------------------- bad input


def test_labels_missing_or_empty_stop_fine_tuning(tiny_windows):
    with pytest.raises(TrainingDataError, match="no column 'diagnosis'"):
        encode_labels(tiny_windows, label_column="diagnosis")
    unlabelled = tiny_windows.with_format(None).map(lambda row: {"label": ""}, keep_in_memory=True)
    with pytest.raises(TrainingDataError, match=r"48 of 48 windows have no 'label'"):
        encode_labels(unlabelled)
    # Null labels (Parquet from elsewhere) are missing labels, not a class called "None".
    nulls = ["control" if i % 2 else None for i in range(len(tiny_windows))]
    partly = tiny_windows.with_format(None).remove_columns("label").add_column("label", nulls)
    with pytest.raises(TrainingDataError, match=r"24 of 48 windows have no 'label'"):
        encode_labels(partly)


def test_single_class_and_unknown_labels_stop_fine_tuning(tiny_windows):
    single = tiny_windows.with_format(None).map(
        lambda row: {"label": "control"}, keep_in_memory=True
    )
    with pytest.raises(
        TrainingDataError, match="all windows carry the label 'control'.*two classes"
    ):
        encode_labels(single)
    with pytest.raises(
        TrainingDataError, match=r"labels \['patient'\] are not among .*\['control'\]"
    ):
        encode_labels(tiny_windows, label_names=["control"])
    encoded, names = encode_labels(tiny_windows)
    assert names == ["control", "patient"]
    expected = [names.index(label) for label in tiny_windows["label"]]
    assert list(encoded["labels"]) == expected


def test_dataset_and_model_disagreeing_on_rate_or_patch_length(tiny_windows):
    check_dataset_matches_model(tiny_windows, _tiny_config())
    with pytest.raises(TrainingDataError, match=r"sampled at \[100.0\] Hz .* sampling_rate=200 Hz"):
        check_dataset_matches_model(tiny_windows, _tiny_config(sampling_rate=200.0))
    with pytest.raises(TrainingDataError, match="100 samples, not a multiple .* patch_length=30"):
        check_dataset_matches_model(tiny_windows, _tiny_config(patch_length=30))


def test_pretraining_a_model_at_another_rate_stops_before_training(tiny_dataset, tmp_path):
    other = tmp_path / "model-200hz"
    MEGForMaskedSignalModeling(_tiny_config(sampling_rate=200.0)).save_pretrained(other)
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=r"sfreq=100.0 Hz.*sampling_rate=200.0 Hz"):
        pretrain(tiny_dataset, run, model_name_or_path=other, max_steps=2, batch_size=4)
    assert not list(run.glob("checkpoint-*")) and not (run / "model").exists()


def test_pretraining_builds_the_model_from_every_field_of_the_given_config(
    tiny_dataset, tmp_path, caplog
):
    extra = {"mlp_ratio": 2.0, "hidden_dropout_prob": 0.1, "max_patches": 32, "hidden_act": "silu"}
    # At another rate and patch length than the dataset's.
    config = MEGConfig(**TINY_MODEL, **extra, pooling="max", sampling_rate=200.0, patch_length=20)
    options = {"max_steps": 1, "batch_size": BATCH, "save_strategy": "no", "disable_tqdm": True}
    with caplog.at_level("WARNING", logger="megfm_hf.training.pretrain"):
        model_dir = pretrain(tiny_dataset, tmp_path / "run", config=config, **options)
    assert "sampling_rate=100.0, patch_length=10" in caplog.text
    assert "sampling_rate=200.0, patch_length=20 replaced" in caplog.text
    saved = MEGConfig.from_pretrained(model_dir)
    expected = {**config.to_dict(), "sampling_rate": 100.0, "patch_length": 10}
    for name in ("mlp_ratio", "hidden_dropout_prob", "max_patches", "hidden_act", "pooling"):
        assert getattr(saved, name) == expected[name], name
    assert (saved.sampling_rate, saved.patch_length) == (100.0, 10)
    # Fields left at their defaults are not reported as replaced.
    caplog.clear()
    with caplog.at_level("WARNING", logger="megfm_hf.training.pretrain"):
        pretrain(tiny_dataset, tmp_path / "run2", config=dict(TINY_MODEL), **options)
    assert "replaced" not in caplog.text
    assert (config.sampling_rate, config.patch_length) == (200.0, 20)  # the caller's, untouched
    arguments = json.loads((model_dir / "training_args.json").read_text())["pretraining"]
    assert arguments["hidden_size"] == TINY_MODEL["hidden_size"]

    # A dict keeps every field too, and names a misspelt one instead of ignoring it.
    model_dir = pretrain(
        tiny_dataset, tmp_path / "dict", config={**TINY_MODEL, "mlp_ratio": 3.0}, **options
    )
    assert MEGConfig.from_pretrained(model_dir).mlp_ratio == 3.0
    with pytest.raises(ValueError, match=r"MEGConfig does not have: \['mlp_ration'\]"):
        pretrain(tiny_dataset, tmp_path / "typo", config={"mlp_ration": 2.0}, **options)
    with pytest.raises(ValueError, match="either a config .* or model_name_or_path"):
        pretrain(tiny_dataset, tmp_path / "both", config=config, model_name_or_path=model_dir)


def test_empty_dataset_stops_before_training(tiny_dataset, tiny_windows, tmp_path):
    with pytest.raises(TrainingDataError, match="is empty: no windows to train on"):
        check_dataset_matches_model(tiny_windows.select([]), _tiny_config())
    empty = tmp_path / "empty"
    tiny_windows.with_format(None).select([]).save_to_disk(str(empty))
    with pytest.raises(TrainingDataError, match="has no windows"):
        load_windows(empty)
    empty_shards = tmp_path / "empty-parquet"
    empty_shards.mkdir()
    tiny_windows.with_format(None).select([]).to_parquet(str(empty_shards / "shard.parquet"))
    with pytest.raises(TrainingDataError, match="has no windows"):
        load_windows(empty_shards)
    with pytest.raises(TrainingDataError, match="has no windows"):
        pretrain(empty, tmp_path / "run", config=TINY_MODEL, max_steps=2)
    with pytest.raises(TrainingDataError, match="does not exist"):
        load_windows(tmp_path / "missing")
    no_processor = tmp_path / "no-processor"
    tiny_windows.with_format(None).save_to_disk(str(no_processor))
    with pytest.raises(TrainingDataError, match="no preprocessor_config.json"):
        pretrain(no_processor, tmp_path / "run", config=TINY_MODEL, max_steps=2)


# --------------------------------------------------------------------------- command line


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_training_commands_print_their_own_help(command, capsys):
    from megfm_hf.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: megfm {command} ")
    # The run's own options and the Trainer's.
    assert "--dataset" in text and "--max_steps" in text and "--bf16" in text


def test_megfm_pretrain_then_finetune_from_the_command_line(tiny_dataset, tmp_path, capsys):
    from megfm_hf import MEGForSequenceClassification
    from megfm_hf.cli import main

    common = ["--dataset", str(tiny_dataset), "--max_steps", "2", "--disable_tqdm", "true"]
    common += ["--per_device_train_batch_size", "4", "--save_strategy", "no"]
    tiny = [part for name, value in TINY_MODEL.items() for part in (f"--{name}", str(value))]
    assert main(["pretrain", *common, "--output_dir", str(tmp_path / "run"), *tiny]) == 0
    model = tmp_path / "run" / "model"
    assert MEGForMaskedSignalModeling.from_pretrained(model).config.hidden_size == 32

    clf = tmp_path / "clf"
    arguments = ["--model_name_or_path", str(model), "--output_dir", str(clf)]
    # LoRA under the Trainer's reentrant activation checkpointing: the adapters must learn.
    lora = ["--strategy", "lora", "--learning_rate", "1e-2", "--activation_checkpointing", "true"]
    lora += ["--activation_checkpointing_kwargs", '{"use_reentrant": true}']
    assert main(["finetune", *common, *arguments, *lora]) == 0
    classifier = MEGForSequenceClassification.from_pretrained(clf / "model")
    assert set(classifier.config.id2label.values()) == {"control", "patient"}
    pretrained = MEGForMaskedSignalModeling.from_pretrained(model).state_dict()
    for name, weight in classifier.state_dict().items():
        if name.endswith("q_proj.weight"):  # the merged adapters moved every query projection
            # (a self-attention's qkv_proj, a cross-attention's q_proj)
            assert not torch.equal(weight, pretrained[name]), name
    assert (clf / "subject_metrics.json").is_file()
    out = capsys.readouterr().out
    assert f"pretrained model written to {model}" in out
    assert f"fine-tuned model written to {clf / 'model'}" in out

    # A dataset that is not there: one line naming it, no traceback.
    missing = tmp_path / "missing"
    code = main(["pretrain", "--dataset", str(missing), "--output_dir", str(tmp_path / "x")])
    assert code == 1
    error = capsys.readouterr().err
    assert error.strip() == f"megfm pretrain: error: dataset folder {missing} does not exist."
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", *common, *arguments, "--strategy", "everything"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'everything'" in capsys.readouterr().err


# --------------------------------------------------------------------------- pretraining quality


def _held_out_nmse(model_dir: Path, dataset_dir: Path) -> dict[str, dict[str, float]]:
    """NMSE of the model and of trivial predictors on hidden tokens of held-out subjects."""
    model = MEGForMaskedSignalModeling.from_pretrained(model_dir).eval()
    config = model.config
    held_out = json.loads((model_dir / "split.json").read_text())["test"]
    windows = select_subjects(load_windows(dataset_dir), held_out).with_format("numpy")
    collator = MEGDataCollator(config)
    generator = torch.Generator().manual_seed(1234)
    sums = {}
    for start in range(0, len(windows), 32):
        batch = collator([windows[i] for i in range(start, min(start + 32, len(windows)))])
        num_patches = batch["input_values"].shape[-1] // config.patch_length
        mask = model.draw_mask(batch["sensor_mask"], num_patches, generator)
        with torch.no_grad():
            reconstruction = model(**batch, mask=mask).reconstruction
        target = batch["input_values"]
        hidden = (mask & batch["sensor_mask"][:, :, None]).repeat_interleave(
            config.patch_length, -1
        )
        predictions = {
            "model": reconstruction,
            "zeros": torch.zeros_like(target),
            "sensor_mean": target.mean(dim=-1, keepdim=True).expand_as(target),
        }
        for code, kind in enumerate(config.sensor_types):
            of_type = hidden & (batch["sensor_types"] == code)[:, :, None]
            if not of_type.any():
                continue
            entry = sums.setdefault(kind, {"target": 0.0} | {name: 0.0 for name in predictions})
            entry["target"] += target[of_type].pow(2).sum().item()
            for name, prediction in predictions.items():
                entry[name] += (prediction - target)[of_type].pow(2).sum().item()
    return {
        kind: {name: value / entry["target"] for name, value in entry.items() if name != "target"}
        for kind, entry in sums.items()
    }


@pytest.mark.slow
def test_pretrained_model_reconstructs_held_out_subjects(pretrained_model, simulated_cohort):
    nmse = _held_out_nmse(pretrained_model, simulated_cohort["dataset"])
    print(f"held-out masked reconstruction NMSE: {nmse}")
    assert set(nmse) == {"magnetometer", "planar_gradiometer"}
    for kind, values in nmse.items():
        assert values["zeros"] == pytest.approx(1.0)
        assert values["sensor_mean"] > 0.9, f"{kind}: the window mean is not a trivial predictor"
    # Measured (mask seeds 1-3 and 1234): magnetometers 0.32-0.33, planar gradiometers
    # 0.79-0.80, against 0.99 for each sensor's window mean.
    assert nmse["magnetometer"]["model"] < 0.5
    assert nmse["magnetometer"]["model"] < nmse["magnetometer"]["sensor_mean"] - 0.4
    assert nmse["planar_gradiometer"]["model"] < 0.9
    assert nmse["planar_gradiometer"]["model"] < nmse["planar_gradiometer"]["sensor_mean"] - 0.1


# --------------------------------------------------------------------------- crash safety


def _environment() -> dict[str, str]:
    # One thread per process: on a busy CPU, spinning OpenMP threads slow training many-fold.
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "TRANSFORMERS_VERBOSITY": "error",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }


def _arguments(dataset: Path, run: Path, *extra: str) -> list[str]:
    options = {
        "dataset": dataset,
        "output_dir": run,
        "max_steps": MAX_STEPS,
        "save_steps": SAVE_STEPS,
        "per_device_train_batch_size": BATCH,
        "logging_steps": 1,
        "disable_tqdm": "true",
        **TINY_MODEL,
    }
    return [part for name, value in options.items() for part in (f"--{name}", str(value))] + list(
        extra
    )


#: Runs the script with Trainer methods patched: a pause per step (so a test can kill the run
#: between checkpoints) or a SIGKILL while it writes the RNG state of checkpoint CRASH_AT_STEP.
WRAPPER = """
import os, runpy, signal, sys, time
import transformers

pause = float(os.environ.get("PAUSE_PER_STEP", "0"))
crash_at = int(os.environ.get("CRASH_AT_STEP", "0"))
training_step, save_rng_state = transformers.Trainer.training_step, transformers.Trainer._save_rng_state

def slow_training_step(self, *args, **kwargs):
    time.sleep(pause)
    return training_step(self, *args, **kwargs)

def crashing_save_rng_state(self, output_dir):
    if self.state.global_step == crash_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return save_rng_state(self, output_dir)

transformers.Trainer.training_step = slow_training_step
transformers.Trainer._save_rng_state = crashing_save_rng_state
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _run_script(arguments: list[str], *, wrapped: dict[str, str] | None = None, timeout=180):
    command = [sys.executable, str(SCRIPT), *arguments]
    if wrapped is not None:
        command = [sys.executable, "-c", WRAPPER, *command[1:]]
    environment = {**_environment(), **(wrapped or {})}
    return subprocess.run(
        command, env=environment, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT
    )


def _logged_steps(output: str) -> int:
    """Optimiser steps the Trainer logged (one ``{'loss': ...}`` line per step)."""
    return sum(line.startswith("{'loss'") for line in output.splitlines())


def _final_state(run: Path) -> dict:
    return json.loads((run / "model" / "trainer_state.json").read_text())


def _logged_losses(run: Path) -> list[float]:
    """The training loss of every optimiser step, in order."""
    return [entry["loss"] for entry in _final_state(run)["log_history"] if "loss" in entry]


def _losses_by_step(run: Path) -> dict[int, float]:
    """The training loss logged at every optimiser step."""
    return {
        entry["step"]: entry["loss"]
        for entry in _final_state(run)["log_history"]
        if "loss" in entry
    }


#: 12 steps of 4 windows: two passes over the 24 training windows, a checkpoint every 3 steps.
RESUME_RUN = {"config": TINY_MODEL, "max_steps": 12, "batch_size": BATCH, "save_steps": 3}
RESUME_RUN |= {"save_total_limit": None, "logging_steps": 1, "disable_tqdm": True}


@pytest.mark.parametrize("streaming", [False, True], ids=["arrow", "streamed"])
def test_resuming_mid_way_through_the_second_pass_repeats_the_uninterrupted_run(
    tiny_dataset, tmp_path, streaming
):
    uninterrupted = tmp_path / "uninterrupted"
    pretrain(tiny_dataset, uninterrupted, streaming=streaming, **RESUME_RUN)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    # Step 9: half-way through the second pass (6 steps per pass over the training windows).
    shutil.copytree(uninterrupted / "checkpoint-9", resumed / "checkpoint-9")
    counter = StepCounter()
    pretrain(
        tiny_dataset, resumed, streaming=streaming, resume=True, callbacks=[counter], **RESUME_RUN
    )
    assert counter.steps == 3
    expected, losses = _losses_by_step(uninterrupted), _losses_by_step(resumed)
    assert sorted(losses) == sorted(expected) == list(range(1, 13))
    assert [losses[step] for step in (10, 11, 12)] == [expected[step] for step in (10, 11, 12)]


class SimulatedKill(Exception):
    """Stands for a kill of the training process at the moment it is raised."""


def test_a_kill_while_old_checkpoints_are_deleted_leaves_a_complete_one(
    tiny_dataset, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    options = {**RESUME_RUN, "max_steps": 6, "save_steps": 2, "save_total_limit": 1}
    rmtree = shutil.rmtree

    def kill_after_deleting_a_checkpoint(path, *args, **kwargs):
        rmtree(path, *args, **kwargs)
        if Path(path).parent == run and Path(path).name.startswith("checkpoint-"):
            raise SimulatedKill(path)

    monkeypatch.setattr(shutil, "rmtree", kill_after_deleting_a_checkpoint)
    with pytest.raises(SimulatedKill, match="checkpoint-2"):
        pretrain(tiny_dataset, run, **options)
    monkeypatch.undo()
    # checkpoint-4 was marked complete before checkpoint-2 went.
    assert [path.name for path in run.glob("checkpoint-*")] == ["checkpoint-4"]
    assert last_complete_checkpoint(run) == run / "checkpoint-4"
    assert json.loads((run / "checkpoint-4" / COMPLETE_MARKER).read_text())["global_step"] == 4
    counter = StepCounter()
    pretrain(tiny_dataset, run, resume=True, callbacks=[counter], **options)
    assert counter.steps == 2 and _final_state(run)["global_step"] == 6


def test_resuming_without_a_complete_checkpoint_stops_and_says_so(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    half_written = run / "checkpoint-2"
    half_written.mkdir(parents=True)
    (half_written / "model.safetensors").write_bytes(b"")
    options = {**RESUME_RUN, "max_steps": 2}
    with pytest.raises(CheckpointError, match=r"holds 1 checkpoint\(s\) but none was written"):
        pretrain(tiny_dataset, run, resume=True, **options)
    (moved,) = run.glob("incomplete-checkpoint-2-*")
    assert (moved / "model.safetensors").is_file() and not (run / "model").exists()
    with pytest.raises(CheckpointError, match="Run without --resume"):  # still nothing to resume
        pretrain(tiny_dataset, run, resume=True, **options)
    # Without resume it trains from the first step; an empty folder resumes from nothing.
    pretrain(tiny_dataset, run, **options)
    assert _final_state(run)["global_step"] == 2
    pretrain(tiny_dataset, tmp_path / "new", resume=True, **options)
    assert _final_state(tmp_path / "new")["global_step"] == 2


@pytest.mark.slow
def test_resume_after_a_kill_between_checkpoints(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    wrapper = [sys.executable, "-c", WRAPPER, str(SCRIPT), *_arguments(tiny_dataset, run)]
    environment = {**_environment(), "PAUSE_PER_STEP": "0.25"}
    process = subprocess.Popen(
        wrapper,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO_ROOT,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(run.glob(f"checkpoint-*/{COMPLETE_MARKER}")):
            assert process.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint was marked complete"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert not (run / "model").exists()
    checkpoint = last_complete_checkpoint(run)
    resumed_from = int(checkpoint.name.split("-")[1])
    assert resumed_from < MAX_STEPS and resumed_from % SAVE_STEPS == 0

    result = _run_script(_arguments(tiny_dataset, run, "--resume", "true"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert _final_state(run)["global_step"] == MAX_STEPS
    # It continued from the marked checkpoint rather than starting again.
    assert _logged_steps(result.stdout + result.stderr) == MAX_STEPS - resumed_from
    steps = [entry["step"] for entry in _final_state(run)["log_history"] if "loss" in entry]
    assert steps == list(range(1, MAX_STEPS + 1))
    model = MEGForMaskedSignalModeling.from_pretrained(run / "model")
    assert model.config.hidden_size == TINY_MODEL["hidden_size"]


@pytest.mark.slow
@pytest.mark.parametrize("streaming", ["false", "true"], ids=["arrow", "streamed"])
def test_resume_after_a_kill_during_a_checkpoint_write(tiny_dataset, tmp_path, streaming):
    run = tmp_path / "run"
    crash = {"CRASH_AT_STEP": str(2 * SAVE_STEPS)}
    options = ("--streaming", streaming)
    killed = _run_script(_arguments(tiny_dataset, run, *options), wrapped=crash)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    half_written = run / f"checkpoint-{2 * SAVE_STEPS}"
    assert (half_written / "model.safetensors").is_file()
    assert not (half_written / COMPLETE_MARKER).exists()
    assert last_complete_checkpoint(run) == run / f"checkpoint-{SAVE_STEPS}"

    result = _run_script(_arguments(tiny_dataset, run, *options, "--resume", "true"))
    assert result.returncode == 0, result.stderr[-3000:]
    (moved,) = run.glob(f"incomplete-checkpoint-{2 * SAVE_STEPS}-*")
    assert (moved / "model.safetensors").is_file() and not (moved / COMPLETE_MARKER).exists()
    assert _logged_steps(result.stdout + result.stderr) == MAX_STEPS - SAVE_STEPS
    assert _final_state(run)["global_step"] == MAX_STEPS
    assert (run / f"checkpoint-{MAX_STEPS}" / COMPLETE_MARKER).is_file()

    # The resumed run trains on the windows and masks of an uninterrupted one, step for step.
    uninterrupted = tmp_path / "uninterrupted"
    result = _run_script(_arguments(tiny_dataset, uninterrupted, *options))
    assert result.returncode == 0, result.stderr[-3000:]
    assert _logged_losses(run) == pytest.approx(_logged_losses(uninterrupted), rel=1e-4)


# --------------------------------------------------------------------------- two processes


def _torchrun(arguments: list[str], timeout=300):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(SCRIPT)]
    return subprocess.run(
        [*command, *arguments],
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
    )


@pytest.mark.slow
def test_two_process_pretraining_on_cpu(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    steps = 6
    arguments = _arguments(tiny_dataset, run, "--use_cpu", "true")
    arguments[arguments.index("--max_steps") + 1] = str(steps)
    arguments[arguments.index("--save_steps") + 1] = "2"
    result = _torchrun(arguments)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [path.name for path in run.iterdir() if not path.name.startswith("checkpoint-")] == [
        "model"
    ]
    model = MEGForMaskedSignalModeling.from_pretrained(run / "model")
    assert model.config.hidden_size == TINY_MODEL["hidden_size"]

    # Each step took a batch on each of 2 processes: 6 steps x 4 x 2 windows = 2 epochs of 24.
    state = _final_state(run)
    assert state["global_step"] == steps
    assert state["epoch"] == pytest.approx(steps * BATCH * 2 / 24)
    # Each process saved its own RNG state into the (complete) checkpoints.
    for checkpoint in ("checkpoint-4", "checkpoint-6"):  # save_total_limit=2
        files = {path.name for path in (run / checkpoint).iterdir()}
        assert {"rng_state_0.pth", "rng_state_1.pth", COMPLETE_MARKER} <= files

    # Resumed after the first step of the second epoch (3 steps each), it logs the same losses.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(run / "checkpoint-4", resumed / "checkpoint-4")
    arguments[arguments.index("--output_dir") + 1] = str(resumed)
    result = _torchrun([*arguments, "--resume", "true"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert _logged_steps(result.stdout + result.stderr) == 2
    assert _logged_losses(resumed) == _logged_losses(run)


@pytest.mark.slow
def test_two_process_streaming_pretraining_on_cpu(tiny_dataset, tmp_path):
    # Streamed windows have no length: the first process reads the batches of both.
    run = tmp_path / "run"
    arguments = _arguments(tiny_dataset, run, "--use_cpu", "true", "--streaming", "true")
    arguments[arguments.index("--max_steps") + 1] = "4"
    result = _torchrun(arguments)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _final_state(run)["global_step"] == 4
    model_dir = run / "model"
    assert json.loads((model_dir / "training_args.json").read_text())["pretraining"]["streaming"]
    MEGForMaskedSignalModeling.from_pretrained(model_dir)


@pytest.mark.slow
def test_two_processes_without_distributed_training_stop_with_advice(tiny_dataset, tmp_path):
    # Without a GPU, the Trainer only goes distributed with use_cpu; otherwise both processes
    # would train alone and write the same folder.
    result = _torchrun(_arguments(tiny_dataset, tmp_path / "run"))
    assert result.returncode != 0
    assert "launched as 2 processes" in result.stderr and "--use_cpu true" in result.stderr
    assert not (tmp_path / "run" / "model").exists()


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["lora", "linear_probe"])
def test_finetuning_reports_per_subject_and_exports_a_plain_classifier(
    strategy, simulated_cohort, pretrained_model, tmp_path
):
    import csv

    from megfm_hf import MEGForSequenceClassification
    from megfm_hf.training.finetune import finetune

    counter = StepCounter()
    model_dir = finetune(
        simulated_cohort["dataset"],
        pretrained_model,
        tmp_path / "run",
        strategy=strategy,
        max_steps=4,
        batch_size=8,
        seed=0,
        callbacks=[counter],
        save_strategy="no",
        disable_tqdm=True,
    )
    assert counter.steps == 4
    split = json.loads((model_dir / "split.json").read_text())
    assert not set(split["train"]) & set(split["test"])
    with open(tmp_path / "run" / "subject_predictions.tsv") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert sorted(row["subject"] for row in rows) == sorted(split["test"])
    for row in rows:
        assert float(row["p_control"]) + float(row["p_migraine"]) == pytest.approx(1.0, abs=1e-3)
    metrics = json.loads((tmp_path / "run" / "subject_metrics.json").read_text())
    assert metrics["n_subjects"] == len(split["test"])
    assert {"balanced_accuracy", "roc_auc", "f1", "sensitivity", "specificity"} <= set(metrics)

    classifier = MEGForSequenceClassification.from_pretrained(model_dir)
    assert classifier.config.id2label == {0: "control", 1: "migraine"}
    names = set(classifier.state_dict())
    assert not any("lora" in name for name in names), "LoRA weights must be merged on export"
    if strategy == "linear_probe":
        from safetensors.torch import load_file

        pretrained = load_file(pretrained_model / "model.safetensors")
        exported = load_file(model_dir / "model.safetensors")
        for name, tensor in pretrained.items():
            if name.startswith("megfm."):
                assert torch.equal(exported[name], tensor), f"{name} changed under a frozen encoder"
        # Seeded runs are reproducible, the new classification head included.
        again = finetune(
            simulated_cohort["dataset"],
            pretrained_model,
            tmp_path / "again",
            strategy=strategy,
            max_steps=4,
            batch_size=8,
            seed=0,
            save_strategy="no",
            disable_tqdm=True,
        )
        repeated = load_file(again / "model.safetensors")
        assert exported.keys() == repeated.keys()
        for name, tensor in exported.items():
            assert torch.equal(repeated[name], tensor), f"{name} differs between seeded runs"
