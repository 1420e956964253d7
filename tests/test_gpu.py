"""Checks of the training step on a CUDA device: bf16 autocast, host synchronisation and the
whole model replayed as CUDA graphs.

The CUDA cases are marked `gpu`, which the default run deselects: `pytest -m gpu` selects them,
and `benchmarks/run_gpu.sh` runs them before its benchmarks. The CPU case of each check that
does not depend on the device runs everywhere, so the check itself is tested without a GPU.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from megfm_hf import MEGForMaskedSignalModeling, compute_signal_mask

from model_tester import meg_batch, tiny_config

MODES = ["latent", "factorized", "full"]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch.device(name)


def _model_and_inputs(mode: str, device: torch.device):
    """A tiny model in eval mode (no dropout) and a batch with padding and a drawn mask."""
    torch.manual_seed(0)
    model = MEGForMaskedSignalModeling(tiny_config(attention_mode=mode)).to(device).eval()
    batch = meg_batch(batch_size=4, num_sensors=24, num_samples=100)
    batch["sensor_mask"][1, 20:] = False  # a smaller sensor array, padded
    mask = compute_signal_mask(
        batch["sensor_mask"], 10, 0.5, 0.3, 0.2, torch.Generator().manual_seed(0)
    )
    batch = {name: value.to(device) for name, value in batch.items()}
    return model, batch, mask.to(device)


@pytest.mark.parametrize("device_name", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_bf16_autocast_step_follows_float32(mode, device_name):
    """Under bf16 autocast (`--bf16 true`) the loss and gradients stay close to float32's."""
    device = _device(device_name)
    model, batch, mask = _model_and_inputs(mode, device)
    losses, gradients = {}, {}
    for bf16 in (False, True):
        model.zero_grad()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch, mask=mask).loss
        loss.backward()
        losses[bf16] = loss.item()
        gradients[bf16] = torch.cat(
            [p.grad.float().flatten() for p in model.parameters() if p.grad is not None]
        )
    assert math.isfinite(losses[True])
    assert losses[True] == pytest.approx(losses[False], rel=0.02)
    assert F.cosine_similarity(gradients[True], gradients[False], dim=0) > 0.999


@pytest.mark.gpu
def test_latent_step_synchronises_with_the_host_twice():
    """The CUDA count behind `test_modeling.py`'s read count: input checks, hidden tokens."""
    device = _device("cuda")
    model, batch, mask = _model_and_inputs("latent", device)
    model(**batch, mask=mask).loss.backward()  # warm-up: kernels loaded, handles created
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model(**batch, mask=mask).loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) == 2, syncs


@pytest.mark.gpu
def test_whole_model_replayed_as_cuda_graphs_trains_as_eager():
    """`torch.compile(mode="reduce-overhead")` of the whole default model: the hidden tokens are
    chosen between graphs replayed as CUDA graphs, and loss and gradients are the eager ones,
    also when the number of hidden tokens changes from step to step."""
    device = _device("cuda")
    model, batch, _ = _model_and_inputs("latent", device)
    compiled = torch.compile(model, mode="reduce-overhead")
    for step, padded_from in enumerate((20, 20, 17, 17, 20)):
        valid = batch["sensor_mask"].cpu()
        valid[1] = torch.arange(valid.shape[1]) < padded_from
        generator = torch.Generator().manual_seed(step)
        mask = compute_signal_mask(valid, 10, 0.5, 0.3, 0.2, generator).to(device)
        batch["sensor_mask"] = valid.to(device)
        results = {}
        for name, net in (("eager", model), ("compiled", compiled)):
            model.zero_grad(set_to_none=True)
            torch.compiler.cudagraph_mark_step_begin()
            loss = net(**batch, mask=mask).loss
            loss.backward()
            grads = [p.grad.flatten() for p in model.parameters() if p.grad is not None]
            gradient = torch.cat(grads)
            results[name] = (loss.item(), gradient.clone())
        assert results["compiled"][0] == pytest.approx(results["eager"][0], rel=1e-4)
        assert F.cosine_similarity(results["compiled"][1], results["eager"][1], dim=0) > 0.9999
