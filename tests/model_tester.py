"""Tiny model configurations and realistic MEG-like inputs for the model tests.

The inputs are made the way MEG arises: a helmet of sensors (positions in metres on a
hemisphere, radial orientations), a few current sources whose fields are smooth spatial
patterns over the helmet, source time courses (alpha oscillation, 1/f background) and sensor
noise. Values are already scaled to order one, as the processor delivers them.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from megfm_hf import MEGConfig


def tiny_config(**overrides) -> MEGConfig:
    """A configuration small enough for unit tests to run in milliseconds."""
    values = dict(
        sampling_rate=100.0,
        patch_length=10,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_latents=4,
        num_fourier_features=4,
        decoder_hidden_size=16,
        decoder_num_layers=1,
        decoder_num_attention_heads=2,
        mask_ratio=0.5,
    )
    values.update(overrides)
    return MEGConfig(**values)


def helmet(num_sensors: int, rng: np.random.Generator) -> np.ndarray:
    """Sensor positions (m) and radial unit orientations on a hemisphere of radius 0.11 m."""
    golden = math.pi * (3.0 - math.sqrt(5.0))
    index = np.arange(num_sensors)
    z = 1.0 - index / max(num_sensors - 1, 1) * 0.9  # upper hemisphere, down to z = 0.1
    radius = np.sqrt(1.0 - z**2)
    theta = golden * index
    unit = np.stack([radius * np.cos(theta), radius * np.sin(theta), z], axis=1)
    unit += rng.normal(scale=0.005, size=unit.shape)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    return np.concatenate([0.11 * unit, unit], axis=1).astype(np.float32)


def pink_noise(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Noise with a 1/f power spectrum along the last axis, unit variance."""
    spectrum = np.fft.rfft(rng.normal(size=shape), axis=-1)
    frequencies = np.fft.rfftfreq(shape[-1])
    frequencies[0] = frequencies[1]
    noise = np.fft.irfft(spectrum / np.sqrt(frequencies), n=shape[-1], axis=-1)
    return noise / noise.std(axis=-1, keepdims=True)


def meg_batch(
    batch_size: int = 4,
    num_sensors: int = 24,
    num_samples: int = 100,
    sfreq: float = 100.0,
    alpha_amplitude: np.ndarray | float = 1.0,
    evoked_amplitude: float = 0.0,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Model inputs for MEG-like windows: 3 sources with smooth fields, alpha + 1/f + noise.

    With ``evoked_amplitude`` the windows are stimulus-locked: the first source also carries an
    evoked response (a 10 Hz burst peaking 0.3 s into the window) in every window.
    """
    rng = np.random.default_rng(seed)
    geometry = helmet(num_sensors, rng)
    positions = geometry[:, :3]
    source_directions = np.array([[0.0, -0.8, 0.6], [-0.7, 0.1, 0.7], [0.7, 0.1, 0.7]])
    source_directions /= np.linalg.norm(source_directions, axis=1, keepdims=True)
    # A dipole-like field: a smooth bump with a sign change across the source.
    distance = positions[None, :, :] / 0.11 - source_directions[:, None, :]
    fields = np.exp(-(distance**2).sum(-1) / 0.3) * np.sign(distance[..., 0] + 1e-3)
    time = np.arange(num_samples) / sfreq
    alpha_amplitude = np.broadcast_to(np.asarray(alpha_amplitude, dtype=float), (batch_size,))
    phases = rng.uniform(0, 2 * math.pi, size=batch_size)
    alpha = alpha_amplitude[:, None] * np.sin(2 * math.pi * 10.0 * time[None, :] + phases[:, None])
    evoked = (
        evoked_amplitude
        * np.exp(-((time - 0.3) ** 2) / (2 * 0.05**2))
        * np.cos(2 * math.pi * 10.0 * (time - 0.3))
    )
    sources = np.stack(
        [
            alpha + evoked[None, :],
            pink_noise((batch_size, num_samples), rng),
            pink_noise((batch_size, num_samples), rng),
        ],
        axis=1,
    )
    signal = np.einsum("bkt,ks->bst", sources, fields)
    signal += 0.1 * rng.normal(size=signal.shape)
    types = np.tile(np.array([0, 1, 1]), num_sensors // 3 + 1)[:num_sensors]
    return {
        "input_values": torch.tensor(signal, dtype=torch.float32),
        "sensor_positions": torch.tensor(
            np.broadcast_to(geometry, (batch_size, num_sensors, 6)).copy()
        ),
        "sensor_types": torch.tensor(
            np.broadcast_to(types, (batch_size, num_sensors)).copy(), dtype=torch.long
        ),
        "sensor_mask": torch.ones(batch_size, num_sensors, dtype=torch.bool),
    }
