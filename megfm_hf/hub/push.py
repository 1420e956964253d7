"""Publish a saved model (and optionally its dataset) to the Hugging Face Hub.

What is uploaded is an explicit list, never "the whole folder":

model repository
    ``config.json``, ``model.safetensors`` (or its shards and ``model.safetensors.index.json``),
    the remote-code files named in ``config.json``'s ``auto_map`` (``configuration_megfm.py``,
    ``modeling_megfm.py``), ``preprocessor_config.json``, the card ``README.md`` (built when
    absent), a sanitised copy of ``metrics.json`` (no local paths or subject codes), and figures
    (``*.png``, ``*.svg``, ``*.pdf``, ``*.jpg`` at the top level and under ``figures/``).
dataset repository
    ``parquet/*.parquet`` as ``data/*.parquet`` (where the dataset card's ``configs`` look),
    ``README.md``, ``preprocessor_config.json`` and ``megfm_dataset.json``.

Every file passes the privacy gate (:mod:`megfm_hf.hub.privacy`) before anything is sent.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi

from .card import METRICS_FILE, check_repo_id, load_metrics, write_model_card
from .identifiers import subject_codes, write_sanitized_metrics
from .privacy import (
    WEIGHTS,
    WEIGHTS_INDEX,
    check_files,
    check_forbidden_strings,
    check_text,
    refuse_pickles,
    weight_files,
)

logger = logging.getLogger(__name__)

FIGURE_SUFFIXES: frozenset[str] = frozenset({".png", ".svg", ".pdf", ".jpg", ".jpeg"})
FIGURES_DIR = "figures"
OPTIONAL_MODEL_FILES = ("preprocessor_config.json", "metrics.json")
DATASET_FILES = ("README.md", "preprocessor_config.json", "megfm_dataset.json")


class ModelFolderError(ValueError):
    """A model or dataset folder lacks a file that publishing needs."""


def _remote_code_files(config: dict) -> list[str]:
    """Python files named by ``auto_map`` (``module.Class`` -> ``module.py``)."""
    names = set()
    for value in (config.get("auto_map") or {}).values():
        for reference in value if isinstance(value, list | tuple) else [value]:
            # "other/repo--module.Class" points to code in another repository: nothing to upload
            if isinstance(reference, str) and "--" not in reference and "." in reference:
                names.add(reference.rsplit(".", 1)[0] + ".py")
    return sorted(names)


def model_upload_files(model_dir: str | Path, *, require_card: bool = True) -> dict[str, Path]:
    """List the files of a model folder that are published, by their path in the repository.

    Parameters
    ----------
    model_dir : str | Path
        A ``save_pretrained`` folder.
    require_card : bool
        Refuse a folder without ``README.md``.

    Returns
    -------
    files : dict of str to Path
        Path in the repository -> local file.

    Raises
    ------
    ModelFolderError
        Naming every missing file (``config.json``, the weights, the remote code, the card).
    megfm_hf.hub.privacy.PrivacyError
        If a weight file is not safetensors, or the weight index names a file that is not
        ``.safetensors`` or lies outside the folder (:func:`~megfm_hf.hub.privacy.weight_files`).
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelFolderError(f"model folder {model_dir}: no such folder")
    files: dict[str, Path] = {}
    missing: list[str] = []
    config_path = model_dir / "config.json"
    if config_path.is_file():
        files["config.json"] = config_path
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ModelFolderError(f"{config_path}: not valid JSON ({error})") from None
    else:
        missing.append("config.json")
        config = {}

    weights, missing_shards = weight_files(model_dir)
    files.update(weights)
    missing += [f"{shard} (listed in {WEIGHTS_INDEX})" for shard in missing_shards]
    if not weights:
        missing.append(f"{WEIGHTS} (the weights; save with model.save_pretrained)")

    for name in _remote_code_files(config):
        if (model_dir / name).is_file():
            files[name] = model_dir / name
        else:
            missing.append(f"{name} (remote code named in config.json auto_map)")

    for name in OPTIONAL_MODEL_FILES:
        if (model_dir / name).is_file():
            files[name] = model_dir / name
    if (model_dir / "README.md").is_file():
        files["README.md"] = model_dir / "README.md"
    elif require_card:
        missing.append("README.md (the model card; write it with write_model_card)")

    figures = [p for p in model_dir.iterdir() if p.is_file()]
    if (model_dir / FIGURES_DIR).is_dir():
        figures += [p for p in sorted((model_dir / FIGURES_DIR).rglob("*")) if p.is_file()]
    for path in figures:
        if path.suffix.lower() in FIGURE_SUFFIXES:
            files[path.relative_to(model_dir).as_posix()] = path

    if missing:
        raise ModelFolderError(
            f"model folder {model_dir} cannot be published; missing: {', '.join(missing)}"
        )
    return files


def dataset_upload_files(dataset_dir: str | Path) -> dict[str, Path]:
    """List the files of a built dataset folder that are published, by their repository path.

    Parameters
    ----------
    dataset_dir : str | Path
        A folder written by :func:`megfm_hf.data.builder.build_dataset`.

    Returns
    -------
    files : dict of str to Path
        ``data/<shard>.parquet`` for every ``parquet/<shard>.parquet``, and the card, processor
        configuration and build report when present.

    Raises
    ------
    ModelFolderError
        If the folder has no Parquet shard.
    """
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise ModelFolderError(f"dataset folder {dataset_dir}: no such folder")
    shards = sorted((dataset_dir / "parquet").glob("*.parquet"))
    if not shards:
        raise ModelFolderError(
            f"dataset folder {dataset_dir} cannot be published; missing: parquet/*.parquet "
            "(build it with megfm build-dataset)"
        )
    files = {f"data/{shard.name}": shard for shard in shards}
    for name in DATASET_FILES:
        if (dataset_dir / name).is_file():
            files[name] = dataset_dir / name
    if "README.md" not in files:
        logger.warning(
            "dataset folder %s has no README.md: the dataset goes without a card", dataset_dir
        )
    return files


def _operations(files: dict[str, Path]) -> list[CommitOperationAdd]:
    return [
        CommitOperationAdd(path_in_repo=path_in_repo, path_or_fileobj=str(path))
        for path_in_repo, path in sorted(files.items())
    ]


def push_model(
    model_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    dataset_dir: str | Path | None = None,
    dataset_repo_id: str | None = None,
    token: str | None = None,
    commit_message: str = "Upload megfm model",
    forbidden_strings: Iterable[str] | None = None,
    api: HfApi | None = None,
    eval_dataset_repo_id: str | None = None,
) -> str:
    """Upload a saved model, its card and optionally its dataset to the Hub.

    Parameters
    ----------
    model_dir : str | Path
        A ``save_pretrained`` folder: ``config.json``, ``model.safetensors`` and the remote-code
        files are required; ``README.md`` is built (:func:`~megfm_hf.hub.card.write_model_card`)
        and written into the folder when absent.
    repo_id : str
        Model repository, ``ORG/NAME``; created when it does not exist.
    private : bool
        Create the repositories as private (an existing repository keeps its visibility).
    dataset_dir : str | Path | None
        A built dataset folder to upload as well (requires ``dataset_repo_id``).
    dataset_repo_id : str | None
        Dataset repository, ``ORG/NAME``.
    token : str | None
        Hub token; the logged-in token when ``None``.
    commit_message : str
        Message of the model commit.
    forbidden_strings : iterable of str | None
        Names, subject codes, hospital IDs that must appear in no uploaded file. The subject
        codes of the data (``split.json``, the dataset's ``subject`` column, the metrics; see
        :func:`~megfm_hf.hub.identifiers.subject_codes`) are refused as well, as whole words, in
        every file but the remote code and the dataset's ``subject`` column.
    api : huggingface_hub.HfApi | None
        Client to use (for example with another ``endpoint``); ``HfApi(token=token)`` when
        ``None``.
    eval_dataset_repo_id : str | None
        Hub id of the data ``metrics.json`` was computed on, for the card's ``model-index``
        (see :func:`~megfm_hf.hub.card.build_model_card`).

    Notes
    -----
    ``metrics.json`` is uploaded as a sanitised copy
    (:func:`~megfm_hf.hub.identifiers.sanitize_metrics`: local paths reduced to their final
    component, subject codes replaced by ordinal labels); the local file is left as it is.

    Returns
    -------
    commit_url : str
        URL of the model commit.

    Raises
    ------
    ModelFolderError
        If a required file is missing (the message names each one).
    megfm_hf.hub.privacy.PrivacyError
        If a file would leak an identifier, is a pickle, or a shard has an unknown column; the
        message names the file and what was found. Nothing is uploaded then.
    ValueError
        If a repository id is malformed, or only one of ``dataset_dir``/``dataset_repo_id`` is
        given.
    """
    check_repo_id(repo_id)
    if (dataset_dir is None) != (dataset_repo_id is None):
        raise ValueError(
            f"dataset_dir={dataset_dir!r} and dataset_repo_id={dataset_repo_id!r}: give both to "
            "upload a dataset, or neither"
        )
    if dataset_repo_id is not None:
        check_repo_id(dataset_repo_id, argument="dataset_repo_id")
    if eval_dataset_repo_id is not None:
        check_repo_id(eval_dataset_repo_id, argument="eval_dataset_repo_id")
    if not commit_message or not commit_message.strip():
        raise ValueError("commit_message is empty; the Hub needs a commit message")
    forbidden = check_forbidden_strings(forbidden_strings)
    check_text(commit_message, source="commit_message", forbidden_strings=forbidden)

    # The whole gate runs before the first byte is sent.
    model_dir = Path(model_dir)
    model_files = model_upload_files(model_dir, require_card=False)
    refuse_pickles(model_dir, "model folder")
    dataset_files: dict[str, Path] = {}
    if dataset_dir is not None:
        dataset_dir = Path(dataset_dir)
        dataset_files = dataset_upload_files(dataset_dir)
        refuse_pickles(dataset_dir, "dataset folder")
    metrics = load_metrics(None, model_dir)
    codes = subject_codes(model_dir, dataset_dir=dataset_dir, metrics=metrics)
    with tempfile.TemporaryDirectory(prefix="megfm-push-sanitized-") as staging:
        if METRICS_FILE in model_files:
            # the local metrics.json names folders and subjects: a sanitised copy travels
            model_files[METRICS_FILE] = write_sanitized_metrics(metrics, staging, codes)
        if dataset_files:
            check_files(dataset_files, forbidden, subject_codes=codes)
        _check_model_files(model_files, forbidden, codes)
        if "README.md" not in model_files:
            card = write_model_card(
                model_dir,
                repo_id=repo_id,
                dataset_summary=dataset_dir,
                dataset_repo_id=dataset_repo_id,
                eval_dataset_repo_id=eval_dataset_repo_id,
                forbidden_strings=forbidden,
                subject_codes=codes,
            )
            check_files({"README.md": card}, forbidden, subject_codes=codes)
            model_files["README.md"] = card

        api = api if api is not None else HfApi(token=token)
        if dataset_files:
            api.create_repo(
                dataset_repo_id, repo_type="dataset", private=private, exist_ok=True, token=token
            )
            dataset_commit = api.create_commit(
                dataset_repo_id,
                operations=_operations(dataset_files),
                commit_message="Upload MEG windows",
                repo_type="dataset",
                token=token,
            )
            logger.info(
                "dataset: %d files committed, %s", len(dataset_files), dataset_commit.commit_url
            )
        api.create_repo(repo_id, private=private, exist_ok=True, token=token)
        commit = api.create_commit(
            repo_id,
            operations=_operations(model_files),
            commit_message=commit_message,
            token=token,
        )
    logger.info("model: %d files committed, %s", len(model_files), commit.commit_url)
    return str(commit.commit_url)


def _check_model_files(
    files: dict[str, Path], forbidden: tuple[str, ...], codes: tuple[str, ...]
) -> None:
    """Run the gate on a model's files; subject codes are refused in all but the remote code.

    The remote code (``*.py``) is the package's own source, never written from the data, and a
    short code may be a word of it ("sample"); the caller's forbidden strings still apply to it.
    """
    code = {name: path for name, path in files.items() if name.endswith(".py")}
    check_files(code, forbidden)
    check_files({n: p for n, p in files.items() if n not in code}, forbidden, subject_codes=codes)


def read_forbidden_strings(path: str | Path) -> list[str]:
    """Read identifier strings from a file: one per line; blank lines and ``#`` comments skipped.

    A file keeps names off the command line (and out of shell history).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"forbidden-strings file {path}: no such file")
    return [
        line.strip()
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


__all__ = [
    "ModelFolderError",
    "dataset_upload_files",
    "model_upload_files",
    "push_model",
    "read_forbidden_strings",
]
