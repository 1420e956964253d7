"""``megfm features``: one feature vector per window of every recording given.

Example::

    megfm features --model my-model --output features sub-01_task-rest_meg.fif sub-02.ds

writes ``features/sub-01_task-rest_meg.npz`` and ``features/sub-02.npz``, each with
``pooled`` (windows x hidden), ``onsets_s``, ``events`` (and ``tokens`` with ``--tokens``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..data.cli import parse_events
from ..data.errors import MEGDataError
from ..data.processor import MEGProcessor
from ..evaluation.loading import check_model_folder
from ..modeling.configuration_megfm import POOLING_MODES
from ..modeling.modeling_megfm import MEGModel
from .features import RecordingFeatures, extract_features

logger = logging.getLogger(__name__)

DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``features`` arguments to ``parser``."""
    parser.add_argument("recordings", nargs="+", help="MEG files (FIF, CTF .ds, KIT, BTi)")
    parser.add_argument("--model", required=True, help="saved model folder (save_pretrained)")
    parser.add_argument("--output", required=True, help="folder for one .npz per recording")
    parser.add_argument(
        "--events", type=parse_events, default=None,
        help="event-locked windows: 'name=code,...' (stim) or 'name,...' (annotations); "
        "default: the processor's events, or fixed windows",
    )  # fmt: skip
    parser.add_argument(
        "--tokens", action="store_true", help="also save per-(sensor, patch) features"
    )
    parser.add_argument(
        "--pooling", choices=POOLING_MODES, default=None,
        help="how the pooled features summarise a window (default: the model's own); "
        "'latents' (latent mode) skips the read-out to every token, about 2.5x faster",
    )  # fmt: skip
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument(
        "--batch-size", type=int, default=2,
        help="windows per forward pass (default 2; GPUs want larger ones)",
    )  # fmt: skip
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default="float32",
        help="autocast precision (bfloat16 on GPUs that have it)",
    )  # fmt: skip
    parser.add_argument(
        "--compile", action="store_true",
        help="torch.compile the encoder first (tens of seconds; faster for long recordings)",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def save_features(features: RecordingFeatures, path: Path) -> Path:
    """Write features to ``path`` (.npz) through a temporary file, so no partial file is left."""
    arrays = {
        "pooled": features.pooled,
        "onsets_s": features.onsets_s,
        "events": np.asarray(features.events, dtype=str),
    }
    if features.tokens is not None:
        arrays["tokens"] = features.tokens
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".npz")
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, **arrays)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _output_name(recording: Path, taken: set[str]) -> str:
    stem = recording.name.removesuffix(".gz")
    for suffix in (".fif", ".ds", ".sqd", ".con", ".pdf"):
        stem = stem.removesuffix(suffix)
    name, index = stem, 1
    while name in taken:
        index += 1
        name = f"{stem}-{index}"
    taken.add(name)
    return name


def run(args: argparse.Namespace) -> int:
    """Run ``features``; return 0 on success, 1 on bad input.

    A recording that cannot be read or windowed is reported and skipped: the features of the
    others are still written, and the exit code is 1.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        folder = check_model_folder(args.model)
        if not (folder / "preprocessor_config.json").is_file():
            raise FileNotFoundError(
                f"model folder {str(folder)!r} has no preprocessor_config.json: the processor "
                "saved with the model fixes the preprocessing its features need"
            )
        recordings = [Path(r) for r in args.recordings]
        for recording in recordings:
            if not recording.exists():
                raise FileNotFoundError(f"recording {str(recording)!r} does not exist")
        processor = MEGProcessor.from_pretrained(folder)
        overrides = {} if args.pooling is None else {"pooling": args.pooling}
        model = MEGModel.from_pretrained(folder, **overrides).to(args.device)
        output = Path(args.output)
        output.mkdir(parents=True, exist_ok=True)
        taken: set[str] = set()
        failures: list[str] = []
        for recording in recordings:
            name = _output_name(recording, taken)
            try:
                features = extract_features(
                    model,
                    processor,
                    recording,
                    batch_size=args.batch_size,
                    event_id=args.events,
                    return_tokens=args.tokens,
                    autocast_dtype=DTYPES[args.dtype],
                    torch_compile=args.compile,
                    progress=not args.no_progress,
                )
            except (MEGDataError, FloatingPointError) as err:
                # one bad recording costs its own features only; the others are still written
                logger.error("%s: no features: %s", recording, err)
                failures.append(str(err))
                continue
            path = save_features(features, output / f"{name}.npz")
            logger.info("%s: %d windows -> %s", recording.name, len(features.pooled), path)
        if failures:
            raise ValueError(
                f"{len(failures)} of {len(recordings)} recordings gave no features:\n  "
                + "\n  ".join(failures)
            )
    except (FileNotFoundError, ValueError) as err:
        print(f"megfm features: error: {err}", file=sys.stderr)
        return 1
    return 0
