"""braindecode's LUNA, the peer of megfm's latent mode, for the benchmarks.

LUNA (Döner et al., NeurIPS 2025) is the EEG foundation model whose design megfm's ``latent``
attention mode shares: per time patch, a few learned queries cross-attend to every channel, and
a transformer runs over the queries alone. braindecode implements it for any channel count, so
it takes 306 MEG sensors as it takes EEG electrodes.

braindecode is optional and installed without its dependencies::

    pip install --no-deps "braindecode>=1.8.1" einops docstring-inheritance torchinfo

because one of them, torchaudio, publishes CUDA builds tied to one torch release only: beside
any other torch it fails to load, and an installed torchaudio that cannot load breaks
transformers' own imports. LUNA uses none of it, but ``import braindecode`` imports every
braindecode model, and some of those import torchaudio; :func:`load_luna` therefore imports
LUNA's module with braindecode's package ``__init__`` files left out.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
import types
import warnings

import torch

#: LUNA's patch embedding (a strided convolution) is built for patches of 40 samples.
LUNA_PATCH = 40
#: Query cross-attention heads of every LUNA size; the temporal blocks have this many per query.
LUNA_CROSS_HEADS = 2


class PeerUnavailable(RuntimeError):
    """The peer cannot run here: not installed, or not at this input shape."""


def _package_without_init(name: str) -> None:
    """Register package ``name`` (its parent already registered) without running its
    ``__init__``, so that only the submodules imported later are loaded."""
    if name in sys.modules:
        return
    parent, _, child = name.rpartition(".")
    if parent:
        paths = [f"{path}/{child}" for path in sys.modules[parent].__path__]
    else:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.submodule_search_locations is None:
            raise PeerUnavailable(
                "braindecode is not installed (pip install --no-deps 'braindecode>=1.8.1' "
                "einops docstring-inheritance torchinfo)"
            )
        paths = list(spec.submodule_search_locations)
    module = types.ModuleType(name)
    module.__path__ = paths
    sys.modules[name] = module


def load_luna() -> type[torch.nn.Module]:
    """braindecode's ``LUNA`` class; :class:`PeerUnavailable` when it cannot be imported.

    braindecode's packages stay registered without their ``__init__`` files, so later imports
    of other braindecode models in this process find empty packages: a benchmark needs none.
    """
    for package in ("braindecode", "braindecode.models", "braindecode.modules"):
        _package_without_init(package)
    try:
        return importlib.import_module("braindecode.models.luna").LUNA
    except ImportError as error:
        raise PeerUnavailable(f"braindecode's LUNA does not import: {error}") from error


def luna_version() -> str:
    """The installed braindecode release."""
    return importlib.metadata.version("braindecode")


def luna_unavailable(samples: int) -> str | None:
    """Why LUNA cannot run on windows of ``samples`` samples here, or None when it can."""
    if samples % LUNA_PATCH:
        return f"LUNA needs a multiple of {LUNA_PATCH} samples (its patch), not {samples}"
    try:
        load_luna()
    except PeerUnavailable as error:
        return str(error)
    return None


def luna_model(
    width: int, depth: int, heads: int, sensors: int, samples: int, classes: int
) -> torch.nn.Module:
    """LUNA whose temporal transformer has megfm's ``width``, ``depth`` and ``heads``.

    LUNA's temporal tokens are its queries side by side (``num_queries * embed_dim`` wide) and
    its blocks have two heads per query, so ``heads / 2`` queries of ``width / (heads / 2)``:
    width 256 x 8 layers with 8 heads is LUNA-Base exactly (4 queries of 64, 8 blocks).
    ``classes=0`` gives the pretraining model (a reconstruction head); otherwise a classifier
    of that many outputs, whose forward is LUNA's feature extraction plus its attention-pooling
    head.
    """
    queries = heads // LUNA_CROSS_HEADS
    if heads % LUNA_CROSS_HEADS or width % queries:
        raise PeerUnavailable(f"no LUNA has width {width} with {heads} heads")
    luna = load_luna()
    with warnings.catch_warnings():
        # torch notes that its pre-norm query encoder cannot use nested tensors; LUNA has none.
        warnings.filterwarnings("ignore", message="enable_nested_tensor is True")
        return luna(
            n_outputs=classes,
            n_chans=sensors,
            n_times=samples,
            patch_size=LUNA_PATCH,
            num_queries=queries,
            embed_dim=width // queries,
            depth=depth,
            num_heads=LUNA_CROSS_HEADS,
        )


def luna_mask(
    batch: int, sensors: int, samples: int, ratio: float, generator: torch.Generator
) -> torch.Tensor:
    """A random patch mask at ``ratio`` in LUNA's form: ``(batch, sensors, samples)``, True on
    every sample of a hidden patch."""
    patches = samples // LUNA_PATCH
    scores = torch.rand(batch, sensors * patches, generator=generator)
    hidden = scores.argsort(dim=1) < round(ratio * sensors * patches)
    return (
        hidden.view(batch, sensors, patches, 1)
        .expand(-1, -1, -1, LUNA_PATCH)
        .reshape(batch, sensors, samples)
    )
