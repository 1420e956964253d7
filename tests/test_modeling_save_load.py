"""Save/load round trips, the Auto classes and remote code without the package."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForPreTraining,
    AutoModelForSequenceClassification,
)

from megfm_hf import MEGForMaskedSignalModeling, MEGForSequenceClassification, MEGModel
from megfm_hf.modeling.configuration_megfm import AUTO_MAP

from model_tester import meg_batch, tiny_config


@pytest.fixture(scope="module")
def pretrained_folder(tmp_path_factory):
    torch.manual_seed(0)
    model = MEGForMaskedSignalModeling(tiny_config())
    folder = tmp_path_factory.mktemp("pretrained")
    model.save_pretrained(folder)
    return folder, model


def test_save_writes_safetensors_code_and_a_complete_auto_map(pretrained_folder):
    folder, model = pretrained_folder
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        "config.json",
        "configuration_megfm.py",
        "model.safetensors",
        "modeling_megfm.py",
    ]
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt")), "no pickle files"
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "megfm"
    assert config["auto_map"] == AUTO_MAP
    tensors = load_file(folder / "model.safetensors")
    assert set(tensors) == set(model.state_dict())


def test_round_trip_is_bit_exact(pretrained_folder):
    folder, model = pretrained_folder
    loaded = MEGForMaskedSignalModeling.from_pretrained(folder).eval()
    model.eval()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    batch = meg_batch(batch_size=2, num_sensors=9, num_samples=30)
    mask = loaded.draw_mask(batch["sensor_mask"], 3, torch.Generator().manual_seed(0))
    assert torch.equal(
        model(**batch, mask=mask).reconstruction, loaded(**batch, mask=mask).reconstruction
    )


def test_auto_classes_resolve_every_head(pretrained_folder):
    folder, _ = pretrained_folder
    assert AutoConfig.from_pretrained(folder).model_type == "megfm"
    assert type(AutoModel.from_pretrained(folder)) is MEGModel
    assert type(AutoModelForPreTraining.from_pretrained(folder)) is MEGForMaskedSignalModeling


def test_classifier_from_pretraining_checkpoint_reports_only_head_keys(pretrained_folder):
    folder, model = pretrained_folder
    classifier, info = AutoModelForSequenceClassification.from_pretrained(
        folder, num_labels=2, output_loading_info=True
    )
    assert type(classifier) is MEGForSequenceClassification
    statistics = {"norm.running_mean", "norm.running_var", "norm.num_batches_tracked"}
    assert set(info["missing_keys"]) == {"classifier.weight", "classifier.bias", *statistics}
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    for name, tensor in model.megfm.state_dict().items():
        assert torch.equal(classifier.megfm.state_dict()[name], tensor), name
    # The new standardisation starts as the identity, not as uninitialised memory.
    assert torch.equal(classifier.norm.running_mean, torch.zeros(model.config.hidden_size))
    assert torch.equal(classifier.norm.running_var, torch.ones(model.config.hidden_size))


def test_classifier_standardises_pooled_features_and_keeps_its_statistics(tmp_path):
    torch.manual_seed(0)
    classifier = MEGForSequenceClassification(tiny_config(num_labels=2))
    hidden = classifier.config.hidden_size
    # Pooled features as a pretrained encoder gives them: a large common part, small deviations.
    pooled = 5.0 + 0.05 * torch.randn(64, hidden)
    norm = classifier.norm.train()
    standardised = norm(pooled)
    assert standardised.mean(0).abs().max() < 1e-4
    assert standardised.std(0).sub(1).abs().max() < 0.02
    assert norm.running_mean.mean() == pytest.approx(0.5, abs=0.01)  # momentum 0.1 toward 5
    norm(pooled[:1])  # one window in training: the running statistics, not an error
    assert int(norm.num_batches_tracked) == 1

    batch = meg_batch(batch_size=3, num_sensors=9, num_samples=30)
    classifier.train()
    for _ in range(3):
        classifier(**batch)  # training batches move the running statistics
    classifier.eval()
    classifier.save_pretrained(tmp_path / "trained")
    loaded = MEGForSequenceClassification.from_pretrained(tmp_path / "trained").eval()
    assert torch.equal(loaded.norm.running_mean, classifier.norm.running_mean)
    assert torch.equal(classifier(**batch).logits, loaded(**batch).logits)


def test_a_classifier_saved_without_standardisation_predicts_as_before(tmp_path):
    torch.manual_seed(0)
    plain = MEGForSequenceClassification(tiny_config(num_labels=2, classifier_norm=False)).eval()
    assert isinstance(plain.norm, torch.nn.Identity)
    plain.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["classifier_norm"]  # as written before the option existed
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = MEGForSequenceClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.classifier_norm
    batch = meg_batch(batch_size=2, num_sensors=9, num_samples=30)
    torch.testing.assert_close(loaded(**batch).logits, plain(**batch).logits)


REMOTE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys

    class BlockPackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "megfm_hf" or name.startswith("megfm_hf."):
                raise ImportError("megfm_hf is blocked in this process")
            return None

    sys.meta_path.insert(0, BlockPackage())
    try:
        import megfm_hf  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("megfm_hf should not be importable here")

    import torch
    from transformers import AutoModel
    folder, inputs_path, outputs_path = sys.argv[1:4]
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert "megfm_hf" not in type(model).__module__, type(model).__module__
    inputs = torch.load(inputs_path)
    with torch.no_grad():
        torch.save(model(**inputs).last_hidden_state, outputs_path)
    """
)


def test_remote_code_loads_without_the_package(pretrained_folder, tmp_path):
    folder, model = pretrained_folder
    batch = meg_batch(batch_size=2, num_sensors=9, num_samples=30)
    torch.save(batch, tmp_path / "inputs.pt")
    script = tmp_path / "load_remote.py"
    script.write_text(REMOTE_SCRIPT)
    result = subprocess.run(
        [
            sys.executable,
            str(script),
            str(folder),
            str(tmp_path / "inputs.pt"),
            str(tmp_path / "out.pt"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_VERBOSITY": "error",
            "HF_MODULES_CACHE": str(tmp_path / "modules"),
            "PATH": "",
        },
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        local = model.megfm.eval()(**batch).last_hidden_state
    assert torch.equal(remote, local)
