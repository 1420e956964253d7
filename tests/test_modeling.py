"""Tests of the model family: shapes, masking, padding invariance, attention, save/load, errors."""

from __future__ import annotations

import sys
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from megfm_hf import (
    MEGConfig,
    MEGForMaskedSignalModeling,
    MEGForSequenceClassification,
    MEGModel,
    compute_signal_mask,
)
from megfm_hf.modeling.modeling_megfm import (
    COMPILED_SELECTION_BUCKETS,
    MEGAttention,
    MEGFusedLinear,
    TokenSelection,
    sensor_type_scale,
)

from model_tester import meg_batch, tiny_config

MODES = ["latent", "factorized", "full"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("mode", MODES)
def test_model_output_shapes(mode):
    config = tiny_config(attention_mode=mode)
    model = MEGModel(config).eval()
    batch = meg_batch(batch_size=2, num_sensors=12, num_samples=60)
    out = model(**batch, output_hidden_states=True, output_attentions=True)
    assert out.last_hidden_state.shape == (2, 12, 6, config.hidden_size)
    assert out.pooler_output.shape == (2, config.hidden_size)
    # the embeddings plus one state per block (latent mode: after the sensor cross-attention)
    assert len(out.hidden_states) == config.num_hidden_layers + 1
    assert len(out.attentions) == config.num_hidden_layers
    if mode == "full":
        assert out.attentions[0].shape == (2, 4, 72, 72)
        assert out.sensor_attentions is None
    elif mode == "factorized":
        assert out.attentions[0].shape == (2, 12, 4, 6, 6)
        assert out.sensor_attentions[0].shape == (2, 6, 4, 12, 12)
    else:
        assert out.attentions[0].shape == (2, 4, 6 * 4, 6 * 4)
        assert out.sensor_attentions[0].shape == (2, 6, 4, 4, 12 + 4)


@pytest.mark.parametrize("mode", MODES)
def test_masked_signal_modeling_outputs(mode):
    config = tiny_config(attention_mode=mode)
    model = MEGForMaskedSignalModeling(config)
    batch = meg_batch(batch_size=3, num_sensors=15, num_samples=50)
    out = model(**batch, generator=torch.Generator().manual_seed(1))
    assert out.reconstruction.shape == (3, 15, 50)
    assert out.mask.shape == (3, 15, 5)
    assert out.mask.dtype == torch.bool
    assert out.mask.float().mean().item() == pytest.approx(config.mask_ratio, abs=0.02)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    missing_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing_grad, f"parameters without gradient: {missing_grad}"


@pytest.mark.parametrize("normalize", [False, True])
def test_loss_covers_only_masked_tokens_of_valid_sensors(normalize):
    config = tiny_config(normalize_input_by_sensor_type=normalize)
    model = MEGForMaskedSignalModeling(config).eval()
    batch = meg_batch(batch_size=2, num_sensors=12, num_samples=40)
    mask = torch.zeros(2, 12, 4, dtype=torch.bool)
    mask[:, 3, :] = True  # one whole sensor
    mask[:, :, 2] = True  # one time patch
    out = model(**batch, mask=mask)
    scale = torch.ones(2, 12)
    if normalize:
        # per window and sensor type, the RMS of the visible tokens only
        scale = sensor_type_scale(batch["input_values"], batch["sensor_types"], ~mask, 10, 4)
        visible = batch["input_values"].view(2, 12, 4, 10)[0][~mask[0]]
        magnetometers = (batch["sensor_types"][0] == 0)[:, None].expand(-1, 4)[~mask[0]]
        assert scale[0, 0] == pytest.approx(
            visible[magnetometers].pow(2).mean().sqrt().item(), rel=1e-5
        )
    target = (batch["input_values"] / scale[:, :, None]).view(2, 12, 4, 10)
    predicted = (out.reconstruction / scale[:, :, None]).view(2, 12, 4, 10)
    expected = (predicted - target).pow(2).mean(-1)[mask].mean()
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("mode", MODES)
def test_hidden_signal_never_reaches_the_reconstruction(mode):
    model = MEGForMaskedSignalModeling(tiny_config(attention_mode=mode)).eval()
    batch = meg_batch(batch_size=2, num_sensors=12, num_samples=40)
    mask = compute_signal_mask(
        batch["sensor_mask"], 4, 0.5, 0.3, 0.3, torch.Generator().manual_seed(2)
    )
    changed = {k: v.clone() for k, v in batch.items()}
    changed["input_values"].view(2, 12, 4, 10)[mask] *= 7.0
    torch.testing.assert_close(
        model(**changed, mask=mask).reconstruction, model(**batch, mask=mask).reconstruction
    )


def _padded_batch_and_mask() -> tuple[dict, torch.Tensor]:
    """Two windows of 12 sensors and 4 patches, one padded to 9 sensors, and a drawn mask."""
    batch = meg_batch(batch_size=2, num_sensors=12, num_samples=40)
    batch["sensor_mask"][1, 9:] = False
    mask = compute_signal_mask(
        batch["sensor_mask"], 4, 0.5, 0.3, 0.3, torch.Generator().manual_seed(3)
    )
    return batch, mask


@pytest.mark.parametrize("mode", MODES)
def test_decoding_hidden_tokens_only_changes_no_prediction_loss_or_gradient(mode):
    batch, mask = _padded_batch_and_mask()  # padded tokens are predicted too
    predicted = (mask | ~batch["sensor_mask"][:, :, None]).repeat_interleave(10, dim=2)
    runs = {}
    for decode_visible in (False, True):
        torch.manual_seed(0)
        model = MEGForMaskedSignalModeling(tiny_config(attention_mode=mode))
        out = model(**batch, mask=mask, decode_visible=decode_visible)
        out.loss.backward()
        grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
        runs[decode_visible] = out, grads
    (hidden_only, hidden_grads), (everything, all_grads) = runs[False], runs[True]
    torch.testing.assert_close(hidden_only.loss, everything.loss)
    torch.testing.assert_close(
        hidden_only.reconstruction[predicted], everything.reconstruction[predicted]
    )
    # Visible tokens come back as given, unless the decoder is asked for them.
    assert torch.equal(hidden_only.reconstruction[~predicted], batch["input_values"][~predicted])
    assert not torch.allclose(
        everything.reconstruction[~predicted], batch["input_values"][~predicted]
    )
    assert hidden_grads.keys() == all_grads.keys()
    for name, grad in hidden_grads.items():
        torch.testing.assert_close(grad, all_grads[name], msg=name)


class HostReads(TorchDispatchMode):
    """Counts the reads of tensor values back to the host, by the line of megfm that asks.

    On a GPU each read waits for every kernel queued before it, so the host stops queueing
    work ahead of the device. The operations that read are those whose result depends on the
    data (`nonzero`, boolean indexing) or leave the device (`item`, `bool()`, `int()`:
    `_local_scalar_dense`); `tolist` bypasses the dispatcher and is counted by a patch.
    """

    READS = {
        "aten.nonzero.default",
        "aten._local_scalar_dense.default",
        "aten.masked_select.default",
    }

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        super().__init__()
        self.reads: Counter[str] = Counter()
        tolist = torch.Tensor.tolist

        def counted_tolist(tensor):
            self._count()
            return tolist(tensor)

        monkeypatch.setattr(torch.Tensor, "tolist", counted_tolist)

    def _count(self) -> None:
        frame = sys._getframe()
        while frame is not None and "modeling_megfm" not in frame.f_code.co_filename:
            frame = frame.f_back
        if frame is None:
            self.reads["elsewhere"] += 1
            return
        name, owner = frame.f_code.co_name, frame.f_locals.get("self")
        if owner is not None:
            name = f"{type(owner).__name__}.{name}"
        self.reads[f"{name}:{frame.f_lineno}"] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        indices = args[1] if func is torch.ops.aten.index.Tensor else ()
        if str(func) in self.READS or any(i is not None and i.dtype == torch.bool for i in indices):
            self._count()
        return func(*args, **(kwargs or {}))


# What a pretraining step reads back: the input checks, together, then per mode the sizes
# that follow the mask. Latent: the hidden tokens, shared by the read-out and the decoder.
# Full: the most present tokens of a window (and whether all windows have as many), then the
# decoder's sub-grid. Factorized: the encoder's and the decoder's sub-grids (sensors and
# patches together).
STEP_READS = {
    "latent": ["validate_inputs", "_chosen_tokens"],
    "full": ["validate_inputs", "MEGFullEncoder.forward", "MEGFactorizedEncoder.forward"],
    "factorized": ["validate_inputs"] + ["MEGFactorizedEncoder.forward"] * 2,
}


@pytest.mark.parametrize("mode", MODES)
def test_a_pretraining_step_reads_from_the_device_once_per_size(mode, monkeypatch):
    batch, mask = _padded_batch_and_mask()  # the mask drawn outside, as the collator draws it
    model = MEGForMaskedSignalModeling(tiny_config(attention_mode=mode))
    with HostReads(monkeypatch) as host:
        model(**batch, mask=mask).loss.backward()
    where = Counter(line.split(":")[0] for line in host.reads.elements())
    assert where == Counter(STEP_READS[mode]), dict(host.reads)


@pytest.mark.parametrize("mode", MODES)
def test_a_pretraining_step_embeds_sensor_geometry_and_patch_times_once(mode):
    # The encoder's embeddings and the decoder share one set of position parts.
    batch, mask = _padded_batch_and_mask()
    model = MEGForMaskedSignalModeling(tiny_config(attention_mode=mode))
    embeddings = model.megfm.embeddings
    calls = Counter()
    embeddings.geometry.register_forward_hook(lambda *_: calls.update(["geometry"]))
    time_encoding = embeddings.time_encoding

    def counted_time_encoding(*args, **kwargs):
        calls.update(["time"])
        return time_encoding(*args, **kwargs)

    embeddings.time_encoding = counted_time_encoding
    model(**batch, mask=mask).loss.backward()
    assert calls == Counter(geometry=1, time=1)


def test_mask_is_reproducible_from_a_generator_and_mixes_kinds():
    sensor_mask = torch.ones(4, 30, dtype=torch.bool)
    sensor_mask[2, 20:] = False
    first = compute_signal_mask(sensor_mask, 20, 0.6, 0.3, 0.3, torch.Generator().manual_seed(5))
    again = compute_signal_mask(sensor_mask, 20, 0.6, 0.3, 0.3, torch.Generator().manual_seed(5))
    other = compute_signal_mask(sensor_mask, 20, 0.6, 0.3, 0.3, torch.Generator().manual_seed(6))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not first[2, 20:].any(), "padding sensors must never be masked"
    valid_tokens = sensor_mask.sum(1) * 20
    assert torch.equal(first.sum((1, 2)), torch.round(0.6 * valid_tokens.float()).long())
    whole_sensors = first.all(dim=2) & sensor_mask
    whole_patches = (first | ~sensor_mask[:, :, None]).all(dim=1)
    # 0.6 * 0.3 of the valid sensors whole, and a block of 0.6 * 0.3 * 20 = 3 patches
    expected_sensors = torch.floor(0.18 * sensor_mask.sum(1).float()).long()
    assert (whole_sensors.sum(1) >= expected_sensors).all(), (
        "expected whole sensors among the masked tokens"
    )
    assert (whole_patches.sum(1) >= 3).all(), "expected a time block among the masked tokens"


@pytest.mark.parametrize("mode", MODES)
def test_padding_and_bad_sensors_change_nothing_else(mode):
    config = tiny_config(attention_mode=mode)
    model = MEGForMaskedSignalModeling(config).eval()
    batch = meg_batch(batch_size=2, num_sensors=12, num_samples=40)
    mask = compute_signal_mask(
        batch["sensor_mask"], 4, 0.5, 0.3, 0.3, torch.Generator().manual_seed(0)
    )
    reference = model(**batch, mask=mask)

    # Pad with five sensors of garbage values and a sixth bad sensor inside the array.
    padded = {
        "input_values": torch.cat([batch["input_values"], 50 * torch.randn(2, 5, 40)], dim=1),
        "sensor_positions": torch.cat([batch["sensor_positions"], torch.randn(2, 5, 6)], dim=1),
        "sensor_types": torch.cat([batch["sensor_types"], torch.full((2, 5), 2)], dim=1),
        "sensor_mask": torch.cat(
            [batch["sensor_mask"], torch.zeros(2, 5, dtype=torch.bool)], dim=1
        ),
    }
    padded_mask = torch.cat([mask, torch.rand(2, 5, 4) > 0.5], dim=1)
    padded_out = model(**padded, mask=padded_mask)
    torch.testing.assert_close(padded_out.loss, reference.loss)
    torch.testing.assert_close(padded_out.reconstruction[:, :12], reference.reconstruction)

    encoder = model.megfm
    features = encoder(**batch).last_hidden_state
    padded_features = encoder(**padded).last_hidden_state
    torch.testing.assert_close(padded_features[:, :12], features)
    torch.testing.assert_close(encoder(**padded).pooler_output, encoder(**batch).pooler_output)

    # A bad sensor: its values change, the other sensors' outputs do not.
    bad = {k: v.clone() for k, v in batch.items()}
    bad["sensor_mask"][:, 5] = False
    changed = {k: v.clone() for k, v in bad.items()}
    changed["input_values"][:, 5] = 100.0
    keep = torch.arange(12) != 5
    torch.testing.assert_close(
        encoder(**bad).last_hidden_state[:, keep], encoder(**changed).last_hidden_state[:, keep]
    )


def _masked_batch(equal_counts: bool) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """A batch of 3 windows (12 sensors, 6 patches), its pretraining mask and present tokens.

    With ``equal_counts=False`` one window comes from a smaller helmet (3 padded sensors), so
    its windows hold different numbers of present tokens.
    """
    batch = meg_batch(batch_size=3, num_sensors=12, num_samples=60)
    if not equal_counts:
        batch["sensor_mask"][1, -3:] = False
    mask = compute_signal_mask(
        batch["sensor_mask"], 6, 0.6, 0.3, 0.3, torch.Generator().manual_seed(3)
    )
    return batch, mask, ~mask & batch["sensor_mask"][:, :, None]


def _assert_same_outputs(gathered, dense, gathered_head, dense_head, present) -> None:
    """Encoder and pretraining outputs of both paths agree; absent tokens come out as zeros."""
    assert gathered.last_hidden_state[present].abs().sum() > 0
    assert torch.count_nonzero(gathered.last_hidden_state[~present]) == 0
    torch.testing.assert_close(gathered.last_hidden_state, dense.last_hidden_state)
    torch.testing.assert_close(gathered.pooler_output, dense.pooler_output)
    torch.testing.assert_close(gathered_head.loss, dense_head.loss)
    torch.testing.assert_close(gathered_head.reconstruction, dense_head.reconstruction)


@pytest.mark.parametrize("equal_counts", [True, False])
def test_full_mode_encodes_present_tokens_only(equal_counts):
    """The gathered encoder matches the whole-grid one with a key-padding mask, everywhere."""
    model = MEGForMaskedSignalModeling(tiny_config(attention_mode="full")).eval()
    batch, mask, present = _masked_batch(equal_counts)
    encoder = model.megfm.encoder
    outputs = {}
    for gather in (True, False):
        encoder.gather_present = gather
        outputs[gather] = (
            model.megfm(**batch, mask=mask, output_hidden_states=True, output_attentions=True),
            model(**batch, mask=mask),
        )
    (gathered, gathered_head), (dense, dense_head) = outputs[True], outputs[False]
    _assert_same_outputs(gathered, dense, gathered_head, dense_head, present)
    for first, second in zip(gathered.hidden_states, dense.hidden_states, strict=True):
        torch.testing.assert_close(first, second)
    for first, second in zip(gathered.attentions, dense.attentions, strict=True):
        torch.testing.assert_close(first, second)


@pytest.mark.parametrize("equal_counts", [True, False])
def test_factorized_mode_drops_sensors_and_patches_without_present_tokens(equal_counts):
    """Encoding the sub-grid of sensors and patches with present tokens changes no output."""
    model = MEGForMaskedSignalModeling(tiny_config(attention_mode="factorized")).eval()
    batch, mask, present = _masked_batch(equal_counts)
    encoder = model.megfm.encoder
    seen = []
    hook = encoder.layers[0].register_forward_pre_hook(lambda _, args: seen.append(args[0].shape))
    outputs, gradients = {}, {}
    for gather in (True, False):
        encoder.gather_present = gather
        outputs[gather] = (model.megfm(**batch, mask=mask), model(**batch, mask=mask))
        model.zero_grad()
        outputs[gather][1].loss.backward()
        gradients[gather] = [p.grad.clone() for p in encoder.layers[0].parameters()]
    hook.remove()
    (gathered, gathered_head), (dense, dense_head) = outputs[True], outputs[False]
    for first, second in zip(gradients[True], gradients[False], strict=True):
        torch.testing.assert_close(first, second)
    kept_sensors = int(present.any(dim=2).sum(dim=1).max())
    kept_patches = int(present.any(dim=1).sum(dim=1).max())
    assert kept_sensors < 12 and kept_patches < 6  # the mask hid whole sensors and a block
    assert seen[0] == (3, kept_sensors, kept_patches, model.config.hidden_size)
    assert seen[2] == (3, 12, 6, model.config.hidden_size)  # the dense path
    _assert_same_outputs(gathered, dense, gathered_head, dense_head, present)


def test_one_model_serves_306_and_275_sensor_arrays():
    model = MEGModel(tiny_config()).eval()
    neuromag = meg_batch(batch_size=1, num_sensors=306, num_samples=20, seed=1)
    ctf = meg_batch(batch_size=1, num_sensors=275, num_samples=20, seed=2)
    ctf["sensor_types"].fill_(2)
    assert model(**neuromag).last_hidden_state.shape[1] == 306
    assert model(**ctf).last_hidden_state.shape[1] == 275


@pytest.mark.parametrize("mode", MODES)
def test_attention_probabilities_sum_to_one(mode):
    model = MEGModel(tiny_config(attention_mode=mode)).eval()
    batch = meg_batch(batch_size=2, num_sensors=9, num_samples=30)
    batch["sensor_mask"][1, -2:] = False
    out = model(**batch, output_attentions=True)
    for weights in out.attentions + (out.sensor_attentions or ()):
        assert (weights >= 0).all()
        totals = weights.sum(-1)
        if mode == "full":
            # Tokens of invalid sensors are not encoded: their rows are empty.
            present = batch["sensor_mask"][:, :, None].expand(-1, -1, 3).reshape(2, 1, -1)
            assert torch.count_nonzero(totals * ~present) == 0
            totals = totals[present.expand_as(totals)]
        torch.testing.assert_close(totals, torch.ones_like(totals))
    if out.sensor_attentions is not None:
        # invalid sensors receive no attention
        sensor_weights = out.sensor_attentions[0][1, ..., 7:9]
        assert torch.count_nonzero(sensor_weights) == 0


def test_eager_and_sdpa_agree():
    config = tiny_config()
    model = MEGModel(config).eval()
    batch = meg_batch(batch_size=2, num_sensors=10, num_samples=30)
    batch["sensor_mask"][0, :3] = False
    sdpa = model(**batch).last_hidden_state
    eager = model(**batch, output_attentions=True).last_hidden_state
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=1e-4)


def _reference_attention(query, key, value, num_heads, bias=None):
    """Multi-head attention from first principles, in float64: (N, L, D) projections in."""
    n, query_length, width = query.shape

    def heads(x):
        return x.double().view(n, -1, num_heads, width // num_heads).transpose(1, 2)

    q, k, v = heads(query), heads(key), heads(value)
    logits = q @ k.transpose(-1, -2) / (width // num_heads) ** 0.5
    if bias is not None:
        logits = logits + bias.double()
    output = logits.softmax(-1) @ v
    return output.transpose(1, 2).reshape(n, query_length, width)


@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_fused_projections_compute_each_projection_from_its_own_block(cross):
    config = tiny_config()
    width, heads = config.hidden_size, config.num_attention_heads
    attention = MEGAttention(config, width, heads, cross_attention=cross).eval()
    for parameter in attention.parameters():  # not the zero biases of a fresh layer
        torch.nn.init.normal_(parameter, std=0.3)
    queries = torch.randn(3, 5, width)
    context = torch.randn(3, 7, width) if cross else None
    bias = torch.randn(3, heads, 5, 7 if cross else 5)
    # The blocks of each fused weight, used as separate layers.
    if cross:
        projections = [attention.q_proj.weight, *attention.kv_proj.weight.chunk(2)]
        biases = [attention.q_proj.bias, *attention.kv_proj.bias.chunk(2)]
        sources = [queries, context, context]
    else:
        projections = attention.qkv_proj.weight.chunk(3)
        biases = attention.qkv_proj.bias.chunk(3)
        sources = [queries] * 3
    q, k, v = (F.linear(x, w, b) for x, w, b in zip(sources, projections, biases, strict=True))
    expected = attention.o_proj(_reference_attention(q, k, v, heads, bias).float())
    output, _ = attention(queries, context, bias)
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="cross-attention needs" if cross else "takes no"):
        attention(queries, None if cross else queries)


def test_each_block_of_a_fused_projection_is_initialised_as_a_layer_of_its_own():
    config = tiny_config(hidden_size=64, num_attention_heads=4)
    model = MEGModel(config)
    fused = [module for module in model.modules() if isinstance(module, MEGFusedLinear)]
    assert {module.parts for module in fused} == {2, 3}
    for module in fused:
        # Xavier-uniform bound of one (64 x 64) block, not of the stacked (parts * 64 x 64)
        bound = (6 / (2 * 64)) ** 0.5
        for block in module.weight.chunk(module.parts):
            assert block.abs().max() <= bound
            assert block.abs().max() > 0.95 * bound
            torch.testing.assert_close(block.std(), torch.tensor(bound / 3**0.5), rtol=0.05, atol=0)


def test_forward_is_deterministic_in_eval_mode():
    model = MEGForMaskedSignalModeling(tiny_config()).eval()
    batch = meg_batch()
    first = model(**batch, generator=torch.Generator().manual_seed(3))
    second = model(**batch, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first.mask, second.mask)
    assert torch.equal(first.reconstruction, second.reconstruction)


LOSSES = {
    "single_label_classification": (
        3,
        torch.tensor([0, 2, 1, 0]),
        lambda z, y: F.cross_entropy(z, y),
    ),
    "multi_label_classification": (
        3,
        torch.tensor([[1.0, 0, 1], [0, 0, 1], [1, 1, 0], [0, 0, 0]]),
        lambda z, y: F.binary_cross_entropy_with_logits(z, y),
    ),
    "regression": (
        1,
        torch.tensor([0.5, -1.0, 2.0, 0.0]),
        lambda z, y: F.mse_loss(z.squeeze(-1), y),
    ),
}


@pytest.mark.parametrize("problem_type", sorted(LOSSES))
def test_sequence_classification_losses(problem_type):
    num_labels, labels, expected_loss = LOSSES[problem_type]
    model = MEGForSequenceClassification(
        tiny_config(num_labels=num_labels, problem_type=problem_type)
    ).eval()
    out = model(**meg_batch(batch_size=4), labels=labels)
    assert out.logits.shape == (4, num_labels)
    torch.testing.assert_close(out.loss, expected_loss(out.logits, labels))


def test_latent_pooling_summarises_the_final_latents_without_the_read_out():
    model = MEGModel(tiny_config(pooling="latents")).eval()
    batch = meg_batch(batch_size=2, num_sensors=12, num_samples=60)
    full = model(**batch, output_hidden_states=True)
    # the mean over patches and latents of the last block's states, normalised
    expected = model.encoder.latent_norm(full.hidden_states[-1]).mean(dim=(1, 2))
    torch.testing.assert_close(full.pooler_output, expected)
    assert full.last_hidden_state.shape == (2, 12, 6, model.config.hidden_size)

    readout_calls = []
    model.encoder.readout.register_forward_hook(lambda *_: readout_calls.append(1))
    fast = model(**batch, output_token_states=False)
    assert fast.last_hidden_state is None and not readout_calls
    torch.testing.assert_close(fast.pooler_output, full.pooler_output)
    # Other poolings need the token states, so they are computed whatever is asked.
    model.config.pooling = "mean"
    tokens = model(**batch, output_token_states=False)
    assert tokens.last_hidden_state is not None and readout_calls
    torch.testing.assert_close(tokens.pooler_output, tokens.last_hidden_state.mean(dim=(1, 2)))


def test_classifier_with_latent_pooling_trains_without_the_read_out():
    model = MEGForSequenceClassification(tiny_config(pooling="latents", num_labels=2))
    out = model(**meg_batch(batch_size=4), labels=torch.tensor([0, 1, 1, 0]))
    out.loss.backward()
    assert model.megfm.encoder.layers[-1].mlp.fc2.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.megfm.encoder.readout.parameters())


def test_problem_type_is_inferred_like_transformers():
    model = MEGForSequenceClassification(tiny_config(num_labels=2))
    model(**meg_batch(batch_size=2), labels=torch.tensor([0, 1]))
    assert model.config.problem_type == "single_label_classification"


def test_gradient_checkpointing_gives_the_same_gradients():
    batch = meg_batch(batch_size=2, num_sensors=9, num_samples=30)
    mask = compute_signal_mask(
        batch["sensor_mask"], 3, 0.5, generator=torch.Generator().manual_seed(0)
    )
    gradients = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = MEGForMaskedSignalModeling(tiny_config())
        if checkpointing:
            model.activation_checkpointing_enable()
            flagged = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False)]
            assert len(flagged) >= tiny_config().num_hidden_layers
        model.train()
        model(**batch, mask=mask).loss.backward()
        gradients.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(gradients[0], gradients[1])


@pytest.mark.parametrize("order", ["checkpointing first", "adapters first"])
def test_lora_adapters_learn_under_reentrant_activation_checkpointing(order):
    # Reentrant checkpointing passes no gradient through a block whose inputs need none, and
    # the inputs of a LoRA model's frozen blocks need none unless the patch projection (the
    # model's input embeddings) is made to require grad: without that, every adapter stayed
    # at zero gradient. The Trainer enables checkpointing after the adapters are added.
    from megfm_hf.training.finetune import apply_strategy

    batch = meg_batch(batch_size=2, num_sensors=9, num_samples=30)
    labels = torch.tensor([0, 1])
    gradients = {}
    for checkpointing in ("off", "reentrant", "non-reentrant"):
        torch.manual_seed(0)
        model = MEGForSequenceClassification(tiny_config(num_labels=2, classifier_dropout=0.0))
        assert model.get_input_embeddings() is model.megfm.embeddings.patch_projection
        settings = {"use_reentrant": checkpointing == "reentrant"}
        if checkpointing != "off" and order == "checkpointing first":
            model.activation_checkpointing_enable(settings)
        net = apply_strategy(model, "lora").train()
        if checkpointing != "off" and order == "adapters first":
            net.activation_checkpointing_enable(settings)
        net(**batch, labels=labels).loss.backward()
        adapters = {n: p.grad for n, p in net.named_parameters() if "lora_" in n}
        assert adapters and all(g is not None for g in adapters.values()), checkpointing
        gradients[checkpointing] = torch.cat([g.flatten() for g in adapters.values()])
    assert gradients["off"].abs().sum() > 0
    torch.testing.assert_close(gradients["reentrant"], gradients["off"])
    torch.testing.assert_close(gradients["non-reentrant"], gradients["off"])


def test_bf16_autocast_runs():
    model = MEGForMaskedSignalModeling(tiny_config())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**meg_batch(batch_size=2), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss)
    out.loss.backward()


@pytest.mark.parametrize("mode", MODES)
def test_torch_compile_full_graph(mode):
    """One static graph: `latent` mode decoding every token depends on no value of the data."""
    torch._dynamo.reset()
    model = MEGForMaskedSignalModeling(tiny_config(attention_mode=mode)).eval()
    batch = meg_batch(batch_size=2, num_sensors=9, num_samples=30)
    mask = compute_signal_mask(
        batch["sensor_mask"], 3, 0.5, generator=torch.Generator().manual_seed(0)
    )
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    decode_visible = mode == "latent"
    expected = model(**batch, mask=mask, decode_visible=decode_visible)
    got = compiled(**batch, mask=mask, decode_visible=decode_visible)
    torch.testing.assert_close(got.reconstruction, expected.reconstruction)
    # The mask drawn inside forward when the caller passes none traces too.
    drawn = compiled(**batch, decode_visible=decode_visible)
    assert drawn.mask.sum(dim=(1, 2)).tolist() == [14, 14]  # round(0.5 * 9 sensors * 3 patches)
    assert torch.isfinite(drawn.loss)


def test_latent_model_decoding_every_token_exports():
    """`torch.export` of the pretraining model with `decode_visible=True`: its loss and
    reconstruction are the eager model's."""
    model = MEGForMaskedSignalModeling(tiny_config()).eval()
    batch = meg_batch(batch_size=2, num_sensors=9, num_samples=30)
    mask = compute_signal_mask(
        batch["sensor_mask"], 3, 0.5, generator=torch.Generator().manual_seed(0)
    )
    inputs = {**batch, "mask": mask, "decode_visible": True}
    exported = torch.export.export(model, (), inputs).module()
    got, expected = exported(**inputs), model(**inputs)
    torch.testing.assert_close(got["loss"], expected.loss)
    torch.testing.assert_close(got["reconstruction"], expected.reconstruction)


def _assert_trains_as_eager(model, compiled, batch: dict, mask: torch.Tensor) -> None:
    """A step of `compiled` gives the loss, reconstruction and gradients of eager `model`."""
    expected = model(**batch, mask=mask)
    expected.loss.backward()
    gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    got = compiled(**batch, mask=mask)
    got.loss.backward()
    torch.testing.assert_close(got.loss, expected.loss)
    torch.testing.assert_close(got.reconstruction, expected.reconstruction)
    for name, p in model.named_parameters():
        if name in gradients:
            torch.testing.assert_close(p.grad, gradients[name], msg=name)
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("mode", MODES)
def test_compiled_blocks_keep_the_sizes_that_follow_the_mask(mode):
    """Regional compilation: every block is one graph (no break), the steps between them gather
    visible tokens and select hidden ones as eagerly, and loss, reconstruction and gradients
    are the eager model's, also when the sizes change from batch to batch."""
    from accelerate.utils import compile_regions
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = MEGForMaskedSignalModeling(tiny_config(attention_mode=mode)).train()
    compiled = compile_regions(model, backend="aot_eager")
    assert isinstance(compiled.decoder.norm, torch._dynamo.eval_frame.OptimizedModule)
    for num_sensors, seed in ((9, 0), (9, 1), (12, 2)):
        batch = meg_batch(batch_size=2, num_sensors=num_sensors, num_samples=30, seed=seed)
        batch["sensor_mask"][1, -2:] = False  # padding: the windows' token counts differ
        mask = compute_signal_mask(
            batch["sensor_mask"], 3, 0.5, generator=torch.Generator().manual_seed(seed)
        )
        _assert_trains_as_eager(model, compiled, batch, mask)
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_compiled_whole_model_reads_out_and_decodes_the_hidden_tokens_alone():
    """`torch.compile` of the whole model in `latent` mode: the choice of the hidden tokens runs
    between two graphs, the decoder sees those tokens alone, their number (changing from batch
    to batch) rounded up to a multiple of 1/64 of the grid, and loss, reconstruction and
    gradients are the eager model's."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = MEGForMaskedSignalModeling(tiny_config()).train()
    decoded = []
    model.decoder.head.register_forward_hook(lambda module, args, out: decoded.append(out.shape))
    compiled = torch.compile(model, backend="aot_eager")
    added = []
    for num_sensors, seed in ((9, 0), (12, 1), (10, 2)):  # 144 to 192 tokens: steps of 3
        batch = meg_batch(batch_size=2, num_sensors=num_sensors, num_samples=80, seed=seed)
        batch["sensor_mask"][1, -2:] = False  # a padded window
        mask = compute_signal_mask(
            batch["sensor_mask"], 8, 0.5, generator=torch.Generator().manual_seed(seed)
        )
        _assert_trains_as_eager(model, compiled, batch, mask)
        hidden = mask | ~batch["sensor_mask"][:, :, None]
        chosen = TokenSelection.from_mask(hidden, COMPILED_SELECTION_BUCKETS)
        assert decoded[-1][0] == chosen.index[0].numel() < mask.numel()
        assert decoded[-1][0] % 3 == 0
        added.append(decoded[-1][0] - int(hidden.sum()))
    assert all(0 <= count < 3 for count in added) and any(added), added
    breaks = list(counters["graph_break"])
    assert breaks and all("_chosen_tokens" in reason for reason in breaks), breaks


def test_token_selection_rounds_its_count_up_to_a_few_sizes():
    """With buckets, the chosen tokens are the mask's and the first ones it leaves out, as many
    as the next multiple of 1/buckets of the grid; their count takes at most `buckets` values."""
    sizes = set()
    for seed in range(40):
        generator = torch.Generator().manual_seed(seed)
        mask = torch.rand(3, 7, 5, generator=generator) < torch.rand(1, generator=generator)
        chosen = TokenSelection.from_mask(mask, buckets=8)  # steps of 14 of the 105 tokens
        count, size = int(mask.sum()), chosen.index[0].numel()
        assert size in (*range(0, 105, 14), 105) and count <= size < count + 14
        added = (chosen.mask & ~mask).flatten().nonzero().flatten()
        assert torch.equal(added, (~mask).flatten().nonzero().flatten()[: size - count])
        assert torch.equal(
            torch.stack(chosen.index), torch.stack(chosen.mask.nonzero(as_tuple=True))
        )
        sizes.add(size)
        exact = TokenSelection.from_mask(mask)
        assert torch.equal(exact.mask, mask) and exact.index[0].numel() == count
    assert 1 < len(sizes) <= 8


def test_token_selection_traces_and_picks_the_same_tokens():
    from megfm_hf.modeling.modeling_megfm import _lowest

    torch._dynamo.reset()
    scores = torch.rand(3, 50, generator=torch.Generator().manual_seed(0))
    counts = torch.tensor([0, 7, 49])
    traced = torch.compile(_lowest, fullgraph=True, backend="aot_eager")(scores, counts)
    eager = _lowest(scores, counts)
    assert torch.equal(traced, eager)
    assert eager.sum(dim=1).tolist() == [0, 7, 49]
    assert torch.equal(eager[1], scores[1] <= scores[1].sort().values[6])


def test_torch_compile_full_graph_classifier_with_labels():
    torch._dynamo.reset()
    model = MEGForSequenceClassification(tiny_config(num_labels=2)).eval()
    batch = meg_batch(batch_size=2, num_sensors=9, num_samples=30)
    labels = torch.tensor([0, 1])
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(
        compiled(**batch, labels=labels).loss, model(**batch, labels=labels).loss
    )


# ------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_model():
    return MEGModel(tiny_config()).eval()


def _batch():
    return meg_batch(batch_size=2, num_sensors=6, num_samples=20)


def test_wrong_rank_is_rejected(small_model):
    batch = _batch()
    batch["input_values"] = batch["input_values"][0]
    with pytest.raises(
        ValueError, match=r"input_values must have shape \(batch, sensors, samples\); got 2"
    ):
        small_model(**batch)


@pytest.mark.parametrize("name", ["sensor_positions", "sensor_types", "sensor_mask"])
def test_mismatched_sensor_counts_are_rejected(small_model, name):
    batch = _batch()
    batch[name] = batch[name][:, :5]
    with pytest.raises(
        ValueError, match=rf"{name} has shape \(2, 5.*expected {name} of shape \(2, 6"
    ):
        small_model(**batch)


def test_length_not_a_multiple_of_the_patch_is_rejected(small_model):
    batch = _batch()
    batch["input_values"] = batch["input_values"][..., :17]
    with pytest.raises(
        ValueError,
        match="17 samples per sensor, which is not a positive multiple of patch_length=10",
    ):
        small_model(**batch)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_values_are_rejected(small_model, value):
    batch = _batch()
    batch["input_values"][1, 4, 7] = value
    with pytest.raises(
        ValueError, match="NaN or Inf values \\(first at batch index 1, sensor 4, sample 7\\)"
    ):
        small_model(**batch)


def test_sample_without_valid_sensor_is_rejected(small_model):
    batch = _batch()
    batch["sensor_mask"][1] = False
    with pytest.raises(ValueError, match="sensor_mask marks no valid sensor in batch index 1"):
        small_model(**batch)


@pytest.mark.parametrize("code", [-1, 4])
def test_unknown_sensor_type_is_rejected(small_model, code):
    batch = _batch()
    batch["sensor_types"][0, 2] = code
    with pytest.raises(ValueError, match=rf"sensor_types holds code {code}; known codes are 0..3"):
        small_model(**batch)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="attention_mode='dense' is not allowed"):
        MEGConfig(attention_mode="dense")
    with pytest.raises(ValueError, match="pooling='latents' needs attention_mode='latent'"):
        MEGConfig(attention_mode="factorized", pooling="latents")
    # from_pretrained(..., pooling=...) sets the attribute without the config's checks
    loaded = tiny_config(attention_mode="factorized")
    loaded.pooling = "latents"
    with pytest.raises(ValueError, match="pooling='latents' needs attention_mode='latent'"):
        MEGModel(loaded)
    with pytest.raises(
        ValueError, match="hidden_size=30 is not divisible by num_attention_heads=4"
    ):
        MEGConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="mask_ratio=1.0 is outside"):
        MEGConfig(mask_ratio=1.0)
    with pytest.raises(ValueError, match="hidden_act='relu6x' is not an activation"):
        MEGConfig(hidden_act="relu6x")
    with pytest.raises(ValueError, match="attention_dropout=1.5 is outside"):
        MEGConfig(attention_dropout=1.5)
    with pytest.raises(ValueError, match="mlp_ratio=0.0 must be positive"):
        MEGConfig(mlp_ratio=0.0)
    with pytest.raises(ValueError, match="norm_patch_loss=True .* needs patch_length >= 2"):
        MEGConfig(patch_length=1, norm_patch_loss=True)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"attention_mode": "dense"}, "attention_mode='dense' is not allowed"),
        ({"mask_ratio": 1.5}, "mask_ratio=1.5 is outside"),
        ({"pooling": "latents", "attention_mode": "full"}, "pooling='latents' needs"),
    ],
)
def test_from_pretrained_overrides_are_checked(tmp_path, override, message):
    # transformers sets from_pretrained's keyword overrides on the loaded configuration
    # without running its checks; the model runs them before building anything.
    MEGForMaskedSignalModeling(tiny_config()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=message):
        MEGForMaskedSignalModeling.from_pretrained(tmp_path, **override)


def test_invalid_configuration_is_not_saved(tmp_path):
    config = tiny_config()
    config.mask_ratio = 2.0
    with pytest.raises(ValueError, match="mask_ratio=2.0 is outside"):
        config.save_pretrained(tmp_path)
    assert not (tmp_path / "config.json").exists()


def test_half_precision_mean_pooling_of_a_long_window_stays_finite():
    # 24 sensors x 3000 patches: a float16 sum over the 72,000 tokens overflows (max 65,504).
    model = MEGModel(tiny_config())
    tokens = torch.ones(1, 24, 3000, dtype=torch.bool)
    states = torch.full((1, 24, 3000, 32), 1.5, dtype=torch.float16)
    pooled = model.pool(states, tokens)
    assert pooled.dtype == torch.float16
    torch.testing.assert_close(pooled, torch.full((1, 32), 1.5, dtype=torch.float16))


def test_max_pooling_of_a_window_without_tokens_gives_zeros():
    model = MEGModel(tiny_config(pooling="max"))
    states = torch.randn(2, 6, 3, 32)
    tokens = torch.ones(2, 6, 3, dtype=torch.bool)
    tokens[1] = False
    pooled = model.pool(states, tokens)
    torch.testing.assert_close(pooled[0], states[0].amax(dim=(0, 1)))
    assert torch.equal(pooled[1], torch.zeros(32))


def test_factorized_hidden_states_are_zero_at_padded_sensors():
    model = MEGModel(tiny_config(attention_mode="factorized")).eval()
    batch = meg_batch(batch_size=2, num_sensors=9, num_samples=30)
    batch["sensor_mask"][1, 6:] = False
    out = model(**batch, output_hidden_states=True)
    for state in out.hidden_states[1:]:
        assert torch.count_nonzero(state[1, 6:]) == 0
        assert torch.count_nonzero(state[1, :6]) > 0


def test_classification_labels_of_minus_100_are_left_out_of_the_loss():
    model = MEGForSequenceClassification(tiny_config(num_labels=3)).eval()
    batch = meg_batch(batch_size=3)
    out = model(**batch, labels=torch.tensor([2, -100, 0]))
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits[[0, 2]], torch.tensor([2, 0])))
    with pytest.raises(ValueError, match="labels hold class -2 but the model has num_labels=3"):
        model(**batch, labels=torch.tensor([1, -2, 0]))
    with pytest.raises(ValueError, match="labels hold class 3 "):
        model(**batch, labels=torch.tensor([3, 0, 0]))


@pytest.mark.parametrize("mode", ["factorized", "full"])
def test_bf16_training_with_absent_sensors_under_float32_layer_norm(mode, monkeypatch):
    """CUDA autocast runs LayerNorm in float32 (CPU autocast keeps bfloat16): the encoded
    sub-grid of present tokens is then float32 and must be put back into the full grid as it
    is, whatever dtype the input grid had."""
    layer_norm = F.layer_norm

    def float32_layer_norm(input, *args, **kwargs):
        return layer_norm(input.float(), *args, **kwargs)

    monkeypatch.setattr(F, "layer_norm", float32_layer_norm)
    torch.manual_seed(0)
    model = MEGForMaskedSignalModeling(tiny_config(attention_mode=mode)).train()
    batch = meg_batch(batch_size=2, num_sensors=12, num_samples=40)
    batch["sensor_mask"][:, 5] = False  # a bad sensor in every window
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch)
    out.loss.backward()
    assert torch.isfinite(out.loss)
