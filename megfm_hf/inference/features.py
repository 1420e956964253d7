"""Features of whole recordings: read, preprocess, window and encode, a batch at a time.

``model(**processor(path))`` encodes every window of a recording in one pass, which for an
hour of 306-sensor MEG needs tens of gigabytes of activations. :func:`extract_features` holds one
batch of windows at a time instead, shows progress, and returns one feature vector per window
with where each window lies in the recording.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.processor import MEGProcessor, ProcessedRecording, Source
from ..modeling.modeling_megfm import MEGModel, MEGPreTrainedModel


@dataclass
class RecordingFeatures:
    """Features of the windows of one recording.

    Attributes
    ----------
    pooled : np.ndarray, shape (n_windows, hidden_size), float32
        The model's ``pooler_output`` of every window.
    onsets_s : np.ndarray, shape (n_windows,)
        Start of every window, s (from the start of a continuous recording, from the event for
        epochs and evoked responses).
    events : list of str
        Event name of every window (``""`` for fixed-length windows).
    tokens : np.ndarray, shape (n_windows, n_sensors, n_patches, hidden_size), optional
        ``last_hidden_state`` of every window, with ``return_tokens=True``.
    """

    pooled: np.ndarray
    onsets_s: np.ndarray
    events: list[str]
    tokens: np.ndarray | None = None


def _encoder(model: MEGPreTrainedModel) -> MEGModel:
    if isinstance(model, MEGModel):
        return model
    encoder = getattr(model, getattr(model, "base_model_prefix", "megfm"), None)
    if not isinstance(encoder, MEGModel):
        raise TypeError(
            f"extract_features needs a megfm model (MEGModel or a model with a `megfm` encoder), "
            f"got {type(model).__name__}"
        )
    return encoder


def _check_processed(processed: ProcessedRecording, config: Any) -> None:
    """Raise if a processed recording's windows do not fit a ``MEGConfig``."""
    sfreq = processed.preprocessed.sfreq
    if not np.isclose(sfreq, config.sampling_rate) or processed.n_samples % config.patch_length:
        raise ValueError(
            f"the processed recording (sfreq={sfreq:g} Hz, windows of {processed.n_samples} "
            f"samples) does not fit the model (sampling_rate={config.sampling_rate:g} Hz, "
            f"patch_length={config.patch_length}): process it with the model's processor"
        )


@torch.inference_mode()
def extract_features(
    model: MEGPreTrainedModel,
    processor: MEGProcessor,
    source: Source | ProcessedRecording,
    *,
    batch_size: int = 2,
    event_id: Mapping[str, int] | Sequence[str] | None = None,
    mode: str | None = None,
    return_tokens: bool = False,
    autocast_dtype: torch.dtype | None = None,
    torch_compile: bool = False,
    progress: bool = True,
) -> RecordingFeatures:
    """Encode every window of a recording with a megfm model.

    Parameters
    ----------
    model : MEGModel | MEGForMaskedSignalModeling | MEGForSequenceClassification
        Its encoder is used, in evaluation mode, on the device its weights are on.
    processor : MEGProcessor
        The model's processor (``MEGProcessor.from_pretrained(model_dir)``).
    source : path | Raw | Epochs | Evoked | list of Evoked | ProcessedRecording
        A recording, or one already processed with ``processor.process``.
    batch_size : int
        Windows per forward pass. On a CPU a batch of 2 is as fast per window as larger ones
        where the process keeps the memory it frees (:func:`megfm_hf.memory.keep_freed_memory`,
        which ``megfm features`` calls), and faster than them where it does not; GPUs want
        larger ones.
    event_id, mode
        Window choice, as in :meth:`MEGProcessor.process`. Every window is kept (no
        peak-to-peak rejection), so features line up with the recording.
    return_tokens : bool
        Also return the features of every (sensor, patch), which is
        ``n_sensors * n_patches`` times larger.
    autocast_dtype : torch.dtype, optional
        Run under ``torch.autocast`` in this dtype: ``torch.bfloat16`` on GPUs and on CPUs
        with native bfloat16 (AVX512-BF16, AMX), where it is about 1.7x faster.
    torch_compile : bool
        Compile the encoder with ``torch.compile`` first (tens of seconds, once per process,
        batch size and precision), then run faster (about 1.2x in float32 and 1.3x in bfloat16 on a
        2-core CPU); worth it for long recordings. The last, partial batch is padded to
        ``batch_size`` so that one compiled graph serves every batch.
    progress : bool
        Show a progress bar over batches.

    Returns
    -------
    features : RecordingFeatures

    Raises
    ------
    ValueError
        When the processor's or the processed recording's windows do not fit the model
        (sampling rate, patch length), or ``event_id`` or ``mode`` come with a recording
        processed already.
    FloatingPointError
        When a window's features are not finite (float16 overflows where float32 and
        bfloat16 do not), naming the window.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    encoder = _encoder(model)
    processor.check_model_config(encoder.config)
    if isinstance(source, ProcessedRecording):
        if event_id is not None or mode is not None:
            raise ValueError(
                "event_id and mode choose the windows of a recording being processed; this one "
                "was processed already (pass the recording itself to choose its windows here)"
            )
        _check_processed(source, encoder.config)
        processed = source
    else:
        processed = processor.process(source, event_id=event_id, mode=mode, reject=False)
    was_training = encoder.training
    encoder.eval()
    # Compiled graphs are cached by torch (per module, shape and dtype): later calls reuse them.
    forward = torch.compile(encoder, dynamic=False) if torch_compile else encoder
    device = next(encoder.parameters()).device
    sensors = processed.sensors
    positions = torch.as_tensor(sensors.positions, dtype=torch.float32, device=device)
    types = torch.as_tensor(sensors.types, dtype=torch.long, device=device)
    valid = torch.as_tensor(processed.sensor_mask, dtype=torch.bool, device=device)

    pooled = np.zeros((len(processed), encoder.config.hidden_size), dtype=np.float32)
    tokens: np.ndarray | None = None
    context = torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    total = -(-len(processed) // batch_size)
    try:
        for indices, windows in tqdm(
            processed.iter_batches(batch_size),
            total=total,
            desc="features",
            unit="batch",
            disable=not progress,
        ):
            count = len(indices)
            if torch_compile and count < batch_size:  # one static shape for the compiled graph
                windows = np.concatenate([windows, np.repeat(windows[-1:], batch_size - count, 0)])
            size = len(windows)
            with context:
                output = forward(
                    input_values=torch.from_numpy(windows).to(device),
                    sensor_positions=positions.expand(size, -1, -1),
                    sensor_types=types.expand(size, -1),
                    sensor_mask=valid.expand(size, -1),
                    return_dict=True,
                    output_token_states=return_tokens,
                )
            pooled[indices] = output.pooler_output[:count].float().cpu().numpy()
            finite = np.isfinite(pooled[indices]).all(axis=1)
            if not finite.all():
                bad = indices[np.flatnonzero(~finite)[0]]
                raise FloatingPointError(
                    f"features of the window at {processed.plan.onsets_s[bad]:.3f} s are not "
                    f"finite under autocast_dtype={autocast_dtype}; float32 or bfloat16 keep "
                    "their range"
                )
            if return_tokens:
                states = output.last_hidden_state[:count].float().cpu().numpy()
                if tokens is None:
                    tokens = np.zeros((len(processed), *states.shape[1:]), dtype=np.float32)
                tokens[indices] = states
    finally:
        encoder.train(was_training)
    return RecordingFeatures(
        pooled=pooled,
        onsets_s=np.asarray(processed.plan.onsets_s, dtype=np.float64),
        events=list(processed.plan.events),
        tokens=tokens,
    )


__all__ = ["RecordingFeatures", "extract_features"]
