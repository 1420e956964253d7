"""The megfm MEG foundation model: a geometry-aware transformer over (sensor, time patch) tokens.

This file travels to the Hugging Face Hub next to the weights as remote code, so it imports
only the Python standard library, torch, transformers and ``configuration_megfm``.

Reading order: output dataclasses, input validation, masking, embeddings, attention and
layers, the three encoders (latent, factorized, full), the pretrained-model base, the bare
:class:`MEGModel`, then the heads :class:`MEGForMaskedSignalModeling` and
:class:`MEGForSequenceClassification`.

Shapes use ``B`` batch, ``S`` sensors, ``T`` samples, ``P = T / patch_length`` time patches,
``L`` latents per patch, ``D`` hidden size and ``H`` attention heads.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput

from .configuration_megfm import MEGConfig

# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


@dataclass
class MEGModelOutput(ModelOutput):
    """Output of [`MEGModel`].

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(B, S, P, D)`):
            One feature vector per (sensor, time patch) after the encoder and the final norm.
            In `full` mode, which encodes present tokens only, hidden tokens and those of
            invalid sensors are zeros. None when the forward pass was asked to skip it
            (`output_token_states=False` with `pooling="latents"`).
        pooler_output (`torch.FloatTensor` of shape `(B, D)`):
            Summary of the tokens of valid sensors (mean or max, see `config.pooling`; in
            `full` mode of the present tokens), or with `pooling="latents"` the mean of the
            final latents over every patch.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            With `output_hidden_states=True`: the embeddings, then the output of every encoder
            block. `(B, S, P, D)` each in `full` and `factorized` modes; in `latent` mode the
            latent states `(B, P, L, D)` after the sensor cross-attention and every temporal block.
        attentions (`tuple(torch.FloatTensor)`, *optional*):
            With `output_attentions=True`: the main self-attention probabilities of every block.
            `full`: `(B, H, S*P, S*P)` over tokens ordered sensor-major. `factorized`: the temporal
            attention `(B, S, H, P, P)`. `latent`: the temporal attention over latents
            `(B, H, P*L, P*L)`.
        sensor_attentions (`tuple(torch.FloatTensor)`, *optional*):
            With `output_attentions=True`: attention over the sensor array within each time patch.
            `factorized`: one `(B, P, H, S, S)` per block. `latent`: one `(B, P, H, L, S + L)`
            from the sensor cross-attention, whose keys are the `S` sensors followed by the `L`
            latents themselves; `[..., :S]` is the map over sensors. `None` in `full` mode.
        mask (`torch.BoolTensor` of shape `(B, S, P)`, *optional*):
            The tokens hidden from the encoder (True = hidden), when a mask was applied.
        input_scale (`torch.FloatTensor` of shape `(B, S)`, *optional*):
            With `config.normalize_input_by_sensor_type`: what every sensor's input was divided
            by, the root mean square of the window's visible signal of that sensor's type.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    sensor_attentions: tuple[torch.FloatTensor, ...] | None = None
    mask: torch.BoolTensor | None = None
    input_scale: torch.FloatTensor | None = None


@dataclass
class MEGMaskedSignalModelingOutput(ModelOutput):
    """Output of [`MEGForMaskedSignalModeling`].

    Args:
        loss (`torch.FloatTensor` of shape `()`):
            Mean squared error over the samples of hidden tokens of valid sensors.
        reconstruction (`torch.FloatTensor` of shape `(B, S, T)`):
            The window with its hidden tokens, and all tokens of invalid sensors, predicted by
            the decoder and its other tokens as given (the decoder's prediction of every token
            with `decode_visible=True`); in input units, or in per-patch normalised units when
            `config.norm_patch_loss` is set.
        mask (`torch.BoolTensor` of shape `(B, S, P)`):
            The tokens hidden from the encoder (True = hidden); the loss covers exactly these,
            restricted to valid sensors.
        hidden_states, attentions, sensor_attentions:
            As in [`MEGModelOutput`], from the encoder.
    """

    loss: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    mask: torch.BoolTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    sensor_attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class MEGSequenceClassifierOutput(ModelOutput):
    """Output of [`MEGForSequenceClassification`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            Classification (or regression) loss, when `labels` are given.
        logits (`torch.FloatTensor` of shape `(B, num_labels)`):
            Scores before softmax (or sigmoid for multi-label problems).
        pooler_output (`torch.FloatTensor` of shape `(B, D)`):
            The pooled features the classifier saw.
        hidden_states, attentions, sensor_attentions:
            As in [`MEGModelOutput`].
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    sensor_attentions: tuple[torch.FloatTensor, ...] | None = None


# --------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------


def _shape(tensor: torch.Tensor) -> str:
    return "(" + ", ".join(str(n) for n in tensor.shape) + ")"


def validate_inputs(
    config: MEGConfig,
    input_values: torch.Tensor,
    sensor_positions: torch.Tensor,
    sensor_types: torch.Tensor,
    sensor_mask: torch.Tensor | None,
    mask: torch.Tensor | None = None,
) -> None:
    """Check the model inputs and raise a `ValueError` that names the argument and the problem.

    Shapes and dtypes are checked always; value checks (NaN/Inf, empty samples, unknown sensor
    types) read the data back, once for all of them, and are skipped while `torch.compile`
    traces the model.
    """
    if input_values.dim() != 3:
        raise ValueError(
            f"input_values must have shape (batch, sensors, samples); got {input_values.dim()} "
            f"dimensions with shape {_shape(input_values)}."
        )
    batch_size, num_sensors, num_samples = input_values.shape
    if num_samples == 0 or num_samples % config.patch_length:
        raise ValueError(
            f"input_values has {num_samples} samples per sensor, which is not a positive multiple "
            f"of patch_length={config.patch_length} (the model cuts the signal into patches of "
            f"{config.patch_duration * 1e3:g} ms at {config.sampling_rate:g} Hz); crop or pad "
            "the window to a whole number of patches."
        )
    expected = {
        "sensor_positions": (sensor_positions, (batch_size, num_sensors, 6)),
        "sensor_types": (sensor_types, (batch_size, num_sensors)),
    }
    if sensor_mask is not None:
        expected["sensor_mask"] = (sensor_mask, (batch_size, num_sensors))
    if mask is not None:
        num_patches = num_samples // config.patch_length
        expected["mask"] = (mask, (batch_size, num_sensors, num_patches))
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"{name} has shape {_shape(tensor)} but input_values has shape "
                f"{_shape(input_values)}; expected {name} of shape {shape}."
            )
    if sensor_types.dtype.is_floating_point or sensor_types.dtype == torch.bool:
        raise ValueError(f"sensor_types must hold integer codes; got dtype {sensor_types.dtype}.")
    if sensor_mask is not None and sensor_mask.dtype != torch.bool:
        raise ValueError(f"sensor_mask must be a bool tensor; got dtype {sensor_mask.dtype}.")
    if mask is not None and mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor (True = hidden); got dtype {mask.dtype}.")
    if torch.compiler.is_compiling():
        return
    # Reading a value back from a GPU waits for every queued kernel, so the value checks are read
    # back together, and only a failed one looks for the offending value.
    checks = {
        "input_values": torch.isfinite(input_values).all(),
        "sensor_positions": torch.isfinite(sensor_positions).all(),
        "sensor_types": ((sensor_types >= 0) & (sensor_types < config.num_sensor_types)).all(),
    }
    if sensor_mask is not None:
        checks["sensor_mask"] = sensor_mask.any(dim=1).all()
    passed = dict(zip(checks, torch.stack(list(checks.values())).tolist(), strict=True))
    if not passed["input_values"]:
        bad = (~torch.isfinite(input_values)).nonzero()[0].tolist()
        raise ValueError(
            "input_values holds NaN or Inf values (first at batch index "
            f"{bad[0]}, sensor {bad[1]}, sample {bad[2]}); mark bad sensors in sensor_mask and "
            "set their values to 0 instead."
        )
    if not passed["sensor_positions"]:
        raise ValueError("sensor_positions holds NaN or Inf values.")
    if not passed["sensor_types"]:
        low, high = int(sensor_types.min()), int(sensor_types.max())
        raise ValueError(
            f"sensor_types holds code {low if low < 0 else high}; known codes are "
            f"0..{config.num_sensor_types - 1} for {config.sensor_types}."
        )
    if not passed.get("sensor_mask", True):
        empty = (~sensor_mask.any(dim=1)).nonzero().flatten().tolist()
        raise ValueError(
            f"sensor_mask marks no valid sensor in batch index {empty[0]}; every sample "
            "needs at least one valid sensor."
        )


# --------------------------------------------------------------------------------------------
# Masking
# --------------------------------------------------------------------------------------------


def _lowest(scores: torch.Tensor, counts: torch.Tensor) -> torch.BoolTensor:
    """True at the ``counts[b]`` lowest scores of every row ``b`` of ``scores`` `(B, N)`.

    A partial selection (``topk``) rather than a full sort: several times faster for the
    thousands of tokens of a window. Its results only need ordering when rows want
    different counts. While `torch.compile` traces, whose shapes must not depend on the
    counts, every score's rank is compared with its row's count instead (the same tokens).
    """
    if torch.compiler.is_compiling():
        return scores.argsort(dim=-1).argsort(dim=-1) < counts[:, None]
    chosen = torch.zeros_like(scores, dtype=torch.bool)
    most = int(counts.max()) if counts.numel() else 0
    if most == 0:
        return chosen
    same = bool((counts == most).all())
    index = torch.topk(scores, most, dim=-1, largest=False, sorted=not same).indices
    take = torch.arange(most, device=scores.device) < counts[:, None]
    return chosen.scatter_(-1, index, take)


def compute_signal_mask(
    sensor_mask: torch.Tensor,
    num_patches: int,
    mask_ratio: float,
    sensor_fraction: float = 0.3,
    time_fraction: float = 0.3,
    generator: torch.Generator | None = None,
) -> torch.BoolTensor:
    """Draw which (sensor, patch) tokens to hide for masked-signal modelling.

    Hiding random tokens alone lets a model interpolate from neighbouring sensors and patches,
    so the mask mixes three kinds: whole sensors, one contiguous block of time patches across
    all sensors, and single random tokens that bring the total to ``mask_ratio``.

    Parameters
    ----------
    sensor_mask : torch.BoolTensor, shape (B, S)
        True for valid sensors. Padding and bad sensors are never counted nor hidden.
    num_patches : int
        Time patches per window, ``P``.
    mask_ratio : float
        Fraction of the valid tokens to hide, in [0, 1). At least one token stays visible.
    sensor_fraction, time_fraction : float
        Shares of the hidden tokens drawn as whole sensors and as a time block.
    generator : torch.Generator, optional
        Source of randomness, for reproducible masks.

    Returns
    -------
    mask : torch.BoolTensor, shape (B, S, P)
        True where the token is hidden.
    """
    batch_size, num_sensors = sensor_mask.shape
    device = sensor_mask.device

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(
            shape, generator=generator, device=generator.device if generator else device
        ).to(device)

    valid_sensors = sensor_mask.sum(dim=1)
    num_valid_tokens = valid_sensors * num_patches
    target = torch.minimum(
        torch.round(mask_ratio * num_valid_tokens.float()).long(), num_valid_tokens - 1
    )

    # Whole sensors: the lowest-ranked valid sensors of a random score.
    num_hidden_sensors = torch.floor(mask_ratio * sensor_fraction * valid_sensors.float()).long()
    sensor_scores = uniform(batch_size, num_sensors).masked_fill(~sensor_mask, 2.0)
    hidden_sensors = _lowest(sensor_scores, num_hidden_sensors)

    # One time block per window, the same for every sensor.
    block = int(math.floor(mask_ratio * time_fraction * num_patches))
    start = torch.floor(uniform(batch_size) * (num_patches - block + 1)).long()
    patch_index = torch.arange(num_patches, device=device)
    hidden_times = (patch_index >= start[:, None]) & (patch_index < start[:, None] + block)

    mask = (hidden_sensors[:, :, None] | hidden_times[:, None, :]) & sensor_mask[:, :, None]

    # Random tokens until the target count is reached.
    missing = (target - mask.sum(dim=(1, 2))).clamp(min=0)
    token_scores = uniform(batch_size, num_sensors, num_patches)
    token_scores = token_scores.masked_fill(mask | ~sensor_mask[:, :, None], 2.0)
    chosen = _lowest(token_scores.view(batch_size, -1), missing)
    return mask | chosen.view(batch_size, num_sensors, num_patches)


# --------------------------------------------------------------------------------------------
# Embeddings
# --------------------------------------------------------------------------------------------


def sinusoidal_encoding(
    positions: torch.Tensor, dim: int, max_period: float, dtype: torch.dtype
) -> torch.Tensor:
    """Transformer sine/cosine encoding of (possibly fractional) ``positions``: (..., ) -> (..., dim)."""
    half = dim // 2
    exponent = torch.arange(half, device=positions.device, dtype=torch.float32) / max(half, 1)
    frequencies = max_period ** (-exponent)
    angles = positions.float()[..., None] * frequencies
    encoding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if dim % 2:
        encoding = F.pad(encoding, (0, 1))
    return encoding.to(dtype)


def sensor_type_scale(
    input_values: torch.Tensor,
    sensor_types: torch.Tensor,
    present: torch.Tensor | None,
    patch_length: int,
    num_types: int,
) -> torch.Tensor:
    """Root mean square of each window's visible signal per sensor type, per sensor `(B, S)`.

    Only present tokens count, so the scale of a window never reveals a hidden signal. Types
    absent from a window get a scale of 1. Sums run in float32 by elementwise products rather
    than matrix products, which autocast would run in float16, where summed squares overflow.
    """
    batch_size, num_sensors, _ = input_values.shape
    power = input_values.float().view(batch_size, num_sensors, -1, patch_length).pow(2).mean(dim=-1)
    weights = torch.ones_like(power) if present is None else present.to(power.dtype)
    # (B, S, C): compared with each code, as F.one_hot reads the codes back on some devices
    codes = torch.arange(num_types, device=sensor_types.device)
    one_hot = (sensor_types.long()[..., None] == codes).to(power.dtype)
    total = ((power * weights).sum(dim=-1, keepdim=True) * one_hot).sum(dim=1)  # (B, C)
    count = (weights.sum(dim=-1, keepdim=True) * one_hot).sum(dim=1)
    rms = torch.where(count > 0, (total / count.clamp(min=1.0)).sqrt(), torch.ones_like(total))
    return (one_hot * rms.clamp(min=1e-12).unsqueeze(1)).sum(dim=-1)


class MEGGeometryEmbedding(nn.Module):
    """Embeds a sensor's position (m) and unit orientation with Fourier features and an MLP.

    Wavelengths of the position features run geometrically from `fourier_min_wavelength` to
    `fourier_max_wavelength` metres, so neighbouring sensors a centimetre apart and sides of the
    head are both resolved; the orientation uses wavelengths from 0.5 to 8 (unitless). Smooth
    features of real geometry, rather than a learned table per channel name, let one model meet
    sensor arrays it never saw.
    """

    def __init__(self, config: MEGConfig):
        super().__init__()
        self.num_frequencies = config.num_fourier_features
        self.min_wavelength = config.fourier_min_wavelength
        self.max_wavelength = config.fourier_max_wavelength
        self.projection = nn.Sequential(
            nn.Linear(self.num_features, config.hidden_size),
            ACT2FN[config.hidden_act],
            nn.Linear(config.hidden_size, config.hidden_size),
        )

    def _wavelengths(self, low: float, high: float, device: torch.device) -> torch.Tensor:
        steps = torch.linspace(0.0, 1.0, self.num_frequencies, device=device)
        return low * (high / low) ** steps

    @property
    def num_features(self) -> int:
        """Length of the Fourier feature vector of one sensor."""
        return 6 + 6 * 2 * self.num_frequencies

    def fourier_features(self, sensor_positions: torch.Tensor) -> torch.Tensor:
        """(B, S, 6) positions and orientations -> (B, S, `num_features`) float32 features."""
        device = sensor_positions.device
        position_wavelengths = self._wavelengths(self.min_wavelength, self.max_wavelength, device)
        orientation_wavelengths = self._wavelengths(0.5, 8.0, device)
        wavelengths = torch.cat(
            [position_wavelengths.expand(3, -1), orientation_wavelengths.expand(3, -1)]
        )
        angles = 2 * math.pi * sensor_positions.float()[..., None] / wavelengths  # (B, S, 6, F)
        return torch.cat(
            [
                sensor_positions.float(),
                torch.sin(angles).flatten(-2),
                torch.cos(angles).flatten(-2),
            ],
            dim=-1,
        )

    def forward(self, sensor_positions: torch.Tensor) -> torch.Tensor:
        """(B, S, 6) positions and orientations -> (B, S, D)."""
        weight_dtype = self.projection[0].weight.dtype
        return self.projection(self.fourier_features(sensor_positions).to(weight_dtype))


def _transposed(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """`tensor.transpose(1, 2)` laid out contiguously, or None."""
    return None if tensor is None else tensor.transpose(1, 2).contiguous()


class MEGEmbeddings(nn.Module):
    """Token embeddings: signal patch + sensor geometry + sensor type + temporal position.

    Hidden tokens (and all tokens of invalid sensors) carry a learned mask embedding instead of
    their samples, so no hidden signal can reach the encoder whatever the attention mode.
    """

    def __init__(self, config: MEGConfig):
        super().__init__()
        self.patch_length = config.patch_length
        self.max_patches = config.max_patches
        self.hidden_size = config.hidden_size
        self.patch_projection = nn.Linear(config.patch_length, config.hidden_size)
        self.mask_embedding = nn.Parameter(torch.zeros(config.hidden_size))
        self.geometry = MEGGeometryEmbedding(config)
        self.sensor_type = nn.Embedding(config.num_sensor_types, config.hidden_size)
        # The log of each sensor type's signal level, so normalised inputs keep their amplitude.
        self.scale_projection = nn.Linear(1, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def time_encoding(
        self, num_patches: int, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """(P, D) sinusoidal encoding of the patch index."""
        index = torch.arange(num_patches, device=device)
        return sinusoidal_encoding(index, self.hidden_size, 10.0 * self.max_patches, dtype)

    def position_parts(
        self, sensor_positions: torch.Tensor, sensor_types: torch.Tensor, num_patches: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Where every sensor is, `(B, S, D)` (geometry + sensor type), and when every patch
        is, `(P, D)`; a token's position embedding is the sum of its sensor's and its patch's."""
        sensor = self.geometry(sensor_positions) + self.sensor_type(sensor_types.long())
        return sensor, self.time_encoding(num_patches, sensor_positions.device, sensor.dtype)

    def forward(
        self,
        input_values: torch.Tensor,
        sensor_positions: torch.Tensor,
        sensor_types: torch.Tensor,
        hidden: torch.Tensor | None,
        scale: torch.Tensor | None = None,
        position: tuple[torch.Tensor, torch.Tensor] | None = None,
        patch_major: bool = False,
    ) -> torch.Tensor:
        """Return the tokens `(B, S, P, D)`.

        `hidden` `(B, S, P)` marks tokens to replace by the mask embedding; `scale` `(B, S)`,
        when given, is the signal level the inputs were divided by, embedded by its logarithm.
        `position`, when given, is :meth:`position_parts` of these sensors and patches,
        computed once by a caller that needs it too. With `patch_major`, the tokens are laid
        out in memory patch by patch (the transpose of a contiguous `(B, P, S, D)`), as an
        encoder that works on the sensors of each patch reads them.
        """
        batch_size, num_sensors, num_samples = input_values.shape
        num_patches = num_samples // self.patch_length
        weight_dtype = self.patch_projection.weight.dtype
        if position is None:
            position = self.position_parts(sensor_positions, sensor_types, num_patches)
        per_sensor, per_patch = position
        if scale is not None:
            level = self.scale_projection(scale.log().to(weight_dtype)[..., None])
            per_sensor = per_sensor + level
        patches = input_values.to(weight_dtype).view(
            batch_size, num_sensors, num_patches, self.patch_length
        )
        if patch_major:  # (the samples, a tenth of the size of the tokens, are moved instead)
            patches, hidden = _transposed(patches), _transposed(hidden)
            per_sensor, per_patch = per_sensor[:, None, :, :], per_patch[None, :, None, :]
        else:
            per_sensor, per_patch = per_sensor[:, :, None, :], per_patch[None, None, :, :]
        signal = self.patch_projection(patches)
        if hidden is not None:
            signal = torch.where(hidden[..., None], self.mask_embedding.to(signal.dtype), signal)
        # Per-sensor and per-patch parts are added to the tokens one after the other: the
        # (B, S, P, D) grid of position embeddings is never formed.
        tokens = self.dropout(signal + per_sensor + per_patch)
        return tokens.transpose(1, 2) if patch_major else tokens


# --------------------------------------------------------------------------------------------
# Attention and layers
# --------------------------------------------------------------------------------------------


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention in plain torch ops that also returns the probabilities.

    `attention_mask` is boolean (True = may attend) or an additive float bias, broadcastable to
    `(N, H, Lq, Lk)`.
    Returns the output `(N, Lq, H, Dh)` and the probabilities `(N, H, Lq, Lk)`.
    """
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    elif attention_mask is not None:
        scores = scores + attention_mask
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


def key_padding_mask(present: torch.Tensor | None) -> torch.Tensor | None:
    """Turn `(N, Lk)` present flags into an attention mask `(N, 1, 1, Lk)`.

    A sequence with no present key (a patch whose sensors are all hidden, a padded sensor) may
    attend to all of its keys instead: such rows only ever hold hidden tokens, whose outputs are
    discarded, and it keeps the softmax finite without a data-dependent branch.
    """
    if present is None:
        return None
    present = present | ~present.any(dim=-1, keepdim=True)
    return present[:, None, None, :]


class MEGFusedLinear(nn.Linear):
    """Several linear maps of one input stacked as one layer: `parts` equal blocks of outputs.

    One matrix product instead of `parts`, and one weight to cast under autocast: fewer,
    larger kernels. Each block is initialised as a layer of its own would be
    (:meth:`MEGPreTrainedModel._init_weights`).
    """

    def __init__(self, in_features: int, out_features: int, parts: int):
        super().__init__(in_features, out_features * parts)
        self.parts = parts


class MEGAttention(nn.Module):
    """Multi-head (self- or cross-) attention dispatched through transformers' attention registry.

    `config._attn_implementation` selects the kernel (`"sdpa"` by default: PyTorch's
    scaled-dot-product attention, with flash kernels on GPU when no mask is needed); a call
    with `output_attentions=True` runs the eager path, which returns the probabilities.

    Projections that read the same input run as one: a self-attention's queries, keys and
    values (`qkv_proj`), a cross-attention's keys and values (`kv_proj`, beside `q_proj`).
    """

    is_causal = False

    def __init__(
        self, config: MEGConfig, hidden_size: int, num_heads: int, cross_attention: bool = False
    ):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.attention_dropout
        self.cross_attention = cross_attention
        if cross_attention:
            self.q_proj = nn.Linear(hidden_size, hidden_size)
            self.kv_proj = MEGFusedLinear(hidden_size, hidden_size, parts=2)
        else:
            self.qkv_proj = MEGFusedLinear(hidden_size, hidden_size, parts=3)
        self.o_proj = nn.Linear(hidden_size, hidden_size)

    def _heads(self, projected: torch.Tensor, parts: int) -> tuple[torch.Tensor, ...]:
        """(N, L, parts * D) -> `parts` tensors (N, heads, L, head_dim), views of `projected`."""
        n, length, _ = projected.shape
        split = projected.view(n, length, parts, self.num_heads, self.head_dim)
        return tuple(part.transpose(1, 2) for part in split.unbind(2))

    def forward(
        self,
        hidden_states: torch.Tensor,
        context: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        rows: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N, Lq, D) queries attend to (N, Lk, D) `context` (a cross-attention's) or to
        themselves (a self-attention's, `context` None).

        With `rows`, indices `(n, q)` of some queries, only their outputs `(K, D)` come back
        (the output projection runs on them alone).
        """
        if (context is not None) != self.cross_attention:
            kind = (
                "a cross-attention needs" if self.cross_attention else "a self-attention takes no"
            )
            raise ValueError(f"{kind} context")
        n, query_length, _ = hidden_states.shape
        if self.cross_attention:
            (query,) = self._heads(self.q_proj(hidden_states), 1)
            key, value = self._heads(self.kv_proj(context), 2)
        else:
            query, key, value = self._heads(self.qkv_proj(hidden_states), 3)

        if attention_mask is not None and attention_mask.dtype != torch.bool:
            attention_mask = attention_mask.to(query.dtype)
        attention_interface: Callable = eager_attention_forward
        implementation = self.config._attn_implementation or "sdpa"
        if not output_attentions and implementation != "eager":
            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
                implementation, eager_attention_forward
            )
        output, weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            scaling=self.scaling,
            dropout=self.dropout if self.training else 0.0,
            is_causal=False,
        )
        output = output.reshape(n, query_length, -1)
        if rows is not None:
            output = output[rows]
        return self.o_proj(output), (weights if output_attentions else None)


class MEGMLP(nn.Module):
    """Two-layer feed-forward block."""

    def __init__(self, hidden_size: int, intermediate_size: int, config: MEGConfig):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(intermediate_size, hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.act(self.fc1(hidden_states))))


class MEGLayer(GradientCheckpointingLayer):
    """Pre-norm transformer block: (cross-)attention then feed-forward, both residual.

    With `context`, the queries attend to `context` (normalised by its own norm); otherwise the
    block is a self-attention block. With `rows`, the indices `(n, q)` of some query rows (as
    `nonzero(as_tuple=True)` of an `(N, Lq)` mask gives them), only those rows come out,
    `(K, D)` in the order of the indices: the attention's output projection and the
    feed-forward half run on them alone (for outputs that only some tokens need). The caller
    chooses the rows, so the block's sizes follow its inputs and it compiles as one graph
    (`accelerate.utils.compile_regions`).
    """

    def __init__(
        self, config: MEGConfig, hidden_size: int, num_heads: int, cross_attention: bool = False
    ):
        super().__init__()
        intermediate_size = int(round(hidden_size * config.mlp_ratio))
        self.attention_norm = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.context_norm = (
            nn.LayerNorm(hidden_size, eps=config.layer_norm_eps) if cross_attention else None
        )
        self.attention = MEGAttention(config, hidden_size, num_heads, cross_attention)
        self.attention_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.mlp_norm = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.mlp = MEGMLP(hidden_size, intermediate_size, config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        context: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        rows: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        normed = self.attention_norm(hidden_states)
        if self.context_norm is not None:
            context = self.context_norm(context)
        attended, weights = self.attention(
            normed, context, attention_mask, output_attentions, rows=rows
        )
        residual = hidden_states if rows is None else hidden_states[rows]
        hidden_states = residual + self.attention_dropout(attended)
        return hidden_states + self.mlp(self.mlp_norm(hidden_states)), weights


class MEGFeedForwardLayer(GradientCheckpointingLayer):
    """Pre-norm residual feed-forward block, applied to every token on its own."""

    def __init__(self, config: MEGConfig, hidden_size: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.mlp = MEGMLP(hidden_size, int(round(hidden_size * config.mlp_ratio)), config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states + self.mlp(self.norm(hidden_states))


class MEGFactorizedLayer(GradientCheckpointingLayer):
    """Attention over sensors within each patch, then over patches within each sensor, then MLP."""

    def __init__(self, config: MEGConfig, hidden_size: int, num_heads: int):
        super().__init__()
        self.spatial_norm = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.spatial_attention = MEGAttention(config, hidden_size, num_heads)
        self.temporal_norm = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.temporal_attention = MEGAttention(config, hidden_size, num_heads)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.mlp_norm = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.mlp = MEGMLP(hidden_size, int(round(hidden_size * config.mlp_ratio)), config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        present: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(B, S, P, D) grid; `present` (B, S, P) marks the tokens that may be attended to."""
        batch_size, num_sensors, num_patches, hidden_size = hidden_states.shape
        # Sensors within a patch: sequences of length S, one per (window, patch).
        spatial = hidden_states.transpose(1, 2).reshape(
            batch_size * num_patches, num_sensors, hidden_size
        )
        spatial_mask = (
            None
            if present is None
            else key_padding_mask(present.transpose(1, 2).reshape(-1, num_sensors))
        )
        attended, spatial_weights = self.spatial_attention(
            self.spatial_norm(spatial), None, spatial_mask, output_attentions
        )
        spatial = spatial + self.dropout(attended)
        hidden_states = spatial.view(batch_size, num_patches, num_sensors, hidden_size).transpose(
            1, 2
        )

        # Patches within a sensor: sequences of length P, one per (window, sensor).
        temporal = hidden_states.reshape(batch_size * num_sensors, num_patches, hidden_size)
        temporal_mask = (
            None if present is None else key_padding_mask(present.reshape(-1, num_patches))
        )
        attended, temporal_weights = self.temporal_attention(
            self.temporal_norm(temporal), None, temporal_mask, output_attentions
        )
        temporal = temporal + self.dropout(attended)
        temporal = temporal + self.mlp(self.mlp_norm(temporal))
        hidden_states = temporal.view(batch_size, num_sensors, num_patches, hidden_size)

        if output_attentions:
            spatial_weights = spatial_weights.view(
                batch_size, num_patches, *spatial_weights.shape[1:]
            )
            temporal_weights = temporal_weights.view(
                batch_size, num_sensors, *temporal_weights.shape[1:]
            )
        return hidden_states, temporal_weights, spatial_weights


# --------------------------------------------------------------------------------------------
# Encoders: each maps the token grid (B, S, P, D) to a grid of the same shape.
# --------------------------------------------------------------------------------------------


def _present_first(kept: torch.Tensor, length: int) -> torch.Tensor:
    """Indices `(B, K)` of the True entries of `kept` `(B, N)`, in order, K = `length`.

    `length` is the most True entries of a row, read back from the device by the caller
    (together with whatever else it needs, as each read waits for the queued kernels). Rows
    with fewer True entries are filled with indices of False ones, which the callers keep out
    of every attention (the full encoder's key padding, the factorized sub-grid's present
    flags).
    """
    order = torch.argsort((~kept).to(torch.int8), dim=1, stable=True)
    return order[:, : max(length, 1)]


#: Under `torch.compile`, the number of tokens that pretraining reads out and decodes is rounded
#: up to a multiple of 1/64 of the batch's tokens (at most 1.6% of them more), so it takes a few
#: values however the counts of bad sensors vary (`TokenSelection.from_mask`).
COMPILED_SELECTION_BUCKETS = 64


@dataclass
class TokenSelection:
    """Tokens of a `(B, S, P)` grid that a head needs, for the latent read-out and decoder.

    `index` holds the (window, sensor, patch) of every chosen token. Finding them reads the
    mask back from the device, so it is done once per step and shared by the encoder's
    read-out and the decoder; the steps between them gather and scatter with these indices.
    """

    #: (B, S, P), True at the chosen tokens
    mask: torch.Tensor
    #: (window, sensor, patch) indices of the chosen tokens, each of shape (K,)
    index: tuple[torch.Tensor, torch.Tensor, torch.Tensor]

    @classmethod
    def from_mask(cls, mask: torch.Tensor, buckets: int | None = None) -> TokenSelection:
        """The True tokens of `mask` `(B, S, P)`: one read back from the device.

        Their number follows the data, so under `torch.compile` this step runs eagerly between
        two graphs (one graph break), and what follows it compiles with the number as a size.
        With `buckets`, the number is rounded up to a multiple of `1 / buckets` of the grid
        with the first tokens that `mask` leaves out (whose outputs the callers set aside), so
        it takes at most `buckets` values: a graph replayed as CUDA graphs records one per
        value, where otherwise every new count of bad sensors would record another.
        """
        return cls(*_chosen_tokens(mask, buckets))


@torch.compiler.disable
def _chosen_tokens(
    mask: torch.Tensor, buckets: int | None
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """`mask`, with the tokens added to round its count up with `buckets`, and their indices."""
    if buckets is None:
        return mask, mask.nonzero(as_tuple=True)
    total = mask.numel()
    step = -(-total // buckets)
    count = int(mask.sum())
    size = min(-(-count // step) * step, total)
    if size > count:
        left_out = ~mask.flatten()
        added = left_out & (left_out.cumsum(0) <= size - count)
        mask = mask | added.view_as(mask)
    return mask, torch.nonzero_static(mask, size=size).unbind(1)


@dataclass
class EncoderResult:
    """What an encoder hands back to the model (internal)."""

    #: (B, S, P, D) token states; None where the latent encoder skipped its read-out; with
    #: a `TokenSelection` to read out, `(K, D)`: the chosen tokens' states, in its order
    grid: torch.Tensor | None
    hidden_states: tuple[torch.Tensor, ...] | None
    attentions: tuple[torch.Tensor, ...] | None
    sensor_attentions: tuple[torch.Tensor, ...] | None
    #: (B, P, L, D) normalised latents after the last block (latent encoder only)
    latents: torch.Tensor | None = None


class MEGFullEncoder(nn.Module):
    """Every present token attends to every present token of its window.

    Absent tokens (hidden by the mask, or of padded and bad sensors) are never encoded: as in
    ViT-MAE, the present tokens of each window are gathered into a shorter sequence, so a
    pretraining step at mask ratio `r` costs about `(1 - r)^2` of the attention and `1 - r` of
    the rest, and padding from batches that mix sensor arrays costs nothing. Windows with as
    many present tokens as each other (the usual case: the mask hides the same share of every
    window) need no attention mask at all, which keeps SDPA's flash kernels on a GPU. Absent
    tokens come out as zeros; decoders give them their own (mask) tokens.

    Traced whole by `torch.compile`, whose shapes must not depend on the data, the encoder runs
    over the whole grid with a key-padding mask instead, with the same outputs; compiling the
    blocks alone (`accelerate.utils.compile_regions`) keeps the gathering.
    """

    def __init__(self, config: MEGConfig, hidden_size: int, num_heads: int, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(
            [MEGLayer(config, hidden_size, num_heads) for _ in range(num_layers)]
        )
        self.norm = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        #: gather present tokens before encoding (off: key-padding mask over the whole grid)
        self.gather_present = True

    def forward(
        self,
        grid: torch.Tensor,
        present: torch.Tensor | None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> EncoderResult:
        batch_size, num_sensors, num_patches, hidden_size = grid.shape
        num_tokens = num_sensors * num_patches
        tokens = grid.reshape(batch_size, num_tokens, hidden_size)
        if present is None:
            return self._encode(tokens, None, grid, output_attentions, output_hidden_states)
        present = present.reshape(batch_size, num_tokens)
        if not self.gather_present or torch.compiler.is_compiling():
            return self._encode(
                tokens, present, grid, output_attentions, output_hidden_states, present
            )

        # Present tokens first, in their original order.
        counts = present.sum(dim=1)
        most, same = torch.stack([counts.max(), (counts == counts[0]).all().long()]).tolist()
        order = _present_first(present, most)
        kept = torch.arange(order.shape[1], device=grid.device)[None, :] < counts[:, None]
        gathered = tokens.gather(1, order[:, :, None].expand(-1, -1, hidden_size))
        padding = None if same else kept
        result = self._encode(
            gathered, padding, None, output_attentions, output_hidden_states, kept
        )

        def scatter(states: torch.Tensor) -> torch.Tensor:
            full = states.new_zeros(batch_size, num_tokens, hidden_size)
            full.scatter_(1, order[:, :, None].expand(-1, -1, hidden_size), states)
            return full.view_as(grid)

        hidden_states = None
        if result.hidden_states is not None:
            hidden_states = (grid,) + tuple(scatter(s) for s in result.hidden_states[1:])
        attentions = None
        if result.attentions is not None:
            attentions = tuple(
                self._scatter_weights(w, order, num_tokens) for w in result.attentions
            )
        return EncoderResult(scatter(result.grid), hidden_states, attentions, None)

    def _encode(
        self,
        tokens: torch.Tensor,
        padding: torch.Tensor | None,
        grid: torch.Tensor | None,
        output_attentions: bool,
        output_hidden_states: bool,
        keep: torch.Tensor | None = None,
    ) -> EncoderResult:
        """Run the blocks over `(B, N, D)` tokens; rows where `keep` is False come out as zeros.

        Hidden states come back as `(B, N, D)` sequences when `grid` is None, and in the shape
        of `grid` (with `grid` itself first) otherwise.
        """
        mask = None if padding is None else key_padding_mask(padding)
        keep_rows = None if keep is None else keep[:, :, None]

        def finish(states: torch.Tensor) -> torch.Tensor:
            states = states if keep_rows is None else states * keep_rows.to(states.dtype)
            return states if grid is None else states.view_as(grid)

        hidden_states = ((tokens if grid is None else grid),) if output_hidden_states else None
        attentions = () if output_attentions else None
        for layer in self.layers:
            tokens, weights = layer(tokens, None, mask, output_attentions)
            if output_hidden_states:
                hidden_states += (finish(tokens),)
            if output_attentions:
                if keep is not None:
                    weights = weights * keep[:, None, :, None].to(weights.dtype)
                attentions += (weights,)
        return EncoderResult(finish(self.norm(tokens)), hidden_states, attentions, None)

    @staticmethod
    def _scatter_weights(
        weights: torch.Tensor, order: torch.Tensor, num_tokens: int
    ) -> torch.Tensor:
        """Attention among gathered tokens `(B, H, n, n)` -> among all tokens `(B, H, N, N)`."""
        batch_size, num_heads, length, _ = weights.shape
        full = weights.new_zeros(batch_size, num_heads, num_tokens, length)
        rows = order[:, None, :, None].expand(-1, num_heads, -1, length)
        full.scatter_(2, rows, weights)
        out = weights.new_zeros(batch_size, num_heads, num_tokens, num_tokens)
        columns = order[:, None, None, :].expand(-1, num_heads, num_tokens, -1)
        return out.scatter_(3, columns, full)


class MEGFactorizedEncoder(nn.Module):
    """Blocks that attend over sensors within a patch, then over patches within a sensor.

    Sensors without a present token (hidden whole by the mask, padded, bad) and patches without
    one (the mask's time block) are dropped before the blocks: the window's present tokens all
    lie in the remaining sub-grid, which every window of a batch shares in size when the mask
    hides the same share of each (the usual case). At the default mask this encodes about 70%
    of the tokens, at mask ratio 0.75 about 60%. Tokens without a present key stay in the
    sub-grid (random hidden tokens) and are encoded as in the whole grid; absent tokens come
    out as zeros either way.

    Attention probabilities and hidden states, and the model traced whole by `torch.compile`
    (whose shapes must not depend on the mask), take the whole grid with key-padding masks,
    with the same outputs; compiling the blocks alone (`accelerate.utils.compile_regions`)
    keeps the sub-grid.
    """

    def __init__(self, config: MEGConfig, hidden_size: int, num_heads: int, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(
            [MEGFactorizedLayer(config, hidden_size, num_heads) for _ in range(num_layers)]
        )
        self.norm = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        #: drop sensors and patches without present tokens (off: the whole grid, masked)
        self.gather_present = True

    def forward(
        self,
        grid: torch.Tensor,
        present: torch.Tensor | None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> EncoderResult:
        batch_size, num_sensors, num_patches, hidden_size = grid.shape
        gather = not (
            present is None
            or not self.gather_present
            or output_attentions
            or output_hidden_states
            or torch.compiler.is_compiling()
        )
        if gather:
            sensor_kept, patch_kept = present.any(dim=2), present.any(dim=1)
            most = torch.stack([sensor_kept.sum(dim=1).max(), patch_kept.sum(dim=1).max()])
            most_sensors, most_patches = most.tolist()
            sensors = _present_first(sensor_kept, most_sensors)  # (B, S') sensor indices
            patches = _present_first(patch_kept, most_patches)  # (B, P') patch indices
            gather = sensors.shape[1] < num_sensors or patches.shape[1] < num_patches
        if not gather:
            result = self._encode(grid, present, output_attentions, output_hidden_states)
            if present is not None:
                # Absent tokens are zeros in every output, as in the other modes.
                keep = present[..., None].to(result.grid.dtype)
                result.grid = result.grid * keep
                if result.hidden_states is not None:
                    result.hidden_states = tuple(state * keep for state in result.hidden_states)
            return result

        sub_present = _take_grid(present[..., None], sensors, patches)[..., 0]
        result = self._encode(_take_grid(grid, sensors, patches), sub_present, False, False)
        states = result.grid * sub_present[..., None].to(result.grid.dtype)
        # in the dtype of the encoded states (float32 from LayerNorm under CUDA autocast)
        full = states.new_zeros(batch_size, num_sensors, num_patches, hidden_size)
        # Put the sub-grid back: patches of every kept sensor, then the kept sensors.
        rows = full.new_zeros(batch_size, sensors.shape[1], num_patches, hidden_size)
        rows.scatter_(2, patches[:, None, :, None].expand_as(states), states)
        full.scatter_(1, sensors[:, :, None, None].expand_as(rows), rows)
        return EncoderResult(full, None, None, None)

    def _encode(
        self,
        grid: torch.Tensor,
        present: torch.Tensor | None,
        output_attentions: bool,
        output_hidden_states: bool,
    ) -> EncoderResult:
        hidden_states = (grid,) if output_hidden_states else None
        attentions = () if output_attentions else None
        sensor_attentions = () if output_attentions else None
        for layer in self.layers:
            grid, temporal_weights, spatial_weights = layer(grid, present, output_attentions)
            if output_hidden_states:
                hidden_states += (grid,)
            if output_attentions:
                attentions += (temporal_weights,)
                sensor_attentions += (spatial_weights,)
        return EncoderResult(self.norm(grid), hidden_states, attentions, sensor_attentions)


def _take_grid(grid: torch.Tensor, sensors: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """`grid[b, sensors[b]][:, :, patches[b]]` for `(B, S, P, D)` -> `(B, S', P', D)`."""
    width = grid.shape[-1]
    rows = grid.gather(1, sensors[:, :, None, None].expand(-1, -1, grid.shape[2], width))
    return rows.gather(2, patches[:, None, :, None].expand(-1, sensors.shape[1], -1, width))


class MEGLatentEncoder(nn.Module):
    """Sensors -> a few latents per patch -> temporal transformer -> read-out to every sensor.

    1. Per time patch, `num_latents` learned queries cross-attend to the present sensor tokens
       of that patch and to themselves (as in Flamingo's Perceiver resampler, so a patch whose
       sensors are all hidden is still well defined). Cost is linear in the number of sensors,
       and the attention weights are a map over the sensor array.
    2. A transformer of `num_hidden_layers` blocks runs over all `P * L` latents of the window.
    3. Every (sensor, patch) token cross-attends to the latents of its patch, which gives each
       sensor its output (and gives hidden tokens a prediction of their content). Given
       `rows`, only those tokens get an output, `(K, D)` in the order of `rows.index`:
       pretraining reads out the hidden tokens alone, the only ones its loss and
       reconstruction need, and never forms the grid of every token's state.

    Both cross-attentions add a spatial prior to their logits: a linear function, per head and
    latent, of the Fourier features of each sensor's geometry (the "spatial attention" of
    Defossez et al., 2023, for MEG). It is linear in its parameters, so from the first steps
    each latent can pool a region of the helmet and each sensor can read from the latents of
    its region, which content-only attention (a product of two small projections) learns
    hundreds of steps later. The content term keeps the maps stimulus dependent.
    """

    def __init__(self, config: MEGConfig, num_geometry_features: int):
        super().__init__()
        hidden_size, num_heads = config.hidden_size, config.num_attention_heads
        self.num_latents = config.num_latents
        self.num_heads = num_heads
        self.latents = nn.Parameter(torch.zeros(config.num_latents, hidden_size))
        shape = (num_heads, config.num_latents, num_geometry_features)
        self.pooling_prior = nn.Parameter(torch.zeros(shape))
        self.readout_prior = nn.Parameter(torch.zeros(shape))
        self.sensor_cross_attention = MEGLayer(config, hidden_size, num_heads, cross_attention=True)
        self.layers = nn.ModuleList(
            [MEGLayer(config, hidden_size, num_heads) for _ in range(config.num_hidden_layers)]
        )
        self.latent_norm = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.readout = MEGLayer(config, hidden_size, num_heads, cross_attention=True)
        self.norm = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)

    def _priors(
        self, geometry: torch.Tensor, present: torch.Tensor | None, num_patches: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Additive logits of the two cross-attentions, one row per (window, patch).

        Returns the pooling bias `(B*P, H, L, S + L)` (absent sensors at the dtype's minimum,
        the latents' own keys at zero) and the read-out bias `(B*P, H, S, L)`.
        """
        batch_size, num_sensors, _ = geometry.shape
        pooling = torch.einsum("bsf,hlf->bhls", geometry, self.pooling_prior.float())
        readout = torch.einsum("bsf,hlf->bhsl", geometry, self.readout_prior.float())
        pooling = pooling[:, None].expand(-1, num_patches, -1, -1, -1)
        pooling = pooling.reshape(
            batch_size * num_patches, self.num_heads, self.num_latents, num_sensors
        )
        if present is not None:
            sensor_present = present.transpose(1, 2).reshape(
                batch_size * num_patches, 1, 1, num_sensors
            )
            pooling = pooling.masked_fill(~sensor_present, torch.finfo(pooling.dtype).min)
        pooling = F.pad(pooling, (0, self.num_latents))
        readout = readout[:, None].expand(-1, num_patches, -1, -1, -1)
        readout = readout.reshape(
            batch_size * num_patches, self.num_heads, num_sensors, self.num_latents
        )
        return pooling, readout

    def forward(
        self,
        grid: torch.Tensor,
        present: torch.Tensor | None,
        time: torch.Tensor,
        geometry: torch.Tensor,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        rows: TokenSelection | None = None,
        read_out_tokens: bool = True,
    ) -> EncoderResult:
        """`grid` (B, S, P, D) tokens, `present` (B, S, P), `time` (P, D) patch encoding,
        `geometry` (B, S, F) Fourier features of the sensors, `rows` the tokens to read out
        (all when None); `read_out_tokens=False` skips the read-out (no token states)."""
        batch_size, num_sensors, num_patches, hidden_size = grid.shape
        num_latents = self.num_latents
        sensors = grid.transpose(1, 2).reshape(batch_size * num_patches, num_sensors, hidden_size)
        queries = (self.latents[None, :, :] + time[:, None, :]).to(grid.dtype)  # (P, L, D)
        queries = queries.expand(batch_size, -1, -1, -1).reshape(
            batch_size * num_patches, num_latents, hidden_size
        )
        pooling_bias, readout_bias = self._priors(geometry, present, num_patches)

        context = torch.cat([sensors, queries], dim=1)
        latents, cross_weights = self.sensor_cross_attention(
            queries, context, pooling_bias, output_attentions
        )

        latents = latents.view(batch_size, num_patches * num_latents, hidden_size)
        hidden_states = (
            (latents.view(batch_size, num_patches, num_latents, hidden_size),)
            if output_hidden_states
            else None
        )
        attentions = () if output_attentions else None
        for layer in self.layers:
            latents, weights = layer(latents, None, None, output_attentions)
            if output_hidden_states:
                hidden_states += (latents.view(batch_size, num_patches, num_latents, hidden_size),)
            if output_attentions:
                attentions += (weights,)
        latents = self.latent_norm(latents).view(batch_size * num_patches, num_latents, hidden_size)

        tokens = None
        if read_out_tokens:
            readout_rows = None
            if rows is not None:  # the read-out's queries are (window * P + patch, sensor)
                window, sensor, patch = rows.index
                readout_rows = (window * num_patches + patch, sensor)
            tokens, _ = self.readout(sensors, latents, readout_bias, False, rows=readout_rows)
            if rows is None:  # (with rows: the chosen tokens alone, (K, D))
                tokens = tokens.view(batch_size, num_patches, num_sensors, hidden_size)
                tokens = tokens.transpose(1, 2)
            tokens = self.norm(tokens)
        sensor_attentions = None
        if output_attentions:
            sensor_attentions = (
                cross_weights.view(batch_size, num_patches, *cross_weights.shape[1:]),
            )
        latents = latents.view(batch_size, num_patches, num_latents, hidden_size)
        return EncoderResult(tokens, hidden_states, attentions, sensor_attentions, latents)


# --------------------------------------------------------------------------------------------
# Pretrained-model base and the bare model
# --------------------------------------------------------------------------------------------


class MEGPreTrainedModel(PreTrainedModel):
    """Weight initialisation, checkpoint loading and the shared configuration of megfm models."""

    config_class = MEGConfig
    config: MEGConfig
    base_model_prefix = "megfm"
    main_input_name = "input_values"
    input_modalities = ("audio",)
    supports_gradient_checkpointing = True
    # The input "embeddings" of a signal model are its patch projection (as ViT's patch
    # embeddings): `get_input_embeddings` returns it, so `enable_input_require_grads` (which peft
    # and activation checkpointing call) can let gradients reach adapters inside checkpointed
    # blocks whose weights are frozen.
    _input_embed_layer = "patch_projection"
    _no_split_modules = ["MEGLayer", "MEGFactorizedLayer", "MEGEmbeddings"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = False

    def __init__(self, config: MEGConfig, *inputs, **kwargs):
        # `from_pretrained(..., attention_mode=...)` sets overrides on the loaded configuration
        # without checking them: check before anything is built from it.
        config.validate()
        super().__init__(config, *inputs, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            # Xavier-uniform linear layers, as MAE: at the widths that fit a CPU the default
            # N(0, 0.02) leaves attention uniform and signal faint beside the order-one time
            # encoding, and masked-signal training stalls for hundreds of steps. The blocks of
            # a fused projection are drawn as layers of their own.
            parts = module.parts if isinstance(module, MEGFusedLinear) else 1
            bound = math.sqrt(6.0 / (module.in_features + module.out_features // parts))
            init.uniform_(module.weight, -bound, bound)
        elif isinstance(module, MEGEmbeddings):
            init.trunc_normal_(module.mask_embedding, std=std)
        elif isinstance(module, MEGLatentEncoder):
            init.trunc_normal_(module.latents, std=std)
            init.trunc_normal_(module.pooling_prior, std=std)
            init.trunc_normal_(module.readout_prior, std=std)
        elif isinstance(module, MEGDecoder) and module.mask_token is not None:
            init.trunc_normal_(module.mask_token, std=std)


class MEGModel(MEGPreTrainedModel):
    """The bare megfm encoder: MEG windows in, one feature vector per (sensor, patch) out.

    Example:

    ```python
    >>> import torch
    >>> from megfm_hf import MEGConfig, MEGModel
    >>> model = MEGModel(MEGConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4))
    >>> inputs = dict(
    ...     input_values=torch.randn(2, 306, 250),      # (batch, sensors, samples), scaled
    ...     sensor_positions=torch.randn(2, 306, 6) * 0.1,  # metres + unit orientation
    ...     sensor_types=torch.zeros(2, 306, dtype=torch.long),
    ... )
    >>> model(**inputs).last_hidden_state.shape
    torch.Size([2, 306, 10, 32])
    ```
    """

    # A pretraining checkpoint holds the decoder too; the bare encoder and the classifier skip it.
    _keys_to_ignore_on_load_unexpected = [r"^decoder\."]

    def __init__(self, config: MEGConfig):
        super().__init__(config)
        self.embeddings = MEGEmbeddings(config)
        if config.attention_mode == "latent":
            self.encoder = MEGLatentEncoder(config, self.embeddings.geometry.num_features)
        elif config.attention_mode == "factorized":
            self.encoder = MEGFactorizedEncoder(
                config, config.hidden_size, config.num_attention_heads, config.num_hidden_layers
            )
        else:
            self.encoder = MEGFullEncoder(
                config, config.hidden_size, config.num_attention_heads, config.num_hidden_layers
            )
        self.post_init()

    def pool(self, last_hidden_state: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
        """Summarise `(B, S, P, D)` features over the chosen tokens `(B, S, P)` into `(B, D)`."""
        if tokens is None:
            if self.config.pooling == "max":
                return last_hidden_state.amax(dim=(1, 2))
            return last_hidden_state.mean(dim=(1, 2))
        weights = tokens[..., None]
        if self.config.pooling == "max":
            filled = last_hidden_state.masked_fill(
                ~weights, torch.finfo(last_hidden_state.dtype).min
            )
            # A window with no token to pool gives zeros, as the mean does, not -inf.
            return torch.where(weights.any(dim=(1, 2)), filled.amax(dim=(1, 2)), 0.0)
        # Summed in float32: a half-precision sum over the ~10^5 tokens of a long window
        # overflows.
        total = (last_hidden_state.float() * weights).sum(dim=(1, 2))
        return (total / weights.sum(dim=(1, 2)).clamp(min=1)).to(last_hidden_state.dtype)

    def forward(
        self,
        input_values: torch.Tensor,
        sensor_positions: torch.Tensor,
        sensor_types: torch.Tensor,
        sensor_mask: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        output_token_states: bool = True,
    ) -> MEGModelOutput | tuple:
        r"""
        Args:
            input_values (`torch.FloatTensor` of shape `(B, S, T)`):
                MEG windows, scaled to values of order one (the processor applies the scaling
                per sensor type); `T` must be a multiple of `config.patch_length`.
            sensor_positions (`torch.FloatTensor` of shape `(B, S, 6)`):
                Sensor position in metres and unit orientation, in head coordinates.
            sensor_types (`torch.LongTensor` of shape `(B, S)`):
                Index of every sensor's kind in `config.sensor_types`.
            sensor_mask (`torch.BoolTensor` of shape `(B, S)`, *optional*):
                False for padding and bad sensors, which then influence nothing. All sensors are
                valid when omitted.
            mask (`torch.BoolTensor` of shape `(B, S, P)`, *optional*):
                Tokens to hide from the encoder (True = hidden).
            output_attentions (`bool`, *optional*):
                Return attention probabilities (computed on the eager path).
            output_hidden_states (`bool`, *optional*):
                Return the states after every block.
            return_dict (`bool`, *optional*):
                Return a [`MEGModelOutput`] rather than a tuple.
            output_token_states (`bool`, *optional*, defaults to `True`):
                Return `last_hidden_state`. With `pooling="latents"`, `False` skips the
                read-out from the latents to every (sensor, patch), most of the cost of the
                pass, and `last_hidden_state` is None; other poolings need the token states.
        """
        output_attentions = (
            self.config.output_attentions if output_attentions is None else output_attentions
        )
        output_hidden_states = (
            self.config.output_hidden_states
            if output_hidden_states is None
            else output_hidden_states
        )
        return_dict = self.config.return_dict if return_dict is None else return_dict
        validate_inputs(
            self.config, input_values, sensor_positions, sensor_types, sensor_mask, mask
        )
        output = self.encode(
            input_values,
            sensor_positions,
            sensor_types,
            sensor_mask,
            mask,
            output_attentions,
            output_hidden_states,
            output_token_states=output_token_states,
        )
        return output if return_dict else output.to_tuple()

    def encode(
        self,
        input_values: torch.Tensor,
        sensor_positions: torch.Tensor,
        sensor_types: torch.Tensor,
        sensor_mask: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        read_out: TokenSelection | None = None,
        output_token_states: bool = True,
        position: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> MEGModelOutput:
        """The forward pass on inputs already checked with :func:`validate_inputs` (used by the heads).

        `read_out`, in `latent` mode, names the tokens a head needs: only they are read out from
        the latents, and `last_hidden_state` holds their features alone, `(K, D)` in the order
        of `read_out.index`; `pooler_output` is then None (unless `pooling="latents"`, which
        pools the latents). `output_token_states` as in `forward`. `position` is
        :meth:`MEGEmbeddings.position_parts` of the inputs, from a head that needs them too
        (computed here otherwise).
        """
        latent_pooling = self.config.pooling == "latents"
        hidden = None
        if sensor_mask is not None:
            hidden = ~sensor_mask[:, :, None].expand(
                -1, -1, input_values.shape[-1] // self.config.patch_length
            )
        if mask is not None:
            hidden = mask if hidden is None else hidden | mask
        present = None if hidden is None else ~hidden

        scale = None
        if self.config.normalize_input_by_sensor_type:
            scale = sensor_type_scale(
                input_values,
                sensor_types,
                present,
                self.config.patch_length,
                self.config.num_sensor_types,
            )
            input_values = input_values / scale[:, :, None].to(input_values.dtype)
        if position is None:
            num_patches = input_values.shape[-1] // self.config.patch_length
            position = self.embeddings.position_parts(sensor_positions, sensor_types, num_patches)
        latent = self.config.attention_mode == "latent"
        grid = self.embeddings(
            input_values, sensor_positions, sensor_types, hidden, scale, position, latent
        )
        # Features are pooled over valid sensors; in `full` and `factorized` modes, which do
        # not encode hidden tokens, over the present tokens only.
        pooled = present if self.config.attention_mode in ("full", "factorized") else None
        if pooled is None and sensor_mask is not None:
            pooled = sensor_mask[:, :, None].expand(-1, -1, grid.shape[2])
        if latent:
            time = position[1].to(grid.dtype)
            geometry = self.embeddings.geometry.fourier_features(sensor_positions)
            result = self.encoder(
                grid, present, time, geometry, output_attentions, output_hidden_states, read_out,
                read_out_tokens=output_token_states or not latent_pooling,
            )  # fmt: skip
        else:
            result = self.encoder(grid, present, output_attentions, output_hidden_states)
        if latent_pooling:
            pooler_output = result.latents.mean(dim=(1, 2))
        elif read_out is None or not latent:
            pooler_output = self.pool(result.grid, pooled)
        else:  # (the features of some tokens: nothing to pool)
            pooler_output = None
        return MEGModelOutput(
            last_hidden_state=result.grid,
            pooler_output=pooler_output,
            hidden_states=result.hidden_states,
            attentions=result.attentions,
            sensor_attentions=result.sensor_attentions,
            mask=mask,
            input_scale=scale,
        )


# --------------------------------------------------------------------------------------------
# Masked-signal modelling head
# --------------------------------------------------------------------------------------------


class MEGDecoder(nn.Module):
    """A light decoder from encoder tokens to the samples of every patch.

    In `latent` mode the encoder's read-out has already given every hidden token a state
    gathered from the latents of its patch, so the decoder is per-token feed-forward blocks,
    run on the tokens to reconstruct alone when `rows` names them.
    In `full` and `factorized` modes hidden tokens are replaced by a learned mask token (as in
    ViT-MAE) and factorized blocks (sensors within a patch, then patches within a sensor) let
    them gather context from their neighbours in space and time. For `full` this is both the
    cheaper decoder (no attention over every token of the window) and the one that learns:
    with full attention in the decoder too, 300 steps at width 64 had not left the "predict
    zero" solution (`benchmarks/bench_attention_modes.py`).
    """

    def __init__(self, config: MEGConfig):
        super().__init__()
        width = config.decoder_hidden_size
        self.mode = config.attention_mode
        self.embed = nn.Linear(config.hidden_size, width)
        self.position = nn.Linear(config.hidden_size, width)
        self.mask_token = None
        if self.mode == "latent":
            self.layers = nn.ModuleList(
                [MEGFeedForwardLayer(config, width) for _ in range(config.decoder_num_layers)]
            )
        else:
            self.mask_token = nn.Parameter(torch.zeros(width))
            self.mixer = MEGFactorizedEncoder(
                config, width, config.decoder_num_attention_heads, config.decoder_num_layers
            )
        self.norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.head = nn.Linear(width, config.patch_length)

    def project_position(
        self, sensor: torch.Tensor, time: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`self.position` of the position embeddings' parts: `(B, S, W)` and `(P, W)`.

        The projection is affine, so the sensor parts `(B, S, D)` and the patch parts `(P, D)`
        are projected apart (the bias once, with the sensors): a token's projected position is
        the sum of its sensor's and its patch's rows. The `(B, S, P, D)` grid of embeddings is
        never formed, and the projection costs `S + P` rows instead of `S * P`.
        """
        return self.position(sensor), F.linear(time, self.position.weight)

    def forward(
        self,
        tokens: torch.Tensor,
        position: tuple[torch.Tensor, torch.Tensor],
        hidden: torch.Tensor,
        sensor_mask: torch.Tensor | None,
        rows: TokenSelection | None = None,
    ) -> torch.Tensor:
        """Encoder tokens (B, S, P, D) -> predicted patches (B, S, P, patch_length).

        `position` holds the two parts of the position embeddings
        (:meth:`MEGEmbeddings.position_parts`). `rows`, in `latent` mode, are the tokens to
        predict, and `tokens` their states alone, `(K, D)` in the order of `rows.index` (as
        the encoder reads them out); the other tokens' predictions come out as zeros.
        """
        per_sensor, per_patch = self.project_position(*position)
        if self.mode == "latent" and rows is not None:
            index = rows.index
            states = self.embed(tokens) + per_sensor[index[:2]] + per_patch[index[2]]
            for layer in self.layers:
                states = layer(states)
            predicted = self.head(self.norm(states))
            full = predicted.new_zeros(*rows.mask.shape, predicted.shape[-1])
            full[index] = predicted
            return full
        position = per_sensor[:, :, None, :] + per_patch[None, None, :, :]
        states = self.embed(tokens) + position
        if self.mode == "latent":
            for layer in self.layers:
                states = layer(states)
        else:
            states = torch.where(
                hidden[..., None], self.mask_token.to(states.dtype) + position, states
            )
            present = None
            if sensor_mask is not None:
                present = sensor_mask[:, :, None].expand(-1, -1, states.shape[2])
            states = self.mixer(states, present).grid
        return self.head(self.norm(states))


class MEGForMaskedSignalModeling(MEGPreTrainedModel):
    """megfm with a reconstruction decoder, for self-supervised masked-signal pretraining.

    A mask hides tokens from the encoder (drawn with :func:`compute_signal_mask` from the
    configured ratios, or passed explicitly); the decoder predicts their samples and the loss
    is the mean squared error over hidden tokens of valid sensors.
    """

    def __init__(self, config: MEGConfig):
        super().__init__(config)
        self.megfm = MEGModel(config)
        self.decoder = MEGDecoder(config)
        self.post_init()

    def draw_mask(
        self,
        sensor_mask: torch.Tensor,
        num_patches: int,
        generator: torch.Generator | None = None,
    ) -> torch.BoolTensor:
        """Draw a pretraining mask `(B, S, P)` with this model's ratios (True = hidden)."""
        return compute_signal_mask(
            sensor_mask,
            num_patches,
            self.config.mask_ratio,
            self.config.mask_sensor_fraction,
            self.config.mask_time_fraction,
            generator=generator,
        )

    def forward(
        self,
        input_values: torch.Tensor,
        sensor_positions: torch.Tensor,
        sensor_types: torch.Tensor,
        sensor_mask: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        return_loss: bool = True,
        decode_visible: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> MEGMaskedSignalModelingOutput | tuple:
        r"""
        Args:
            input_values, sensor_positions, sensor_types, sensor_mask:
                As in [`MEGModel.forward`].
            mask (`torch.BoolTensor` of shape `(B, S, P)`, *optional*):
                Tokens to hide and reconstruct (True = hidden). Drawn with the configured ratios
                when omitted.
            generator (`torch.Generator`, *optional*):
                Source of randomness for the drawn mask, for reproducible masks.
            return_loss (`bool`, *optional*, defaults to `True`):
                Compute the reconstruction loss. Self-supervised, it needs no labels, and this
                argument tells the `Trainer` that evaluation can report it.
            decode_visible (`bool`, *optional*, defaults to `False`):
                Also decode the visible tokens of valid sensors, whose reconstruction is
                otherwise their input as given. Neither the loss nor the hidden tokens'
                reconstruction depend on it; without it, `latent` mode reads out and decodes
                the hidden tokens alone (at mask ratio 0.5, about a third less work), eagerly
                and compiled alike: under `torch.compile` the choice of the hidden tokens,
                whose number follows the mask, runs between two graphs. With it, nothing in
                `latent` mode depends on the data's values, so the whole model traces as one
                static graph (`torch.compile(..., fullgraph=True)`, `torch.export`).
        """
        output_attentions = (
            self.config.output_attentions if output_attentions is None else output_attentions
        )
        output_hidden_states = (
            self.config.output_hidden_states
            if output_hidden_states is None
            else output_hidden_states
        )
        return_dict = self.config.return_dict if return_dict is None else return_dict
        validate_inputs(
            self.config, input_values, sensor_positions, sensor_types, sensor_mask, mask
        )
        patch_length = self.config.patch_length
        batch_size, num_sensors, num_samples = input_values.shape
        num_patches = num_samples // patch_length
        valid = sensor_mask
        if valid is None:
            valid = torch.ones(
                batch_size, num_sensors, dtype=torch.bool, device=input_values.device
            )
        if mask is None:
            mask = self.draw_mask(valid, num_patches, generator)

        # Hidden tokens and those of invalid sensors are predicted; in `latent` mode, whose
        # read-out and decoder treat every token on its own, only they need be computed.
        hidden = mask | ~valid[:, :, None]
        rows = None
        if self.config.attention_mode == "latent" and not decode_visible:
            # Compiled, a few sizes of the selection: one CUDA graph each when they replay.
            buckets = COMPILED_SELECTION_BUCKETS if torch.compiler.is_compiling() else None
            rows = TokenSelection.from_mask(hidden, buckets)
        # Where and when every token is: the encoder's embeddings and the decoder share it.
        position = self.megfm.embeddings.position_parts(sensor_positions, sensor_types, num_patches)
        outputs = self.megfm.encode(
            input_values,
            sensor_positions,
            sensor_types,
            sensor_mask,
            mask,
            output_attentions,
            output_hidden_states,
            read_out=rows,
            position=position,
        )
        predicted = self.decoder(
            outputs.last_hidden_state, position, hidden, sensor_mask, rows
        ).float()

        scale = outputs.input_scale
        scale = torch.ones_like(valid, dtype=torch.float32) if scale is None else scale.float()
        shape = (batch_size, num_sensors, num_patches, patch_length)
        target = (input_values.float() / scale[:, :, None]).view(shape)
        if self.config.norm_patch_loss:
            mean = target.mean(dim=-1, keepdim=True)
            variance = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (variance + 1e-6) ** 0.5
        loss = None
        if return_loss:
            token_error = (predicted - target).pow(2).mean(dim=-1)
            weights = (mask & valid[:, :, None]).to(token_error.dtype)
            loss = (token_error * weights).sum() / weights.sum().clamp(min=1.0)

        reconstruction = self._to_input_units(predicted, scale)
        if not decode_visible:
            given = target if self.config.norm_patch_loss else input_values.float().view(shape)
            reconstruction = torch.where(hidden[..., None], reconstruction, given)
        output = MEGMaskedSignalModelingOutput(
            loss=loss,
            reconstruction=reconstruction.view(batch_size, num_sensors, num_samples),
            mask=mask,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            sensor_attentions=outputs.sensor_attentions,
        )
        return output if return_dict else output.to_tuple()

    def _to_input_units(self, predicted: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Undo the per-type input normalisation (not the per-patch one of `norm_patch_loss`)."""
        if self.config.norm_patch_loss:
            return predicted
        return predicted * scale[:, :, None, None]


# --------------------------------------------------------------------------------------------
# Sequence classification head
# --------------------------------------------------------------------------------------------


class MEGPooledNorm(nn.BatchNorm1d):
    """Standardises pooled features: batch normalisation without learned scale and shift.

    In training a batch is standardised with its own statistics (which update the running
    ones); a batch of one window, which has none, and inference use the running statistics.
    Computed in the dtype of the running statistics (float32 unless the model was cast).
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__(hidden_size, eps=eps, affine=False)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        batch_statistics = self.training and pooled.shape[0] > 1
        if batch_statistics:
            self.num_batches_tracked.add_(1)
        normalized = F.batch_norm(
            pooled.to(self.running_mean.dtype),
            self.running_mean,
            self.running_var,
            training=batch_statistics,
            momentum=self.momentum,
            eps=self.eps,
        )
        return normalized.to(pooled.dtype)


class MEGForSequenceClassification(MEGPreTrainedModel):
    """megfm with a linear classifier (or regressor) on the pooled features of a window.

    Loads from a pretraining checkpoint: the encoder weights are shared under `megfm.`, and only
    the classifier and the statistics of its feature standardisation are reported missing. The
    loss follows transformers' classifiers:
    `config.problem_type` is `"regression"`, `"single_label_classification"` or
    `"multi_label_classification"`, inferred from `num_labels` and the label dtype when unset.
    With `config.classifier_norm` the pooled features are standardised before the classifier
    ([`MEGPooledNorm`]); a classifier saved without its statistics loads with an identity
    standardisation (zero mean, unit variance), so it predicts as it did.
    """

    _keys_to_ignore_on_load_unexpected = [r"^decoder\."]

    def __init__(self, config: MEGConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.megfm = MEGModel(config)
        self.norm = MEGPooledNorm(config.hidden_size) if config.classifier_norm else nn.Identity()
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_values: torch.Tensor,
        sensor_positions: torch.Tensor,
        sensor_types: torch.Tensor,
        sensor_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> MEGSequenceClassifierOutput | tuple:
        r"""
        Args:
            input_values, sensor_positions, sensor_types, sensor_mask:
                As in [`MEGModel.forward`].
            labels (`torch.LongTensor` of shape `(B,)` or `torch.FloatTensor` of shape
                `(B, num_labels)`, *optional*):
                Class indices in `[0, num_labels)`, targets for regression, or multi-hot
                targets for multi-label problems.
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.megfm(
            input_values,
            sensor_positions,
            sensor_types,
            sensor_mask=sensor_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            output_token_states=False,  # not returned; pooling="latents" then skips the read-out
        )
        pooled = outputs.pooler_output
        logits = self.classifier(self.dropout(self.norm(pooled)))

        loss = None
        if labels is not None:
            loss = self._loss(logits, labels.to(logits.device))
        output = MEGSequenceClassifierOutput(
            loss=loss,
            logits=logits,
            pooler_output=pooled,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            sensor_attentions=outputs.sensor_attentions,
        )
        return output if return_dict else output.to_tuple()

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.config.problem_type is None:
            if self.num_labels == 1:
                self.config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        if self.config.problem_type == "regression":
            if self.num_labels == 1:
                return F.mse_loss(logits.squeeze(-1).float(), labels.squeeze().float().view(-1))
            return F.mse_loss(logits.float(), labels.float())
        if self.config.problem_type == "single_label_classification":
            labels = labels.view(-1)
            if not torch.compiler.is_compiling():
                # -100 marks samples to leave out of the loss, as everywhere in transformers.
                bad = labels[(labels != -100) & ((labels < 0) | (labels >= self.num_labels))]
                if bad.numel():
                    raise ValueError(
                        f"labels hold class {int(bad[0])} but the model has num_labels="
                        f"{self.num_labels}; expected class indices in [0, "
                        f"{self.num_labels}) or -100 for samples to leave out of the loss."
                    )
            return F.cross_entropy(logits.view(-1, self.num_labels).float(), labels)
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


MEGModel.register_for_auto_class("AutoModel")
MEGForMaskedSignalModeling.register_for_auto_class("AutoModelForPreTraining")
MEGForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")

__all__ = [
    "MEGForMaskedSignalModeling",
    "MEGForSequenceClassification",
    "MEGMaskedSignalModelingOutput",
    "MEGModel",
    "MEGModelOutput",
    "MEGPreTrainedModel",
    "MEGSequenceClassifierOutput",
    "compute_signal_mask",
    "validate_inputs",
]
