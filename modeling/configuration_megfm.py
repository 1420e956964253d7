"""Configuration of the megfm MEG foundation model.

This file travels to the Hugging Face Hub next to the weights as remote code, so it imports
only the Python standard library, torch and transformers.
"""

from __future__ import annotations

from transformers import PretrainedConfig
from transformers.activations import ACT2FN

#: Sensor kinds the model knows, in the order of their integer codes in ``sensor_types``.
#: ``magnetometer``: SQUID magnetometers (MEGIN/Neuromag), field in tesla.
#: ``planar_gradiometer``: planar gradiometers (MEGIN/Neuromag), gradient in tesla per metre.
#: ``axial_gradiometer``: axial gradiometers (CTF, KIT/Yokogawa/Ricoh, BTi/4D), tesla.
#: ``opm``: optically pumped magnetometers, tesla.
SENSOR_TYPES: tuple[str, ...] = ("magnetometer", "planar_gradiometer", "axial_gradiometer", "opm")

ATTENTION_MODES: tuple[str, ...] = ("latent", "factorized", "full")
POOLING_MODES: tuple[str, ...] = ("mean", "max", "latents")

#: Where the transformers Auto classes find each class when a saved model is loaded with
#: ``trust_remote_code=True`` (the files travel with the weights).
AUTO_MAP: dict[str, str] = {
    "AutoConfig": "configuration_megfm.MEGConfig",
    "AutoModel": "modeling_megfm.MEGModel",
    "AutoModelForPreTraining": "modeling_megfm.MEGForMaskedSignalModeling",
    "AutoModelForSequenceClassification": "modeling_megfm.MEGForSequenceClassification",
}


def _check_option(name: str, value: object, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"MEGConfig: {name}={value!r} is not allowed; expected one of {allowed}.")


def _check_range(name: str, value: float, low: float, high: float, *, closed_high: bool) -> None:
    ok = low <= value <= high if closed_high else low <= value < high
    if not ok:
        bracket = "]" if closed_high else ")"
        raise ValueError(f"MEGConfig: {name}={value!r} is outside [{low}, {high}{bracket}.")


class MEGConfig(PretrainedConfig):
    r"""Configuration for [`MEGModel`], [`MEGForMaskedSignalModeling`] and
    [`MEGForSequenceClassification`].

    The model cuts every sensor's signal into patches of ``patch_length`` samples and forms one
    token per (sensor, patch). Each token is embedded from its samples, the geometry of its sensor
    (Fourier features of position and orientation), the sensor type and the patch index, so one
    model serves any sensor array and any number of sensors.

    Args:
        sampling_rate (`float`, *optional*, defaults to 250.0):
            Sampling rate the model expects, in Hz. Inputs at another rate must be resampled first
            (the processor does this); the model cannot check the rate of a bare tensor.
        patch_length (`int`, *optional*, defaults to 25):
            Samples per patch (25 samples at 250 Hz is 0.1 s). Inputs must be a whole number of
            patches long.
        max_patches (`int`, *optional*, defaults to 512):
            Largest number of patches per window the temporal position encoding is tuned for
            (512 patches of 0.1 s is 51.2 s). Longer inputs still run; the sinusoidal encoding
            extrapolates.
        hidden_size (`int`, *optional*, defaults to 256):
            Width of the token embeddings and of the encoder.
        num_hidden_layers (`int`, *optional*, defaults to 8):
            Number of encoder blocks. In ``latent`` mode these are the temporal blocks over the
            latent tokens; in ``factorized`` mode each block holds a spatial and a temporal
            attention.
        num_attention_heads (`int`, *optional*, defaults to 8):
            Attention heads per attention layer; ``hidden_size`` must be divisible by it.
        mlp_ratio (`float`, *optional*, defaults to 4.0):
            Width of the feed-forward layers as a multiple of ``hidden_size``.
        hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Activation of the feed-forward layers (any key of `transformers.activations.ACT2FN`).
        hidden_dropout_prob (`float`, *optional*, defaults to 0.0):
            Dropout probability after attention and feed-forward layers.
        attention_dropout (`float`, *optional*, defaults to 0.0):
            Dropout probability on attention weights.
        layer_norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon of every layer normalisation.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the truncated normal initialiser of linear layers and embeddings.
        attention_mode (`str`, *optional*, defaults to `"latent"`):
            How tokens exchange information.
            ``"latent"``: per time patch, ``num_latents`` learned queries cross-attend to the
            sensors of that patch (as in Perceiver and LUNA), a temporal transformer runs over the
            latents, and a read-out cross-attention gives every sensor token its output. Cost grows
            linearly with the number of sensors, and the sensor cross-attention weights are a map
            over the sensor array.
            ``"factorized"``: each block attends over sensors within a patch, then over patches
            within a sensor.
            ``"full"``: every token attends to every other token (quadratic in sensors x patches).
        num_latents (`int`, *optional*, defaults to 8):
            Learned latent queries per time patch in ``latent`` mode.
        num_fourier_features (`int`, *optional*, defaults to 16):
            Frequencies per coordinate of the Fourier embedding of sensor geometry.
        fourier_min_wavelength (`float`, *optional*, defaults to 0.01):
            Shortest wavelength of the Fourier features of sensor positions, in metres.
        fourier_max_wavelength (`float`, *optional*, defaults to 1.0):
            Longest wavelength of the Fourier features of sensor positions, in metres.
        sensor_types (`list[str]`, *optional*, defaults to `SENSOR_TYPES`):
            Names of the sensor kinds; the integer code of a sensor in the ``sensor_types`` input is
            its index in this list.
        mask_ratio (`float`, *optional*, defaults to 0.5):
            Fraction of the valid tokens of a window hidden from the encoder during masked-signal
            pretraining.
        mask_sensor_fraction (`float`, *optional*, defaults to 0.3):
            Share of the masked tokens drawn as whole sensors (all patches of a sensor).
        mask_time_fraction (`float`, *optional*, defaults to 0.3):
            Share of the masked tokens drawn as one contiguous block of time patches across all
            sensors. The rest of the masked tokens are single random (sensor, patch) tokens.
        decoder_hidden_size (`int`, *optional*, defaults to 128):
            Width of the light reconstruction decoder.
        decoder_num_layers (`int`, *optional*, defaults to 2):
            Blocks in the decoder. In ``latent`` mode they are per-token feed-forward blocks (the
            read-out already gathered context); in the other modes they are attention blocks of
            the same kind as the encoder's.
        decoder_num_attention_heads (`int`, *optional*, defaults to 4):
            Attention heads per decoder attention layer.
        norm_patch_loss (`bool`, *optional*, defaults to `False`):
            Normalise every target patch to zero mean and unit variance before the loss (as
            ViT-MAE's ``norm_pix_loss``). Then ``reconstruction`` is in these normalised units
            rather than in input units.
        normalize_input_by_sensor_type (`bool`, *optional*, defaults to `True`):
            Divide every window's signal, per sensor type, by the root mean square of its visible
            samples of that type (and embed the logarithm of that level). Sensor types measure
            different quantities (T, T/m) at different signal-to-noise ratios; without this the
            numerically larger type drowns the other in the tokens and in the loss. The masked
            reconstruction loss is then a normalised MSE per sensor type.
        pooling (`str`, *optional*, defaults to `"mean"`):
            How ``pooler_output`` summarises a window: ``"mean"`` or ``"max"`` over its valid
            tokens, or, in ``latent`` mode, ``"latents"``: the mean of the latents after the
            last block, over every patch. ``"latents"`` needs no read-out from the latents to
            the (sensor, patch) tokens, most of the cost of a forward pass, so the classifier
            and ``extract_features`` skip it (``MEGModel.forward(output_token_states=False)``).
        classifier_dropout (`float`, *optional*, defaults to 0.1):
            Dropout before the classification layer.
        classifier_norm (`bool`, *optional*, defaults to `True`):
            Standardise the pooled features before the classification layer, with batch
            statistics in training and running statistics at inference (batch normalisation
            without learned scale and shift, as MAE's linear probes). Pooled features of a
            pretrained encoder share a large common part, and what tells windows apart lies in
            small deviations from it, which a linear layer on the raw features learns slowly.

    Example:

    ```python
    >>> from megfm_hf import MEGConfig, MEGModel
    >>> config = MEGConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
    >>> model = MEGModel(config)
    ```
    """

    model_type = "megfm"

    def __init__(
        self,
        sampling_rate: float = 250.0,
        patch_length: int = 25,
        max_patches: int = 512,
        hidden_size: int = 256,
        num_hidden_layers: int = 8,
        num_attention_heads: int = 8,
        mlp_ratio: float = 4.0,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.0,
        attention_dropout: float = 0.0,
        layer_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        attention_mode: str = "latent",
        num_latents: int = 8,
        num_fourier_features: int = 16,
        fourier_min_wavelength: float = 0.01,
        fourier_max_wavelength: float = 1.0,
        sensor_types: list[str] | tuple[str, ...] | None = None,
        mask_ratio: float = 0.5,
        mask_sensor_fraction: float = 0.3,
        mask_time_fraction: float = 0.3,
        decoder_hidden_size: int = 128,
        decoder_num_layers: int = 2,
        decoder_num_attention_heads: int = 4,
        norm_patch_loss: bool = False,
        normalize_input_by_sensor_type: bool = True,
        pooling: str = "mean",
        classifier_dropout: float = 0.1,
        classifier_norm: bool = True,
        **kwargs,
    ):
        self.sampling_rate = float(sampling_rate)
        self.patch_length = int(patch_length)
        self.max_patches = int(max_patches)
        self.hidden_size = int(hidden_size)
        self.num_hidden_layers = int(num_hidden_layers)
        self.num_attention_heads = int(num_attention_heads)
        self.mlp_ratio = float(mlp_ratio)
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = float(hidden_dropout_prob)
        self.attention_dropout = float(attention_dropout)
        self.layer_norm_eps = float(layer_norm_eps)
        self.initializer_range = float(initializer_range)
        self.attention_mode = attention_mode
        self.num_latents = int(num_latents)
        self.num_fourier_features = int(num_fourier_features)
        self.fourier_min_wavelength = float(fourier_min_wavelength)
        self.fourier_max_wavelength = float(fourier_max_wavelength)
        self.sensor_types = list(SENSOR_TYPES if sensor_types is None else sensor_types)
        self.mask_ratio = float(mask_ratio)
        self.mask_sensor_fraction = float(mask_sensor_fraction)
        self.mask_time_fraction = float(mask_time_fraction)
        self.decoder_hidden_size = int(decoder_hidden_size)
        self.decoder_num_layers = int(decoder_num_layers)
        self.decoder_num_attention_heads = int(decoder_num_attention_heads)
        self.norm_patch_loss = bool(norm_patch_loss)
        self.normalize_input_by_sensor_type = bool(normalize_input_by_sensor_type)
        self.pooling = pooling
        self.classifier_dropout = float(classifier_dropout)
        self.classifier_norm = bool(classifier_norm)
        # Every head, not only the class that happens to be saved, so any Auto class can load
        # a saved folder as remote code.
        kwargs["auto_map"] = {**AUTO_MAP, **(kwargs.get("auto_map") or {})}
        super().__init__(**kwargs)
        self.validate()

    @property
    def num_sensor_types(self) -> int:
        """Number of sensor kinds, i.e. the size of the sensor-type vocabulary."""
        return len(self.sensor_types)

    @property
    def intermediate_size(self) -> int:
        """Width of the encoder feed-forward layers (``hidden_size * mlp_ratio``)."""
        return int(round(self.hidden_size * self.mlp_ratio))

    @property
    def patch_duration(self) -> float:
        """Duration of one patch in seconds."""
        return self.patch_length / self.sampling_rate

    def validate(self) -> None:
        """Raise a ``ValueError`` naming the first setting that is out of range.

        Runs when the configuration is built, when a model is built from it (so the overrides
        of ``from_pretrained(..., attention_mode=...)``, which transformers sets on a loaded
        configuration without checking them, are checked too) and when it is saved.
        """
        super().validate()
        _check_option("attention_mode", self.attention_mode, ATTENTION_MODES)
        _check_option("pooling", self.pooling, POOLING_MODES)
        if self.pooling == "latents" and self.attention_mode != "latent":
            raise ValueError(
                f"MEGConfig: pooling='latents' needs attention_mode='latent', got "
                f"attention_mode={self.attention_mode!r}; use pooling='mean' or 'max'."
            )
        if self.hidden_act not in ACT2FN:
            raise ValueError(
                f"MEGConfig: hidden_act={self.hidden_act!r} is not an activation transformers "
                "knows (transformers.activations.ACT2FN), such as 'gelu' or 'silu'."
            )
        for name in (
            "patch_length",
            "max_patches",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_latents",
            "num_fourier_features",
            "decoder_hidden_size",
            "decoder_num_attention_heads",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"MEGConfig: {name}={getattr(self, name)!r} must be >= 1.")
        if self.decoder_num_layers < 0:
            raise ValueError(
                f"MEGConfig: decoder_num_layers={self.decoder_num_layers} must be >= 0."
            )
        for name in ("sampling_rate", "mlp_ratio", "layer_norm_eps", "initializer_range"):
            if not getattr(self, name) > 0:
                raise ValueError(f"MEGConfig: {name}={getattr(self, name)!r} must be positive.")
        for name in ("hidden_dropout_prob", "attention_dropout", "classifier_dropout"):
            _check_range(name, getattr(self, name), 0.0, 1.0, closed_high=False)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"MEGConfig: hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}."
            )
        if self.decoder_hidden_size % self.decoder_num_attention_heads:
            raise ValueError(
                f"MEGConfig: decoder_hidden_size={self.decoder_hidden_size} is not divisible by "
                f"decoder_num_attention_heads={self.decoder_num_attention_heads}."
            )
        if self.norm_patch_loss and self.patch_length < 2:
            raise ValueError(
                "MEGConfig: norm_patch_loss=True normalises every patch by its variance, which "
                f"needs patch_length >= 2; got patch_length={self.patch_length}."
            )
        _check_range("mask_ratio", self.mask_ratio, 0.0, 1.0, closed_high=False)
        _check_range("mask_sensor_fraction", self.mask_sensor_fraction, 0.0, 1.0, closed_high=True)
        _check_range("mask_time_fraction", self.mask_time_fraction, 0.0, 1.0, closed_high=True)
        if self.mask_sensor_fraction + self.mask_time_fraction > 1.0:
            raise ValueError(
                "MEGConfig: mask_sensor_fraction + mask_time_fraction = "
                f"{self.mask_sensor_fraction + self.mask_time_fraction} exceeds 1."
            )
        if not 0 < self.fourier_min_wavelength <= self.fourier_max_wavelength:
            raise ValueError(
                "MEGConfig: expected 0 < fourier_min_wavelength <= fourier_max_wavelength, got "
                f"{self.fourier_min_wavelength} and {self.fourier_max_wavelength} m."
            )
        if not self.sensor_types or len(set(self.sensor_types)) != len(self.sensor_types):
            raise ValueError(
                f"MEGConfig: sensor_types={self.sensor_types!r} must be a non-empty list of "
                "distinct names."
            )


MEGConfig.register_for_auto_class()

__all__ = ["AUTO_MAP", "MEGConfig", "SENSOR_TYPES"]
