"""``megfm build-dataset``: package MEG recordings as a ``datasets`` dataset.

Examples
--------
From a manifest (TSV/CSV with columns path, subject[, session, state, label])::

    megfm build-dataset --manifest recordings.tsv --output my-dataset --window-seconds 4

From a BIDS folder, labels from the ``group`` column of participants.tsv, auditory events::

    megfm build-dataset --bids-root bids/ --output my-dataset --events "left=1,right=2" --tmin -0.2
"""

from __future__ import annotations

import argparse
import logging
import sys

from .builder import REST_STATES, build_dataset, push_dataset_to_hub
from .errors import ManifestError, MEGDataError
from .processor import DEFAULT_REJECT, MEGProcessor

logger = logging.getLogger(__name__)


def parse_events(text: str | None) -> dict[str, int] | list[str] | str | None:
    """Parse ``--events``: ``"name=code,..."`` (stim codes), ``"name,..."`` (annotations) or
    ``"all"`` (every stim code).

    Parameters
    ----------
    text : str | None

    Returns
    -------
    event_id : dict | list | None
    """
    if not text:
        return None
    if text.strip().lower() == "all":
        return "all"
    items = [item.strip() for item in text.split(",") if item.strip()]
    if all("=" in item for item in items):
        pairs = [item.rsplit("=", 1) for item in items]
        try:
            return {name.strip(): int(code) for name, code in pairs}
        except ValueError as err:
            raise argparse.ArgumentTypeError(
                f"--events {text!r}: codes must be integers (name=code,...)"
            ) from err
    if any("=" in item for item in items):
        raise argparse.ArgumentTypeError(
            f"--events {text!r}: use either name=code pairs or annotation names, not both"
        )
    return items


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``build-dataset`` options to ``parser``."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--manifest", help="TSV/CSV with columns path, subject[, session, state, label]"
    )
    source.add_argument("--bids-root", help="BIDS folder (read through mne-bids)")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument(
        "--label-column", default="group", help="participants.tsv column with labels (BIDS)"
    )
    parser.add_argument(
        "--processor", help="folder or preprocessor_config.json of an existing processor"
    )
    parser.add_argument("--sfreq", type=float, default=250.0, help="target sampling rate (Hz)")
    parser.add_argument("--patch-length", type=int, default=25, help="samples per model patch")
    parser.add_argument("--window-seconds", type=float, default=4.0, help="window length (s)")
    parser.add_argument(
        "--overlap", type=float, default=0.0, help="overlap of fixed windows, fraction in [0, 1)"
    )
    parser.add_argument(
        "--l-freq", type=float, default=0.5, help="high-pass edge (Hz); negative: none"
    )
    parser.add_argument(
        "--h-freq", type=float, default=100.0, help="low-pass edge (Hz); negative: none"
    )
    parser.add_argument(
        "--line-freq",
        type=float,
        default=None,
        help="notch frequency (Hz); default: from the file, else 50 or 60 detected from the data",
    )
    parser.add_argument("--no-notch", action="store_true", help="do not apply the notch filter")
    parser.add_argument(
        "--events", help="event-locked windows: 'name=code,...' (stim) or 'name,...' (annotations)"
    )
    parser.add_argument(
        "--tmin",
        type=float,
        default=-0.2,
        help="event-locked window start relative to the event (s)",
    )
    parser.add_argument(
        "--tmax",
        type=float,
        default=None,
        help="event-locked window end (s); sets --window-seconds to tmax - tmin",
    )
    parser.add_argument("--stim-channel", default=None, help="stim channel for events")
    parser.add_argument(
        "--rest-states",
        default=",".join(REST_STATES),
        help="states windowed with fixed windows even with --events",
    )
    parser.add_argument("--scaling-mode", choices=("physical", "robust"), default="physical")
    parser.add_argument("--no-reject", action="store_true", help="disable peak-to-peak rejection")
    parser.add_argument(
        "--keep-meas-date", action="store_true", help="keep measurement dates when anonymizing"
    )
    parser.add_argument("--num-proc", type=int, default=1, help="worker processes")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first bad recording")
    parser.add_argument("--overwrite", action="store_true", help="rebuild when settings changed")
    parser.add_argument("--secret-file", help="file holding the HMAC secret for recording hashes")
    parser.add_argument("--writer-batch-size", type=int, default=64, help="rows per write")
    parser.add_argument(
        "--push-to-hub", metavar="REPO_ID", help="upload the dataset to this Hub repository"
    )
    parser.add_argument("--public", action="store_true", help="create the Hub repository as public")


#: options that set the preprocessing, which a saved ``--processor`` fixes instead
PROCESSING_OPTIONS: tuple[str, ...] = (
    "sfreq", "patch_length", "window_seconds", "overlap", "l_freq", "h_freq", "line_freq",
    "no_notch", "tmin", "tmax", "stim_channel", "scaling_mode", "no_reject", "keep_meas_date",
)  # fmt: skip


def _processor_from_args(args: argparse.Namespace) -> MEGProcessor:
    if args.processor:
        defaults = argparse.ArgumentParser()
        configure_parser(defaults)
        given = [
            "--" + name.replace("_", "-")
            for name in PROCESSING_OPTIONS
            if getattr(args, name) != defaults.get_default(name)
        ]
        if given:
            raise ValueError(
                f"--processor {args.processor} fixes the preprocessing, so {', '.join(given)} "
                "would be ignored; drop them, or leave out --processor"
            )
        return MEGProcessor.from_pretrained(args.processor)
    window_seconds = args.window_seconds
    if args.tmax is not None:
        window_seconds = args.tmax - args.tmin
    return MEGProcessor(
        sfreq=args.sfreq,
        patch_length=args.patch_length,
        l_freq=None if args.l_freq is not None and args.l_freq < 0 else args.l_freq,
        h_freq=None if args.h_freq is not None and args.h_freq < 0 else args.h_freq,
        line_freq=args.line_freq,
        notch=not args.no_notch,
        window_seconds=window_seconds,
        overlap=args.overlap,
        tmin=args.tmin,
        stim_channel=args.stim_channel,
        scaling_mode=args.scaling_mode,
        reject=None if args.no_reject else DEFAULT_REJECT,
        keep_meas_date=args.keep_meas_date,
    )


def run(args: argparse.Namespace) -> int:
    """Run ``build-dataset``; return the exit status (0: built, 1: failed, 2: bad arguments)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        processor = _processor_from_args(args)
        event_id = parse_events(args.events)
    except (ValueError, argparse.ArgumentTypeError) as err:
        print(f"megfm build-dataset: {err}", file=sys.stderr)
        return 2
    secret = None
    if args.secret_file:
        with open(args.secret_file, "rb") as handle:
            secret = handle.read().strip()
    try:
        result = build_dataset(
            args.manifest,
            args.output,
            processor=processor,
            bids_root=args.bids_root,
            label_column=args.label_column,
            event_id=event_id,
            rest_states=[s.strip() for s in args.rest_states.split(",") if s.strip()],
            num_proc=args.num_proc,
            fail_fast=args.fail_fast,
            secret=secret,
            overwrite=args.overwrite,
            writer_batch_size=args.writer_batch_size,
        )
    except (MEGDataError, ManifestError, ValueError, RuntimeError) as err:
        print(f"megfm build-dataset: {err}", file=sys.stderr)
        return 1
    print(
        f"{result.n_windows} windows from {result.n_recordings} recordings written to "
        f"{result.output_dir} ({len(result.failures)} recordings failed)"
    )
    if args.push_to_hub:
        commit = push_dataset_to_hub(args.output, args.push_to_hub, private=not args.public)
        print(f"pushed to {getattr(commit, 'commit_url', args.push_to_hub)}")
    for failure in result.failures:
        print(
            f"  manifest row {failure['manifest_row'] + 1}: {failure['reason']}: {failure['problem']}",
            file=sys.stderr,
        )
    return 0


__all__ = ["configure_parser", "parse_events", "run"]
