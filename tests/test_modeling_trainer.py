"""A few Trainer steps of each head on learnable MEG-like signals lower the loss."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments

from megfm_hf import MEGForMaskedSignalModeling, MEGForSequenceClassification

from model_tester import meg_batch, tiny_config


class WindowDataset(Dataset):
    """Rows of model inputs, as the datasets builder and the collator deliver them."""

    def __init__(self, batch: dict[str, torch.Tensor], labels: torch.Tensor | None = None):
        self.batch = batch
        self.labels = labels

    def __len__(self) -> int:
        return len(self.batch["input_values"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = {name: values[index] for name, values in self.batch.items()}
        if self.labels is not None:
            row["labels"] = self.labels[index]
        return row


def _arguments(tmp_path, steps: int, learning_rate: float, **overrides) -> TrainingArguments:
    return TrainingArguments(
        **{
            "output_dir": str(tmp_path),
            "per_device_train_batch_size": 8,
            "max_steps": steps,
            "learning_rate": learning_rate,
            "warmup_steps": 0.1,
            "save_strategy": "no",
            "report_to": [],
            "logging_steps": 5,
            "use_cpu": True,
            "disable_tqdm": True,
            "seed": 0,
            **overrides,
        }
    )


def _masked_loss(model, batch, mask) -> float:
    model.eval()
    with torch.no_grad():
        return model(**batch, mask=mask).loss.item()


def test_trainer_pretraining_lowers_the_masked_reconstruction_loss(tmp_path):
    torch.manual_seed(0)
    model = MEGForMaskedSignalModeling(tiny_config())
    # Stimulus-locked windows: the evoked response is learnable from sensor geometry and time.
    train = meg_batch(batch_size=64, num_sensors=18, num_samples=100, evoked_amplitude=10.0, seed=1)
    held_out = meg_batch(
        batch_size=16, num_sensors=18, num_samples=100, evoked_amplitude=10.0, seed=2
    )
    mask = model.draw_mask(held_out["sensor_mask"], 10, torch.Generator().manual_seed(0))
    before = _masked_loss(model, held_out, mask)

    trainer = Trainer(
        model=model, args=_arguments(tmp_path, 60, 3e-3), train_dataset=WindowDataset(train)
    )
    trainer.train()
    after = _masked_loss(model, held_out, mask)
    assert after < 0.7 * before, (before, after)

    # The Trainer evaluates the self-supervised loss without labels.
    metrics = trainer.evaluate(WindowDataset(held_out))
    assert "eval_loss" in metrics and metrics["eval_loss"] > 0


def test_trainer_fine_tuning_lowers_the_classification_loss(tmp_path):
    torch.manual_seed(0)
    labels = torch.arange(64) % 2
    # class 1 has eight times the alpha amplitude of class 0
    amplitude = (0.5 + 3.5 * labels).numpy()
    train = meg_batch(
        batch_size=64, num_sensors=12, num_samples=100, alpha_amplitude=amplitude, seed=3
    )
    held_labels = torch.arange(32) % 2
    held_out = meg_batch(
        batch_size=32,
        num_sensors=12,
        num_samples=100,
        alpha_amplitude=(0.5 + 3.5 * held_labels).numpy(),
        seed=4,
    )
    model = MEGForSequenceClassification(tiny_config(num_labels=2))

    def held_out_loss() -> float:
        model.eval()
        with torch.no_grad():
            return model(**held_out, labels=held_labels).loss.item()

    before = held_out_loss()
    Trainer(
        model=model, args=_arguments(tmp_path, 60, 3e-3), train_dataset=WindowDataset(train, labels)
    ).train()
    after = held_out_loss()
    assert after < 0.5 * before, (before, after)


def test_trainer_compiles_the_blocks_when_asked_for_regional_compilation(tmp_path, monkeypatch):
    """`torch_compile=True` with accelerate's regional switch: the blocks train compiled."""
    monkeypatch.setenv("ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION", "1")
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = MEGForMaskedSignalModeling(tiny_config())
    train = meg_batch(batch_size=32, num_sensors=18, num_samples=100, evoked_amplitude=10.0, seed=1)
    arguments = _arguments(tmp_path, 4, 3e-3, torch_compile=True, torch_compile_backend="aot_eager")
    trainer = Trainer(model=model, args=arguments, train_dataset=WindowDataset(train))
    result = trainer.train()
    wrapped = trainer.model_wrapped
    blocks = wrapped.megfm.encoder.layers
    assert all(isinstance(block, torch._dynamo.eval_frame.OptimizedModule) for block in blocks)
    assert not isinstance(wrapped, torch._dynamo.eval_frame.OptimizedModule)  # the glue is eager
    assert torch.isfinite(torch.tensor(result.training_loss))


def _logged_losses(trainer: Trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_trainer_compiling_the_whole_model_trains_as_eager(tmp_path, monkeypatch):
    """`torch_compile=True` alone: the whole model compiled (the choice of the hidden tokens
    between its two graphs), the eager losses."""
    monkeypatch.delenv("ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION", raising=False)
    train = meg_batch(batch_size=32, num_sensors=18, num_samples=100, evoked_amplitude=10.0, seed=1)
    model = MEGForMaskedSignalModeling(tiny_config())
    valid = torch.ones(train["input_values"].shape[:2], dtype=torch.bool)
    patches = train["input_values"].shape[-1] // model.config.patch_length
    # The collator's masks, fixed per window, so both runs hide the same tokens.
    train["mask"] = model.draw_mask(valid, patches, torch.Generator().manual_seed(0))
    runs = {}
    for compiled in (False, True):
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = MEGForMaskedSignalModeling(tiny_config())
        options = {"torch_compile": True, "torch_compile_backend": "aot_eager"} if compiled else {}
        arguments = _arguments(tmp_path, 10, 3e-3, logging_steps=1, **options)
        trainer = Trainer(model=model, args=arguments, train_dataset=WindowDataset(train))
        trainer.train()
        assert (
            isinstance(trainer.model_wrapped, torch._dynamo.eval_frame.OptimizedModule) == compiled
        )
        runs[compiled] = _logged_losses(trainer)
    assert len(runs[True]) == 10
    torch.testing.assert_close(runs[True], runs[False], rtol=1e-4, atol=1e-6)
