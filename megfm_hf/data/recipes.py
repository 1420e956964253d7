"""Recipes for public MEG datasets reachable through :mod:`mne.datasets`.

Each recipe fetches a dataset (downloading it when ``download=True`` and it is not already in
``path``), lists its recordings and the events to window on, and can build a dataset from them.

==========================  ==============================================  ===================
recipe                      data                                            windows
==========================  ==============================================  ===================
``sample``                  MNE sample subject, auditory/visual paradigm    event-locked
                            (Neuromag Vectorview, ``sample_audvis_raw``)    (stim codes 1-4)
``somato``                  median-nerve stimulation (BIDS, Vectorview)     event-locked (1)
``multimodal``              auditory, visual and somatosensory stimuli      event-locked, named
                            (Vectorview)                                    by stim code
``brainstorm_resting``      resting state (CTF-275); license accepted       fixed-length
                            with ``accept_license=True``
==========================  ==============================================  ===================
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .builder import BuildResult, build_dataset
from .manifest import RecordingSpec, manifest_from_bids, write_manifest
from .processor import MEGProcessor

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """How to fetch and list one public dataset.

    Attributes
    ----------
    name : str
    description : str
    folder : str
        Name of the folder ``mne.datasets`` creates inside ``path``.
    fetch : callable
        ``fetch(path, download, accept_license) -> Path`` (the dataset folder).
    list_recordings : callable
        ``list_recordings(folder) -> list[RecordingSpec]``.
    event_id : dict | None
        Events for event-locked windows (``None``: fixed-length windows, or every stim code when
        ``all_stim_events``).
    all_stim_events : bool
        Window on every stim code, named by its number.
    """

    name: str
    description: str
    folder: str
    fetch: Callable[[Path | None, bool, bool], Path]
    list_recordings: Callable[[Path], list[RecordingSpec]]
    event_id: dict[str, int] | None = None
    all_stim_events: bool = False


def _fetched(result: Any, folder: str, name: str, download: bool) -> Path:
    # mne.datasets returns "." (or "") when the data are absent and download=False
    path = Path(result)
    if path.name != folder and not str(path).endswith(folder):
        raise FileNotFoundError(
            f"dataset {name!r} is not in the given folder and download={download}; run with "
            "download=True (needs internet) or point path at a folder holding it"
        )
    return path


def _fetch_sample(path, download, accept_license):
    from mne.datasets import sample

    result = sample.data_path(path=path, download=download, update_path=False)
    return _fetched(result, "MNE-sample-data", "sample", download)


def _fetch_somato(path, download, accept_license):
    from mne.datasets import somato

    result = somato.data_path(path=path, download=download, update_path=False)
    return _fetched(result, "MNE-somato-data", "somato", download)


def _fetch_multimodal(path, download, accept_license):
    from mne.datasets import multimodal

    result = multimodal.data_path(path=path, download=download, update_path=False)
    return _fetched(result, "MNE-multimodal-data", "multimodal", download)


def _fetch_brainstorm_resting(path, download, accept_license):
    from mne.datasets.brainstorm import bst_resting

    if not accept_license:
        raise PermissionError(
            "the Brainstorm resting-state data are distributed under the Brainstorm license; read "
            "it and pass accept_license=True to fetch them"
        )
    result = bst_resting.data_path(path=path, download=download, update_path=False, accept=True)
    return _fetched(result, "bst_resting", "brainstorm_resting", download)


def _require(files: list[Path], folder: Path, pattern: str) -> list[Path]:
    if not files:
        raise FileNotFoundError(f"{folder}: no recording matching {pattern!r}")
    return files


def _list_sample(folder: Path) -> list[RecordingSpec]:
    raw = folder / "MEG" / "sample" / "sample_audvis_raw.fif"
    _require([raw] if raw.exists() else [], folder, "MEG/sample/sample_audvis_raw.fif")
    return [RecordingSpec(path=str(raw), subject="sample", state="audvis")]


def _list_somato(folder: Path) -> list[RecordingSpec]:
    return manifest_from_bids(folder, label_column=None)


def _list_multimodal(folder: Path) -> list[RecordingSpec]:
    raw = folder / "multimodal_raw.fif"
    _require([raw] if raw.exists() else [], folder, "multimodal_raw.fif")
    return [RecordingSpec(path=str(raw), subject="multimodal", state="multimodal")]


def _list_brainstorm_resting(folder: Path) -> list[RecordingSpec]:
    files = sorted(folder.glob("*spontaneous*.ds"))
    _require(files, folder, "*spontaneous*.ds")
    return [
        RecordingSpec(
            path=str(f), subject="subj002", session=f"run{i + 1:02d}", state="rest", row=i
        )
        for i, f in enumerate(files)
    ]


RECIPES: dict[str, Recipe] = {
    "sample": Recipe(
        name="sample",
        description="MNE sample subject: tones to the left/right ear, checkerboards left/right",
        folder="MNE-sample-data",
        fetch=_fetch_sample,
        list_recordings=_list_sample,
        event_id={"auditory/left": 1, "auditory/right": 2, "visual/left": 3, "visual/right": 4},
    ),
    "somato": Recipe(
        name="somato",
        description="Median-nerve stimulation, one subject, BIDS",
        folder="MNE-somato-data",
        fetch=_fetch_somato,
        list_recordings=_list_somato,
        event_id={"somatosensory": 1},
    ),
    "multimodal": Recipe(
        name="multimodal",
        description="Auditory, visual and somatosensory stimuli in one Vectorview recording",
        folder="MNE-multimodal-data",
        fetch=_fetch_multimodal,
        list_recordings=_list_multimodal,
        all_stim_events=True,
    ),
    "brainstorm_resting": Recipe(
        name="brainstorm_resting",
        description="Brainstorm resting-state recordings (CTF-275)",
        folder="MNE-brainstorm-data/bst_resting",
        fetch=_fetch_brainstorm_resting,
        list_recordings=_list_brainstorm_resting,
    ),
}


def fetch_recipe(
    name: str,
    *,
    path: str | Path | None = None,
    download: bool = True,
    accept_license: bool = False,
    manifest: str | Path | None = None,
) -> tuple[list[RecordingSpec], dict[str, int] | list[str] | None]:
    """Fetch a public dataset and list its recordings.

    Parameters
    ----------
    name : str
        A key of :data:`RECIPES`.
    path : str | Path | None
        Folder the dataset lives in or is downloaded to (MNE's default data folder when ``None``).
    download : bool
        Download when absent (needs internet).
    accept_license : bool
        Accept the dataset's license where one must be accepted (Brainstorm).
    manifest : str | Path | None
        Also write the recordings as a TSV manifest here.

    Returns
    -------
    recordings : list of RecordingSpec
    event_id : dict | None
        Events to window on (``None``: fixed-length windows, or all stim codes; see the recipe).
    """
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; expected one of {sorted(RECIPES)}")
    recipe = RECIPES[name]
    folder = recipe.fetch(None if path is None else Path(path), download, accept_license)
    recordings = recipe.list_recordings(folder)
    if manifest is not None:
        write_manifest(recordings, manifest)
    return recordings, recipe.event_id


def build_recipe(
    name: str,
    output_dir: str | Path,
    *,
    path: str | Path | None = None,
    download: bool = True,
    accept_license: bool = False,
    processor: MEGProcessor | None = None,
    **build_kwargs: Any,
) -> BuildResult:
    """Fetch a public dataset and build its windows (see :func:`build_dataset`).

    Parameters
    ----------
    name : str
        A key of :data:`RECIPES`.
    output_dir : str | Path
        Output folder of the dataset.
    path, download, accept_license
        See :func:`fetch_recipe`.
    processor : MEGProcessor | None
        Preprocessing parameters.
    **build_kwargs
        Passed to :func:`build_dataset`.
    """
    recordings, event_id = fetch_recipe(
        name, path=path, download=download, accept_license=accept_license
    )
    if RECIPES[name].all_stim_events:
        event_id = "all"
    return build_dataset(
        recordings, output_dir, processor=processor, event_id=event_id, **build_kwargs
    )


__all__ = ["RECIPES", "Recipe", "build_recipe", "fetch_recipe"]
