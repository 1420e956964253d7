"""``extract_features``: whole recordings encoded a batch at a time."""

from __future__ import annotations

import mne
import numpy as np
import pytest
import torch

from megfm_hf import MEGConfig, MEGForMaskedSignalModeling, MEGModel
from megfm_hf.cli import main
from megfm_hf.data import MEGProcessor
from megfm_hf.inference import extract_features

RECORDING = "neuromag306/141027_cropped_90Hz_raw.fif"  # 10 s, empty room
EVOKED = "neuromag306-audvis-evoked/test-ave.fif.gz"  # 4 averages, -0.2 to 0.5 s


@pytest.fixture(scope="module")
def model_and_processor():
    torch.manual_seed(0)
    config = MEGConfig(
        sampling_rate=100.0, patch_length=10, hidden_size=32, num_hidden_layers=1,
        num_attention_heads=4, num_latents=4, decoder_hidden_size=16,
    )  # fmt: skip
    processor = MEGProcessor.from_model_config(config, window_seconds=1.0, l_freq=1.0)
    return MEGModel(config), processor


def test_features_of_a_real_recording_match_one_pass(meg_data_dir, model_and_processor):
    model, processor = model_and_processor
    path = meg_data_dir / RECORDING
    model.train()  # extract_features evaluates, then restores the mode
    features = extract_features(model, processor, path, batch_size=3, progress=False)
    assert model.training

    inputs = processor(path, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        expected = model(**inputs).pooler_output.numpy()
    assert features.pooled.shape == expected.shape == (len(inputs["input_values"]), 32)
    np.testing.assert_allclose(features.pooled, expected, rtol=1e-4, atol=1e-5)
    # 1-s windows tile the recording from its start
    np.testing.assert_allclose(features.onsets_s, np.arange(len(expected)), atol=1e-6)
    assert features.events == [""] * len(expected)
    assert features.tokens is None


def test_compiled_features_match_eager(meg_data_dir, model_and_processor):
    model, processor = model_and_processor
    processed = processor.process(meg_data_dir / RECORDING, reject=False)
    assert len(processed) % 4, "the last batch must be partial for this test"
    eager = extract_features(model, processor, processed, batch_size=4, progress=False)
    compiled = extract_features(
        model, processor, processed, batch_size=4, torch_compile=True, progress=False
    )
    np.testing.assert_allclose(compiled.pooled, eager.pooled, rtol=1e-4, atol=1e-5)


def test_tokens_of_evoked_responses(meg_data_dir, model_and_processor):
    model, processor = model_and_processor
    evoked = mne.read_evokeds(meg_data_dir / EVOKED, verbose="error")
    processed = MEGProcessor.from_model_config(model.config, window_seconds=0.5, tmin=-0.2).process(
        evoked, reject=False
    )
    pretraining = MEGForMaskedSignalModeling(model.config)
    pretraining.megfm.load_state_dict(model.state_dict())
    features = extract_features(
        pretraining, processor, processed, batch_size=3, return_tokens=True, progress=False
    )
    assert len(features.pooled) == len(evoked) == 4
    np.testing.assert_allclose(features.onsets_s, -0.2, atol=0.02)
    assert features.tokens.shape == (4, processed.sensors.n_sensors, 5, 32)
    # the pooled vector of every window is the mean of its valid sensors' tokens
    valid = processed.sensor_mask
    np.testing.assert_allclose(
        features.tokens[:, valid].mean(axis=(1, 2)), features.pooled, rtol=1e-4, atol=1e-5
    )


def test_latent_pooled_features_skip_the_token_states(meg_data_dir, model_and_processor):
    model, processor = model_and_processor
    processed = processor.process(meg_data_dir / RECORDING, reject=False)
    fast = MEGModel(MEGConfig(**{**model.config.to_dict(), "pooling": "latents"}))
    fast.load_state_dict(model.state_dict())
    features = extract_features(fast, processor, processed, batch_size=3, progress=False)
    with_tokens = extract_features(
        fast, processor, processed, batch_size=3, return_tokens=True, progress=False
    )
    np.testing.assert_allclose(features.pooled, with_tokens.pooled, rtol=1e-5, atol=1e-6)
    assert features.tokens is None and with_tokens.tokens.shape[:2] == (len(processed), 306)
    # the same weights, another summary of the window than the mean of its tokens
    mean = extract_features(model, processor, processed, batch_size=3, progress=False)
    assert not np.allclose(features.pooled, mean.pooled, atol=1e-3)


def test_mismatched_processor_and_other_models_are_refused(meg_data_dir, model_and_processor):
    model, _ = model_and_processor
    with pytest.raises(ValueError, match="does not match the model"):
        extract_features(model, MEGProcessor(), meg_data_dir / RECORDING, progress=False)
    with pytest.raises(TypeError, match="needs a megfm model"):
        extract_features(torch.nn.Linear(2, 2), MEGProcessor(), meg_data_dir / RECORDING)
    with pytest.raises(ValueError, match="batch_size"):
        extract_features(model, MEGProcessor(), meg_data_dir / RECORDING, batch_size=0)


def test_features_command_writes_one_file_per_recording(
    meg_data_dir, model_and_processor, tmp_path
):
    model, processor = model_and_processor
    folder = tmp_path / "model"
    MEGForMaskedSignalModeling(model.config).save_pretrained(folder)
    processor.save_pretrained(folder)
    recording = meg_data_dir / RECORDING
    output = tmp_path / "features"
    code = main(["features", "--model", str(folder), "--output", str(output), "--no-progress",
                 "--tokens", str(recording)])  # fmt: skip
    assert code == 0
    assert sorted(p.name for p in output.iterdir()) == ["141027_cropped_90Hz_raw.npz"]
    saved = np.load(output / "141027_cropped_90Hz_raw.npz")
    reference = extract_features(
        MEGModel.from_pretrained(folder), processor, recording, progress=False
    )
    np.testing.assert_allclose(saved["pooled"], reference.pooled, rtol=1e-5, atol=1e-6)
    assert saved["tokens"].shape[:2] == (len(reference.pooled), 306)
    assert list(saved["events"]) == reference.events

    # --pooling overrides the saved model's pooling
    code = main(["features", "--model", str(folder), "--output", str(tmp_path / "latents"),
                 "--no-progress", "--pooling", "latents", str(recording)])  # fmt: skip
    assert code == 0
    latents = np.load(tmp_path / "latents" / "141027_cropped_90Hz_raw.npz")
    expected = extract_features(
        MEGModel.from_pretrained(folder, pooling="latents"), processor, recording, progress=False
    )
    np.testing.assert_allclose(latents["pooled"], expected.pooled, rtol=1e-5, atol=1e-6)
    assert "tokens" not in latents


def test_features_command_names_what_is_missing(
    meg_data_dir, model_and_processor, tmp_path, capsys
):
    model, _ = model_and_processor
    folder = tmp_path / "model"
    MEGModel(model.config).save_pretrained(folder)
    args = ["features", "--model", str(folder), "--output", str(tmp_path / "out")]
    assert main([*args, str(meg_data_dir / RECORDING)]) == 1
    assert "preprocessor_config.json" in capsys.readouterr().err
    MEGProcessor.from_model_config(model.config).save_pretrained(folder)
    assert main([*args, str(tmp_path / "absent.fif")]) == 1
    assert "absent.fif" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_float16_features_stay_finite_on_large_signals(meg_data_dir, model_and_processor):
    """Its first window (a filter transient up to 54 model units) overflowed the per-type
    scales in float16: 204 gradiometers' summed squares exceed float16's range."""
    model, processor = model_and_processor
    processed = processor.process(meg_data_dir / RECORDING, reject=False)
    assert np.abs(processed.windows([0])).max() > 20
    full = extract_features(model, processor, processed, progress=False)
    half = extract_features(
        model, processor, processed, autocast_dtype=torch.float16, progress=False
    )
    assert np.isfinite(half.pooled).all()
    np.testing.assert_allclose(half.pooled, full.pooled, atol=0.05 * np.abs(full.pooled).max())


def test_features_that_are_not_finite_name_their_window(meg_data_dir, model_and_processor):
    _, processor = model_and_processor
    broken = MEGModel(model_and_processor[0].config)
    with torch.no_grad():
        broken.encoder.norm.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"window at 0\.000 s are not finite"):
        extract_features(broken, processor, meg_data_dir / RECORDING, progress=False)


def test_processed_recordings_must_fit_the_model(meg_data_dir, model_and_processor):
    model, processor = model_and_processor
    other_rate = MEGProcessor(sfreq=200.0, patch_length=10, window_seconds=0.5, h_freq=40.0)
    raw_sss = meg_data_dir / "neuromag306/sample_audvis_trunc_raw_sss.fif"
    processed = other_rate.process(raw_sss, reject=False)
    with pytest.raises(ValueError, match=r"sfreq=200 Hz.*does not fit the model"):
        extract_features(model, processor, processed, progress=False)
    processed = processor.process(meg_data_dir / RECORDING, reject=False)
    with pytest.raises(ValueError, match="processed already"):
        extract_features(model, processor, processed, mode="fixed", progress=False)


def test_features_command_keeps_going_past_a_broken_recording(
    meg_data_dir, model_and_processor, tmp_path, capsys
):
    model, processor = model_and_processor
    folder = tmp_path / "model"
    MEGModel(model.config).save_pretrained(folder)
    processor.save_pretrained(folder)
    broken = tmp_path / "broken_raw.fif"
    broken.write_bytes(b"not a FIF file")
    good = meg_data_dir / RECORDING
    output = tmp_path / "out"
    args = ["features", "--model", str(folder), "--output", str(output), "--no-progress"]
    assert main([*args, str(broken), str(good)]) == 1
    assert sorted(p.name for p in output.iterdir()) == ["141027_cropped_90Hz_raw.npz"]
    err = capsys.readouterr().err
    assert "1 of 2 recordings gave no features" in err and "broken_raw.fif: cannot be read" in err
