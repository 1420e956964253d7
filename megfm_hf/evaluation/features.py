"""Batched model inference for the evaluation: window features, attention maps, reconstructions.

One pass without a mask gives the pooled features (``pooler_output``) and the attention over
sensors; ``n_folds`` masked passes, each hiding one group of whole sensors (see
:mod:`.masking`), give a reconstruction of every valid sensor from the others.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..modeling.modeling_megfm import MEGForMaskedSignalModeling
from ..training.collator import MEGDataCollator
from .loading import EvaluationData

logger = logging.getLogger(__name__)


@dataclass
class WindowArrays:
    """Windows of one sensor array, stacked.

    Attributes
    ----------
    indices : np.ndarray of int, shape (N,)
        Row indices in the dataset.
    signals : np.ndarray, shape (N, S, T)
        ``input_values`` (scaled units of the processor; bad sensors set to 0).
    valid : np.ndarray of bool, shape (N, S)
        ``sensor_mask`` (False for bad sensors).
    positions : np.ndarray, shape (S, 6)
        Sensor positions (m) and orientations of the array.
    types : np.ndarray of int, shape (S,)
        Sensor type codes.
    """

    indices: np.ndarray
    signals: np.ndarray
    valid: np.ndarray
    positions: np.ndarray
    types: np.ndarray


def load_windows(data: EvaluationData, indices: Sequence[int]) -> WindowArrays:
    """Stack rows that share one sensor array into arrays.

    Raises
    ------
    ValueError
        When the rows have different sensor counts (group them by layout first).
    """
    indices = np.asarray(indices, dtype=np.int64)
    rows = data.dataset.select(indices.tolist()) if indices.size else None
    if rows is None:
        raise ValueError("load_windows: no rows selected")
    signals = np.stack([np.asarray(v, dtype=np.float32) for v in rows["input_values"]])
    if "sensor_mask" in rows.column_names:
        valid = np.stack([np.asarray(v, dtype=bool) for v in rows["sensor_mask"]])
    else:
        valid = np.ones(signals.shape[:2], dtype=bool)
    signals[~valid] = 0.0
    first = rows[0]
    return WindowArrays(
        indices=indices,
        signals=signals,
        valid=valid,
        positions=np.asarray(first["sensor_positions"], dtype=np.float32),
        types=np.asarray(first["sensor_types"], dtype=np.int64),
    )


@dataclass
class InferenceResult:
    """What the model gives for a set of windows of one sensor array.

    Attributes
    ----------
    features : np.ndarray, shape (N, D)
        ``pooler_output`` of the unmasked windows.
    attention : np.ndarray, shape (N, P, S) or None
        Attention each sensor receives in each time patch (see :func:`sensor_attention`),
        summing to 1 over valid sensors; None in ``full`` attention mode.
    reconstruction : np.ndarray, shape (N, S, T) or None
        Every valid sensor as reconstructed in the pass that hid it; None when not asked.
    """

    features: np.ndarray
    attention: np.ndarray | None
    reconstruction: np.ndarray | None


def sensor_attention(
    sensor_attentions: tuple[torch.Tensor, ...] | None,
    mode: str,
    sensor_mask: torch.Tensor,
) -> torch.Tensor | None:
    """Reduce the model's attention weights to the attention each sensor receives per patch.

    Parameters
    ----------
    sensor_attentions : tuple of torch.Tensor or None
        ``sensor_attentions`` of the model output.
    mode : str
        ``config.attention_mode``.
    sensor_mask : torch.BoolTensor, shape (B, S)

    Returns
    -------
    attention : torch.Tensor, shape (B, P, S) or None
        ``latent``: the sensor cross-attention weights over the ``S`` sensors (the latents' own
        keys dropped), averaged over heads and latent queries. ``factorized``: the spatial
        attention averaged over blocks, heads and valid query sensors. Normalised to sum 1
        over valid sensors. None in ``full`` mode (no attention over the sensor array).
    """
    if not sensor_attentions:
        return None
    num_sensors = sensor_mask.shape[1]
    if mode == "latent":
        weights = sensor_attentions[0][..., :num_sensors].float()  # (B, P, H, L, S)
        received = weights.mean(dim=(2, 3))
    elif mode == "factorized":
        stacked = torch.stack([w.float() for w in sensor_attentions])  # (layers, B, P, H, S, S)
        per_query = stacked.mean(dim=(0, 3))  # (B, P, S_query, S_key)
        queries = sensor_mask[:, None, :, None].to(per_query.dtype)
        received = (per_query * queries).sum(dim=2) / queries.sum(dim=2).clamp(min=1.0)
    else:
        return None
    received = received * sensor_mask[:, None, :].to(received.dtype)
    return received / received.sum(dim=-1, keepdim=True).clamp(min=1e-12)


def _batches(count: int, batch_size: int) -> list[slice]:
    return [slice(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]


@torch.no_grad()
def run_inference(
    model: MEGForMaskedSignalModeling,
    windows: WindowArrays,
    *,
    folds: np.ndarray | None = None,
    batch_size: int = 16,
    progress: bool = True,
    description: str = "inference",
) -> InferenceResult:
    """Run the model over windows of one sensor array.

    Parameters
    ----------
    model : MEGForMaskedSignalModeling
        In evaluation mode.
    windows : WindowArrays
    folds : np.ndarray of int, shape (S,), optional
        Sensor groups (:func:`~.masking.sensor_folds`); when given, each group is hidden in
        turn and the reconstruction of its valid sensors kept.
    batch_size : int
        Windows per forward pass.
    progress : bool
        Show a tqdm bar.
    description : str
        Label of the bar.

    Returns
    -------
    result : InferenceResult
    """
    device = next(model.parameters()).device
    collate = MEGDataCollator(model.config)
    count, num_sensors, num_samples = windows.signals.shape
    num_patches = num_samples // model.config.patch_length
    n_folds = 0 if folds is None else int(folds.max()) + 1
    features = np.zeros((count, model.config.hidden_size), dtype=np.float32)
    attention = None
    reconstruction = None if folds is None else np.zeros_like(windows.signals)
    slices = _batches(count, batch_size)
    bar = tqdm(total=len(slices) * (1 + n_folds), desc=description, disable=not progress)
    for part in slices:
        rows = [
            {
                "input_values": windows.signals[i],
                "sensor_positions": windows.positions,
                "sensor_types": windows.types,
                "sensor_mask": windows.valid[i],
            }
            for i in range(part.start, part.stop)
        ]
        batch = {key: value.to(device) for key, value in collate(rows).items()}
        encoded = model.megfm(**batch, output_attentions=True, return_dict=True)
        features[part] = encoded.pooler_output.float().cpu().numpy()
        received = sensor_attention(
            encoded.sensor_attentions, model.config.attention_mode, batch["sensor_mask"]
        )
        if received is not None:
            if attention is None:
                attention = np.zeros((count, num_patches, num_sensors), dtype=np.float32)
            attention[part] = received.cpu().numpy()
        bar.update()
        for fold in range(n_folds):
            hidden = torch.as_tensor(folds == fold, device=device)
            mask = hidden[None, :, None].expand(len(rows), -1, num_patches)
            mask = mask & batch["sensor_mask"][:, :, None]
            output = model(**batch, mask=mask.contiguous(), return_loss=False, return_dict=True)
            predicted = output.reconstruction.float().cpu().numpy()
            keep = (folds == fold)[None, :] & windows.valid[part]
            reconstruction[part] = np.where(keep[:, :, None], predicted, reconstruction[part])
            bar.update()
    bar.close()
    return InferenceResult(features=features, attention=attention, reconstruction=reconstruction)


__all__ = [
    "InferenceResult",
    "WindowArrays",
    "load_windows",
    "run_inference",
    "sensor_attention",
]
