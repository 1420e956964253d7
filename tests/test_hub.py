"""Model cards, the privacy gate and pushes to a fake Hub server on 127.0.0.1."""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import json
import re
import shutil
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import HfApi, ModelCard, ModelCardData, metadata_load
from huggingface_hub import constants as hub_constants

from megfm_hf import MEGConfig, MEGForMaskedSignalModeling
from megfm_hf.data.builder import dataset_card
from megfm_hf.data.processor import MEGProcessor
from megfm_hf.data.shards import rows_table, window_features
from megfm_hf.hub import (
    ModelFolderError,
    PrivacyError,
    build_model_card,
    eval_results_from_metrics,
    find_identifiers,
    model_upload_files,
    push_model,
    sanitize_metrics,
    summarize_dataset,
    write_model_card,
)
from megfm_hf.hub import card_cli as card_cli_module
from megfm_hf.hub import cli as push_cli_module
from megfm_hf.hub.privacy import safetensors_header, subject_code_forms

METRICS = {
    "reconstruction": {
        "continuous": {
            "magnetometer": {"nmse": 0.41, "pearson_r": 0.77, "n_tokens": 1234},
            "planar_gradiometer": {"nmse": 0.52, "pearson_r": 0.69, "n_tokens": 2468},
        },
        "evoked": {"auditory/left": {"magnetometer": {"nmse": 0.23, "pearson_r": 0.88}}},
        "baselines": {
            "zeros": {"magnetometer": {"nmse": 1.0}, "planar_gradiometer": {"nmse": 1.0}},
            "interpolation": {"magnetometer": {"nmse": 0.8}, "planar_gradiometer": {"nmse": 0.9}},
        },
    },
    "attention": {
        "auditory/left": {
            "alignment": 0.62,
            "null_mean": 0.31,
            "null_ci95": [0.2, 0.4],
            "p_value": 0.01,
        }
    },
    "classification": {
        "n_subjects": 16,
        "folds": 4,
        "features": {
            "logistic_regression": {
                "roc_auc": [0.81, 0.65, 0.95],
                "balanced_accuracy": [0.75, 0.6, 0.9],
            }
        },
        "raw": {
            "logistic_regression": {
                "roc_auc": [0.6, 0.4, 0.8],
                "balanced_accuracy": [0.55, 0.4, 0.7],
            }
        },
        "permutation_test": {"logistic_regression": {"difference_roc_auc": 0.2, "p_value": 0.03}},
    },
}

# subject codes and a name that must never reach a card or the Hub
SUBJECTS = {"sub-JaneDoe": "patient", "sub-RoeRichard": "patient", "sub-c01": "control"}
N_SAMPLES = 50


# --------------------------------------------------------------------------- fixtures


def _png(text_chunks: dict[str, str] | None = None) -> bytes:
    """A valid 1x1 grey PNG, optionally with tEXt chunks."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    body = chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
    for key, value in (text_chunks or {}).items():
        body += chunk(b"tEXt", key.encode() + b"\0" + value.encode("latin-1"))
    body += chunk(b"IDAT", zlib.compress(b"\x00\x80")) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("saved") / "model"
    config = MEGConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_latents=2,
        decoder_hidden_size=16,
        decoder_num_attention_heads=2,
    )
    model = MEGForMaskedSignalModeling(config)
    model.save_pretrained(folder)
    MEGProcessor.from_model_config(config, window_seconds=0.2).save_pretrained(folder)
    (folder / "num_parameters.txt").write_text(str(model.num_parameters()))
    return folder


@pytest.fixture
def model_dir(saved_model, tmp_path) -> Path:
    """A fresh copy of the saved model with metrics and a figure."""
    folder = tmp_path / "model"
    shutil.copytree(saved_model, folder)
    (folder / "metrics.json").write_text(json.dumps(METRICS, indent=1))
    (folder / "figures").mkdir()
    (folder / "figures" / "reconstruction.png").write_bytes(_png({"Software": "matplotlib"}))
    return folder


def _write_shard(path: Path, subjects: dict[str, str], *, extra_column: str | None = None) -> None:
    rng = np.random.default_rng(0)
    tables = []
    for index, (subject, label) in enumerate(subjects.items()):
        n, n_sensors = 3, 4
        table = rows_table(
            window_features(N_SAMPLES),
            input_values=rng.standard_normal((n, n_sensors, N_SAMPLES)).astype(np.float32),
            sensor_positions=rng.standard_normal((n_sensors, 6)).astype(np.float32),
            sensor_types=np.array([0, 1, 1, 0]),
            sensor_mask=np.ones(n_sensors, dtype=bool),
            sfreq=250.0,
            onset_s=np.arange(n) * 0.2,
            strings={
                "subject": subject,
                "session": "1",
                "state": "rest" if index % 2 == 0 else "auditory",
                "label": label,
                "event": "",
                "recording": f"{index:016x}",
            },
        )
        tables.append(table)
    table = pa.concat_tables(tables)
    if extra_column:
        table = table.append_column(extra_column, pa.array(["x"] * table.num_rows))
    pq.write_table(table, path)


@pytest.fixture
def dataset_dir(tmp_path) -> Path:
    """A built-dataset folder: one Parquet shard, card, processor configuration and report."""
    folder = tmp_path / "dataset"
    (folder / "parquet").mkdir(parents=True)
    _write_shard(folder / "parquet" / "train-0123abcd.parquet", SUBJECTS)
    processor = MEGProcessor(window_seconds=0.2)
    processor.save_pretrained(folder)
    report = {
        "n_windows": 9,
        "n_recordings": 1,
        "subjects": 3,
        "states": ["auditory", "rest"],
        "label_names": ["control", "patient"],
        "window_samples": N_SAMPLES,
        "sfreq": 250.0,
    }
    (folder / "megfm_dataset.json").write_text(json.dumps(report))
    (folder / "README.md").write_text(dataset_card(report, processor))
    return folder


# --------------------------------------------------------------------------- fake Hub


class FakeHub:
    """A small Hub on 127.0.0.1 that records repositories and commits.

    Routes (what huggingface_hub 2.4 calls for ``create_repo`` + ``create_commit``):
    ``POST /api/repos/create``, ``POST /api/validate-yaml``,
    ``POST /api/{models,datasets}/{org}/{name}/preupload/{revision}`` (every file "regular", so
    contents travel base64 in the commit), ``POST /api/{...}/commit/{revision}`` (NDJSON),
    ``GET``/``HEAD /api/{models,datasets}/{org}/{name}``, ``GET /api/whoami-v2`` and
    ``GET /api/agent-harnesses`` (a registry the client reads once per process). Anything
    else is answered 404 and recorded in ``unexpected``. The request loop serves at most
    ``max_requests`` requests, for at most ``lifetime`` seconds, and stops when the context exits.
    """

    def __init__(self, *, max_requests: int = 100, lifetime: float = 60.0) -> None:
        self.repos: dict[tuple[str, str], dict] = {}
        self.commits: list[dict] = []
        self.requests: list[tuple[str, str]] = []
        self.unexpected: list[tuple[str, str]] = []
        self.validated_yaml: list[str] = []
        self.max_requests = max_requests
        self.lifetime = lifetime
        self._stop = threading.Event()
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection: no idle keep-alives

            def log_message(self, *args) -> None:  # keep the test output clean
                pass

            def do_GET(self) -> None:
                hub._dispatch(self, "GET")

            def do_HEAD(self) -> None:
                hub._dispatch(self, "HEAD")

            def do_POST(self) -> None:
                hub._dispatch(self, "POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.timeout = 0.1  # handle_request returns when idle, so the loop can stop
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        deadline = time.monotonic() + self.lifetime
        while (
            not self._stop.is_set()
            and len(self.requests) < self.max_requests
            and time.monotonic() < deadline
        ):
            self._server.handle_request()

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._server.server_close()
        assert not self._thread.is_alive(), "the fake Hub did not stop"

    # -- request handling

    @staticmethod
    def _body(handler: BaseHTTPRequestHandler) -> bytes:
        if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(handler.rfile.readline().strip(), 16)
                if size == 0:
                    handler.rfile.readline()
                    return data
                data += handler.rfile.read(size)
                handler.rfile.readline()
        return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))

    @staticmethod
    def _reply(handler, status: int, payload: dict, headers: dict | None = None) -> None:
        body = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)

    def _dispatch(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        path = handler.path.split("?", 1)[0]
        body = self._body(handler) if method == "POST" else b""
        with self._lock:
            self.requests.append((method, path))
        parts = path.strip("/").split("/")
        if method == "POST" and path == "/api/repos/create":
            return self._create_repo(handler, json.loads(body))
        if method == "POST" and path == "/api/validate-yaml":
            self.validated_yaml.append(json.loads(body)["content"])
            return self._reply(handler, 200, {"errors": [], "warnings": []})
        if method == "GET" and path == "/api/agent-harnesses":
            # huggingface_hub fetches this registry once per process to build its user agent
            return self._reply(handler, 200, {"standardEnvVars": [], "harnesses": {}})
        if method == "GET" and path == "/api/whoami-v2":
            return self._reply(handler, 200, {"name": "tester", "type": "user"})
        if len(parts) >= 4 and parts[0] == "api" and parts[1] in ("models", "datasets"):
            repo_type, repo_id = parts[1][:-1], f"{parts[2]}/{parts[3]}"
            repo = self.repos.get((repo_type, repo_id))
            if repo is None:
                return self._reply(
                    handler,
                    404,
                    {"error": "Repository not found"},
                    {"X-Error-Code": "RepoNotFound"},
                )
            if method in ("GET", "HEAD") and len(parts) == 4:
                return self._reply(
                    handler, 200, {"id": repo_id, "sha": repo["sha"], "private": repo["private"]}
                )
            if method == "POST" and len(parts) == 6 and parts[4] == "preupload":
                files = json.loads(body)["files"]
                modes = [
                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                    for f in files
                ]
                return self._reply(handler, 200, {"files": modes})
            if method == "POST" and len(parts) == 6 and parts[4] == "commit":
                return self._commit(handler, repo_type, repo_id, parts[5], body)
        with self._lock:
            self.unexpected.append((method, path))
        return self._reply(handler, 404, {"error": f"no route {method} {path}"})

    def _create_repo(self, handler, payload: dict) -> None:
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload['organization']}/{payload['name']}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.endpoint}/{prefix}{repo_id}"
        if (repo_type, repo_id) in self.repos:
            # as the Hub does: the conflict answer carries the existing repository's URL
            return self._reply(handler, 409, {"error": "You already created this repo", "url": url})
        self.repos[(repo_type, repo_id)] = {
            "private": payload.get("visibility") == "private",
            "sha": "0" * 40,
            "files": {},
        }
        return self._reply(handler, 200, {"url": url})

    def _commit(self, handler, repo_type: str, repo_id: str, revision: str, body: bytes) -> None:
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = lines[0]
        files = {}
        for line in lines[1:]:
            if line["key"] != "file" or line["value"].get("encoding") != "base64":
                return self._reply(handler, 400, {"error": f"fake Hub: unsupported {line['key']}"})
            files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
        oid = hashlib.sha1(body).hexdigest()
        repo = self.repos[(repo_type, repo_id)]
        repo["files"].update(files)
        repo["sha"] = oid
        self.commits.append(
            {
                "repo_type": repo_type,
                "repo_id": repo_id,
                "revision": revision,
                "summary": header["value"]["summary"],
                "files": files,
                "oid": oid,
            }
        )
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.endpoint}/{prefix}{repo_id}/commit/{oid}"
        return self._reply(handler, 200, {"commitUrl": url, "commitOid": oid})


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    # The suite runs offline (conftest); pushes to the loopback server need the Hub client online.
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    # the client caches a registry it fetches from the endpoint: keep it out of the user's HF_HOME
    monkeypatch.setattr(hub_constants, "AGENT_HARNESSES_PATH", str(tmp_path / "registry.json"))
    with FakeHub() as hub:
        monkeypatch.setattr(hub_constants, "ENDPOINT", hub.endpoint)
        yield hub
    assert hub.unexpected == [], f"unexpected requests: {hub.unexpected}"


class NoUpload:
    """An ``api`` stand-in that fails the test if anything reaches the Hub."""

    def __getattr__(self, name):
        raise AssertionError(f"HfApi.{name} was called although the privacy gate should refuse")


# --------------------------------------------------------------------------- cards


def test_card_renders_and_metadata_round_trips(model_dir, dataset_dir, saved_model):
    summary = summarize_dataset(dataset_dir, name="toy cohort")
    path = write_model_card(
        model_dir, dataset_summary=summary, repo_id="megfm/tiny", dataset_repo_id="megfm/toy"
    )
    assert path == model_dir / "README.md"
    assert not list(model_dir.glob("README.md.tmp-*"))
    text = path.read_text()

    # architecture and data from the folder
    n_params = int((saved_model / "num_parameters.txt").read_text())
    assert f"{n_params:,}" in text
    for expected in (
        "| width (hidden size) | 32 |",
        "| depth (encoder blocks) | 1 |",
        "| attention heads | 4 |",
        "| patch length | 25 samples = 0.1 s |",
        "| sampling rate | 250 Hz |",
        "`latent`",
        "| subjects per group | control: 1, patient: 2 |",
        "| windows per state | auditory: 3, rest: 6 |",
        "362 patients and 54 controls",
        "not a medical device",
        "trust_remote_code=True",
        "Journal of Neural Engineering",
        "| continuous | all | magnetometer | 0.410 | 0.770 | 1234 | 1.000 | 0.800 |",
        "| pretrained features | logistic_regression | 0.810 [0.650, 0.950] |",
    ):
        assert expected in text, expected
    assert "Not evaluated" not in text

    # model-index metadata round trip: YAML -> dict -> EvalResult objects
    metadata = metadata_load(path)
    assert metadata["license"] == "bsd-3-clause"
    assert metadata["datasets"] == ["megfm/toy"]
    assert metadata["model-index"][0]["name"] == "tiny"
    # the metrics do not say they were computed on megfm/toy: not listed under it
    expected = eval_results_from_metrics(
        METRICS, dataset_type="local", dataset_name="MEG evaluation data"
    )
    loaded = ModelCard.load(path).data
    assert loaded.eval_results == expected
    values = {(r.metric_type, r.metric_config): r.metric_value for r in loaded.eval_results}
    assert values[("nmse", "magnetometer")] == 0.41
    assert values[("pearson_r", "planar_gradiometer")] == 0.69
    assert values[("pearson_r", "auditory/left/magnetometer")] == 0.88
    assert values[("alignment", "auditory/left")] == 0.62
    assert values[("roc_auc", "logistic_regression")] == 0.81
    assert values[("balanced_accuracy", "logistic_regression")] == 0.75
    # the raw-signal baseline is not the model's result: table only, not model-index
    assert ("roc_auc", "raw") not in values and len(expected) == 2 * 3 + 1 + 2
    assert ModelCardData(**metadata).to_dict() == metadata
    # the Hub's pattern for dataset.type
    for entry in metadata["model-index"][0]["results"]:
        assert re.fullmatch(r"(?:[\w-]+/)?[\w.-]+", entry["dataset"]["type"])


def test_card_holds_no_identifier(model_dir, dataset_dir):
    card = build_model_card(
        model_dir, dataset_summary=dataset_dir, forbidden_strings=["JaneDoe", "RoeRichard"]
    )
    text = str(card)
    for subject in SUBJECTS:
        assert subject.lower() not in text.lower()
    assert find_identifiers(text) == []
    assert "0123abcd" not in text  # not even the keyed recording hash

    # a group label that is an identifier is refused, not written
    with pytest.raises(PrivacyError, match="e-mail address"):
        build_model_card(
            model_dir, dataset_summary={"subjects_per_group": {"jane.doe@clinic.example": 1}}
        )
    with pytest.raises(PrivacyError, match="forbidden string #1"):
        build_model_card(
            model_dir, dataset_summary={"name": "Cohort of Dr Roe"}, forbidden_strings=["dr roe"]
        )


def test_missing_metrics_sections_are_stated_as_not_evaluated(model_dir):
    metrics = {
        "reconstruction": METRICS["reconstruction"],
        "skipped": {"classification": "dataset has no labels"},
    }
    text = str(build_model_card(model_dir, metrics=metrics))
    assert "Not evaluated: dataset has no labels." in text
    attention = text.split("### Attention over the sensor array")[1].split("###")[0]
    assert attention.strip() == "Not evaluated."
    assert "| continuous | all | magnetometer | 0.410 |" in text
    types = {r.metric_type for r in ModelCard(text).data.eval_results}
    assert types == {"nmse", "pearson_r"}

    (model_dir / "metrics.json").unlink()
    card = build_model_card(model_dir)
    assert str(card).count("Not evaluated.") == 3
    assert "model-index" not in metadata_from(card)
    assert "No training-data summary" in str(card)


def metadata_from(card: ModelCard) -> dict:
    return card.data.to_dict()


def test_training_procedure_from_trainer_files(model_dir):
    (model_dir / "training_args.json").write_text(
        json.dumps(
            {
                "output_dir": "/home/janedoe/runs/megfm",
                "per_device_train_batch_size": 8,
                "gradient_accumulation_steps": 4,
                "learning_rate": 0.0003,
                "max_steps": 500,
                "bf16": True,
                "seed": 42,
                "lr_scheduler_type": "cosine",
            }
        )
    )
    (model_dir / "trainer_state.json").write_text(
        json.dumps(
            {
                "global_step": 480,
                "epoch": 3.0,
                "best_model_checkpoint": "/home/janedoe/runs/megfm/checkpoint-400",
                "log_history": [{"loss": 0.9, "step": 10}, {"loss": 0.4567, "step": 480}],
            }
        )
    )
    text = str(build_model_card(model_dir, forbidden_strings=["janedoe"]))
    for row in (
        "| optimizer steps | 480 |",
        "| batch size per device | 8 |",
        "| gradient accumulation steps | 4 |",
        "| learning rate | 0.0003 |",
        "| precision | bf16 mixed precision |",
        "| final training loss | 0.4567 |",
    ):
        assert row in text, row
    assert "/home/" not in text


def test_card_cli_writes_the_card(model_dir, tmp_path, capsys):
    metrics = tmp_path / "eval.json"
    metrics.write_text(json.dumps({"attention": METRICS["attention"]}))
    (model_dir / "metrics.json").unlink()
    parser = argparse.ArgumentParser()
    card_cli_module.configure_parser(parser)
    args = parser.parse_args(["--model", str(model_dir), "--metrics", str(metrics)])
    assert card_cli_module.run(args) == 0
    text = (model_dir / "README.md").read_text()
    assert "| auditory/left | 0.620 | 0.310 | [0.200, 0.400] | 0.01 |" in text
    args = parser.parse_args(["--model", str(model_dir), "--metrics", str(tmp_path / "none.json")])
    assert card_cli_module.run(args) == 1
    assert "none.json" in capsys.readouterr().err


def _reconstruction_evoked_only() -> dict:
    """Reconstruction metrics of held-out data without rest windows, as the evaluation writes."""
    return {
        "baselines": {},
        "evoked": {"auditory/left": {"magnetometer": {"nmse": 0.23, "pearson_r": 0.88}}},
        "evoked_baselines": {
            "zeros": {"auditory/left": {"magnetometer": {"nmse": 1.0}}},
            "interpolation": {"auditory/left": {"magnetometer": {"nmse": 0.37}}},
            "ridge": {"auditory/left": {"magnetometer": {"nmse": 0.31}}},
        },
    }


def test_card_renders_evoked_baselines(model_dir):
    metrics = {
        "reconstruction": _reconstruction_evoked_only(),
        "skipped": {"reconstruction_continuous": "no rest (fixed-length) windows"},
    }
    text = str(build_model_card(model_dir, metrics=metrics))
    header = "| data | condition | sensor type | NMSE | Pearson r | tokens | NMSE, zeros |"
    assert header + " NMSE, interpolation | NMSE, ridge |" in text
    assert (
        "| evoked | auditory/left | magnetometer | 0.230 | 0.880 | n/a | 1.000 | 0.370 | 0.310 |"
        in text
    )
    # the ridge baseline is described with the others
    assert "`ridge`, a ridge regression from the visible sensors" in text
    assert "`interpolation`, a Gaussian-kernel average" in text

    # with rest windows too: continuous rows read "baselines", evoked rows "evoked_baselines"
    metrics = copy.deepcopy(METRICS)
    metrics["reconstruction"]["evoked_baselines"] = {
        "zeros": {"auditory/left": {"magnetometer": {"nmse": 1.0}}},
        "interpolation": {"auditory/left": {"magnetometer": {"nmse": 0.37}}},
    }
    text = str(build_model_card(model_dir, metrics=metrics))
    assert "| continuous | all | magnetometer | 0.410 | 0.770 | 1234 | 1.000 | 0.800 |" in text
    assert "| evoked | auditory/left | magnetometer | 0.230 | 0.880 | n/a | 1.000 | 0.370 |" in text
    assert "`ridge`" not in text

    metrics["skipped"] = {"ridge_baseline": "no training subjects with the held-out sensor array"}
    text = str(build_model_card(model_dir, metrics=metrics))
    assert "No `ridge` baseline: no training subjects with the held-out sensor array." in text


def test_card_takes_the_classification_task_from_the_label_names(model_dir):
    metrics = copy.deepcopy(METRICS)
    metrics["classification"].update(label_names=["control", "migraine"], positive_label="migraine")
    card = build_model_card(model_dir, metrics=metrics)
    assert "patient" not in str(card).split("## Evaluation results")[1].lower()
    assert "Task: `migraine` versus `control` subjects" in card.content
    assert "take `migraine` as the positive class" in card.content
    tasks = {r.task_name for r in card.data.eval_results if r.task_type == "meg-classification"}
    assert tasks == {"migraine vs control classification from pretrained features"}

    # older metrics without label names: no group is named
    card = build_model_card(model_dir, metrics=METRICS)
    tasks = {r.task_name for r in card.data.eval_results if r.task_type == "meg-classification"}
    assert tasks == {"Two-class subject classification from pretrained features"}
    assert "Task:" not in card.content


def test_card_says_how_attention_regions_and_nulls_were_chosen(model_dir):
    metrics = copy.deepcopy(METRICS)
    strongest = "strongest evoked field at the peak patch (10 per type)"
    metrics["attention"]["auditory/left"].update(
        region_source=strongest, null="spin", p_value_holm=0.04
    )
    metrics["attention"]["visual/right"] = {
        **METRICS["attention"]["auditory/left"],
        "region_source": "given (--region)",
        "null": "spin",
        "p_value_holm": 0.02,
    }
    card = build_model_card(model_dir, metrics=metrics)
    attention = card.content.split("### Attention over the sensor array")[1].split("###")[0]
    assert "stimulus drives cortex" not in attention
    assert "| p-value | p-value (Holm) | null | expected region |" in attention
    assert (
        f"| auditory/left | 0.620 | 0.310 | [0.200, 0.400] | 0.01 | 0.04 | spin | {strongest}, "
        "read from the input windows, not from the model |"
    ) in attention
    assert "| 0.02 | spin | sensors given to the evaluation |" in attention
    names = {r.metric_config: r.metric_name for r in card.data.eval_results}
    assert (
        names["auditory/left"]
        == "attention alignment (auditory/left, p = 0.01, Holm-corrected p = 0.04)"
    )

    metrics["attention"]["auditory/left"]["region_source"] = "simulated ground truth (top_sensors)"
    attention = str(build_model_card(model_dir, metrics=metrics)).split("### Attention")[1]
    assert "the sensors where the simulated stimulus drives cortex |" in attention

    # older metrics: no Holm or null column, the region's origin is not invented
    attention = str(build_model_card(model_dir, metrics=METRICS)).split("### Attention")[1]
    assert "Holm" not in attention and "| null |" not in attention
    assert "| 0.01 | not recorded |" in attention


def test_card_counts_the_training_subjects_of_the_split(model_dir, dataset_dir):
    everyone = summarize_dataset(dataset_dir)
    assert everyone["subjects_per_group"] == {"control": 1, "patient": 2}
    assert everyone["n_windows"] == 9
    trained = summarize_dataset(dataset_dir, subjects=["sub-JaneDoe", "sub-c01"])
    assert trained["subjects_per_group"] == {"control": 1, "patient": 1}
    assert trained["n_windows"] == 6 and trained["n_recordings"] == 1
    # A card built from the dataset folder describes the training side of the model's split.
    (model_dir / "split.json").write_text(
        json.dumps({"train": ["sub-JaneDoe", "sub-c01"], "test": ["sub-RoeRichard"]})
    )
    card = build_model_card(model_dir, dataset_summary=dataset_dir)
    assert "| subjects per group | control: 1, patient: 1 |" in str(card)
    assert "| windows in total | 6 from 1 recording" in str(card)


def test_model_index_names_the_evaluation_dataset_only_when_known(model_dir, dataset_dir):
    def dataset_types(card: ModelCard) -> set[str]:
        return {r.dataset_type for r in card.data.eval_results}

    # trained on megfm/toy, evaluated on data the metrics do not identify
    card = build_model_card(model_dir, dataset_summary=dataset_dir, dataset_repo_id="megfm/toy")
    assert card.data.datasets == ["megfm/toy"]
    assert dataset_types(card) == {"local"}
    assert {r.dataset_name for r in card.data.eval_results} == {"MEG evaluation data"}

    card = build_model_card(
        model_dir, dataset_repo_id="megfm/toy", eval_dataset_repo_id="megfm/clinic-eval"
    )
    assert dataset_types(card) == {"megfm/clinic-eval"}

    # the metrics were computed on the very folder published as megfm/toy
    metrics = {**METRICS, "dataset": str(dataset_dir)}
    card = build_model_card(
        model_dir, metrics=metrics, dataset_summary=dataset_dir, dataset_repo_id="megfm/toy"
    )
    assert dataset_types(card) == {"megfm/toy"}
    assert {r.dataset_name for r in card.data.eval_results} == {"MEG windows"}
    with pytest.raises(ValueError, match="eval_dataset_repo_id='not a repo'"):
        build_model_card(model_dir, eval_dataset_repo_id="not a repo")


def test_card_says_which_subjects_were_evaluated(model_dir):
    classification = METRICS["classification"]
    held_out = {**classification, "n_subjects": 6, "folds": 3}
    metrics = {
        **METRICS,
        "test_subjects": ["01", "02"],
        "classification": {
            **classification,
            "subjects": "all labelled",
            "n_pretraining_subjects": 10,
        },
        "classification_held_out": held_out,
    }
    (model_dir / "split.json").write_text(json.dumps({"train": ["03", "04"], "test": ["01", "02"]}))
    card = build_model_card(model_dir, metrics=metrics)
    text = card.content
    assert "evaluated on 2 subjects, all held out of pretraining." in text
    assert (
        "All 16 labelled subjects were classified; 10 of them were in the pretraining data" in text
    )
    held_out_text = text.split("#### Subjects held out of pretraining")[1]
    assert "restricted to the 6 subjects" in held_out_text and "(3 folds)" in held_out_text
    assert "| pretrained features | logistic_regression | 0.810 [0.650, 0.950] |" in held_out_text
    configs = {
        r.dataset_config for r in card.data.eval_results if r.task_type == "meg-classification"
    }
    assert configs == {None, "held-out"}
    # the metadata round trip keeps the restricted results apart
    assert ModelCard(str(card)).data.eval_results == card.data.eval_results

    del metrics["classification_held_out"]
    text = str(build_model_card(model_dir, metrics=metrics))
    assert "No result restricted to the subjects held out of pretraining was computed" in text

    metrics["classification"] = {
        **classification,
        "subjects": "held-out",
        "n_pretraining_subjects": 0,
    }
    metrics["test_subjects"] = ["01", "03"]
    text = str(build_model_card(model_dir, metrics=metrics))
    assert "The 16 classified subjects were all held out of pretraining." in text
    assert "evaluated on 2 subjects; 1 of them were in the pretraining data" in text

    # the evaluation's own record of the pretrained subjects comes first
    metrics["test_subjects_in_pretraining"] = []
    assert "evaluated on 2 subjects, all held out" in str(
        build_model_card(model_dir, metrics=metrics)
    )
    metrics["test_subjects_in_pretraining"] = None
    assert "held out of pretraining is not recorded" in str(
        build_model_card(model_dir, metrics=metrics)
    )

    # older metrics: the card says what it does not know
    (model_dir / "split.json").unlink()
    text = str(build_model_card(model_dir, metrics={**METRICS, "test_subjects": ["01"]}))
    assert "whether they were held out of pretraining is not recorded" in text
    assert "Which subjects were classified, and whether they were held out" in text


def test_card_scores_subjects_in_and_out_of_pretraining_separately(model_dir):
    classification = METRICS["classification"]
    by_pretraining = {
        "pretraining": {
            "n_subjects": 10,
            "features": {"logistic_regression": 0.92},
            "raw": {"logistic_regression": 0.61},
        },
        "held_out": {
            "n_subjects": 6,
            "features": {"logistic_regression": 0.48},
            "raw": {"logistic_regression": 0.55},
        },
    }
    metrics = {
        **METRICS,
        "classification": {
            **classification,
            "subjects": "all labelled",
            "n_pretraining_subjects": 10,
            "roc_auc_by_pretraining": by_pretraining,
        },
        "classification_held_out": {**classification, "n_subjects": 6, "folds": 3},
    }
    text = build_model_card(model_dir, metrics=metrics).content
    section = text.split("### Classification")[1].split("#### Subjects held out of pretraining")[0]
    # after the tables of all labelled subjects, which it splits
    assert section.index("| classifier | difference in ROC AUC |") < section.index(
        "scored separately"
    )
    assert "not evidence that they generalise to new subjects" in section
    for row in (
        "| input | classifier | 10 subjects in pretraining | 6 subjects held out of pretraining |",
        "| pretrained features | logistic_regression | 0.920 | 0.480 |",
        "| raw-signal features | logistic_regression | 0.610 | 0.550 |",
    ):
        assert row in section, row
    assert "all of one class" not in section
    assert "\n\n\n" not in text.split("### Classification")[1]

    # a group of one class: the evaluation writes None (NaN), the card says why
    by_pretraining["held_out"]["features"]["logistic_regression"] = None
    by_pretraining["held_out"]["raw"]["logistic_regression"] = float("nan")
    text = str(build_model_card(model_dir, metrics=metrics))
    assert "| pretrained features | logistic_regression | 0.920 | n/a |" in text
    assert "| raw-signal features | logistic_regression | 0.610 | n/a |" in text
    assert "n/a: not defined, the group's subjects are all of one class." in text

    # absent (older metrics, or all classified subjects on one side) or empty: no table
    for value in (None, {}):
        metrics["classification"]["roc_auc_by_pretraining"] = value
        text = str(build_model_card(model_dir, metrics=metrics))
        assert "scored separately" not in text and "subjects in pretraining |" not in text
    del metrics["classification"]["roc_auc_by_pretraining"]
    text = str(build_model_card(model_dir, metrics=metrics))
    assert "scored separately" not in text and "subjects in pretraining |" not in text
    assert "| pretrained features | logistic_regression | 0.810 [0.650, 0.950] |" in text


# --------------------------------------------------------------------------- pushes


def test_push_model_and_dataset_to_fake_hub(model_dir, dataset_dir, fake_hub):
    api = HfApi(endpoint=fake_hub.endpoint, token="hf_test_token")
    # files that exist but must not travel: training state with local paths, notes
    (model_dir / "trainer_state.json").write_text(json.dumps({"global_step": 3}))
    (model_dir / "notes.txt").write_text("local notes")

    url = push_model(
        model_dir,
        "megfm/tiny",
        private=True,
        dataset_dir=dataset_dir,
        dataset_repo_id="megfm/toy-windows",
        forbidden_strings=["Jane Doe"],
        api=api,
    )

    assert fake_hub._server.server_address[0] == "127.0.0.1"
    assert [(c["repo_type"], c["repo_id"]) for c in fake_hub.commits] == [
        ("dataset", "megfm/toy-windows"),
        ("model", "megfm/tiny"),
    ]
    dataset_commit, model_commit = fake_hub.commits
    assert url == f"{fake_hub.endpoint}/megfm/tiny/commit/{model_commit['oid']}"
    assert fake_hub.repos[("model", "megfm/tiny")]["private"] is True

    expected_model = {
        "README.md": model_dir / "README.md",
        "config.json": model_dir / "config.json",
        "configuration_megfm.py": model_dir / "configuration_megfm.py",
        "modeling_megfm.py": model_dir / "modeling_megfm.py",
        "model.safetensors": model_dir / "model.safetensors",
        "preprocessor_config.json": model_dir / "preprocessor_config.json",
        "metrics.json": model_dir / "metrics.json",
        "figures/reconstruction.png": model_dir / "figures" / "reconstruction.png",
    }
    assert set(model_commit["files"]) == set(expected_model)
    for name, local in expected_model.items():
        if name != "metrics.json":  # a sanitised copy travels, equal here: nothing to remove
            assert model_commit["files"][name] == local.read_bytes(), name
    assert json.loads(model_commit["files"]["metrics.json"]) == METRICS

    expected_dataset = {
        "data/train-0123abcd.parquet": dataset_dir / "parquet" / "train-0123abcd.parquet",
        "README.md": dataset_dir / "README.md",
        "preprocessor_config.json": dataset_dir / "preprocessor_config.json",
        "megfm_dataset.json": dataset_dir / "megfm_dataset.json",
    }
    assert set(dataset_commit["files"]) == set(expected_dataset)
    for name, local in expected_dataset.items():
        assert dataset_commit["files"][name] == local.read_bytes(), name

    # the card was built for this push: it links the dataset and carries the metrics
    card = ModelCard(model_commit["files"]["README.md"].decode())
    assert card.data.datasets == ["megfm/toy-windows"]
    assert {r.metric_type for r in card.data.eval_results} >= {"nmse", "roc_auc", "alignment"}
    assert "| subjects per group | control: 1, patient: 2 |" in card.content
    assert any("model-index" in content for content in fake_hub.validated_yaml)

    # pushing again reuses the repositories (409 -> exist_ok) and commits again
    push_model(model_dir, "megfm/tiny", api=api)
    assert len(fake_hub.commits) == 3
    assert set(fake_hub.commits[-1]["files"]) == set(expected_model)


def test_push_cli_to_fake_hub(model_dir, fake_hub, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    push_cli_module.configure_parser(parser)
    forbidden = tmp_path / "forbidden.txt"
    forbidden.write_text("# identifiers of the cohort\nJane Doe\n")
    args = parser.parse_args(
        [
            "--model",
            str(model_dir),
            "--repo-id",
            "megfm/cli-model",
            "--token",
            "hf_test_token",
            "--forbidden-strings-file",
            str(forbidden),
        ]
    )
    assert push_cli_module.run(args) == 0
    assert "megfm/cli-model/commit/" in capsys.readouterr().out
    assert [c["repo_id"] for c in fake_hub.commits] == ["megfm/cli-model"]
    assert fake_hub.repos[("model", "megfm/cli-model")]["private"] is False

    # the same folder with the name in a figure's metadata is refused, and nothing is sent
    (model_dir / "figures" / "reconstruction.png").write_bytes(_png({"Author": "Jane Doe"}))
    n_requests = len(fake_hub.requests)
    assert push_cli_module.run(args) == 1
    err = capsys.readouterr().err
    assert "reconstruction.png" in err and "forbidden string #1" in err
    assert "Jane Doe" not in err  # the error names the finding without repeating it
    assert len(fake_hub.requests) == n_requests


SHARD = "model-00001-of-00002.safetensors"


def _write_weight_index(model_dir: Path, shards: list[str]) -> None:
    """Index the tensors of :data:`SHARD` as if spread over ``shards`` (a sharded folder)."""
    keys = [key for key in safetensors_header(model_dir / SHARD) if key != "__metadata__"]
    weight_map = {key: shards[i % len(shards)] for i, key in enumerate(keys)}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def test_gate_checks_every_weight_shard(model_dir):
    (model_dir / "model.safetensors").rename(model_dir / SHARD)
    _write_weight_index(model_dir, [SHARD])
    files = model_upload_files(model_dir, require_card=False)
    assert {"model.safetensors.index.json", SHARD} <= set(files)

    # files of other formats listed as shards: a NumPy array holding a pickle, an HDF5 file
    np.save(model_dir / "model-00002.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    (model_dir / "tf_model.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    _write_weight_index(model_dir, [SHARD, "model-00002.npy", "tf_model.h5"])
    for publish in (
        lambda: model_upload_files(model_dir, require_card=False),
        lambda: push_model(model_dir, "megfm/tiny", api=NoUpload()),
    ):
        with pytest.raises(
            PrivacyError, match=r"index\.json.*'model-00002\.npy' is not a \.safetensors"
        ) as error:
            publish()
        assert "'tf_model.h5' is not a .safetensors file" in str(error.value)

    # paths out of the folder
    (model_dir.parent / "outside.safetensors").write_bytes((model_dir / SHARD).read_bytes())
    for name, found in (
        ("../outside.safetensors", "'..'"),
        (str(model_dir.parent / "outside.safetensors"), "absolute path"),
    ):
        _write_weight_index(model_dir, [SHARD, name])
        with pytest.raises(PrivacyError, match=re.escape(found)):
            model_upload_files(model_dir, require_card=False)

    # a shard with the right name whose content is a pickle
    (model_dir / "model-00002-of-00002.safetensors").write_bytes(b"\x80\x04\x95" + b"\0" * 64)
    _write_weight_index(model_dir, [SHARD, "model-00002-of-00002.safetensors"])
    with pytest.raises(PrivacyError, match=r"model-00002-of-00002\.safetensors: not a safetensors"):
        push_model(model_dir, "megfm/tiny", api=NoUpload())


def test_push_uploads_sanitised_metrics(model_dir, fake_hub):
    metrics = {
        **METRICS,
        "model": str(model_dir),
        "dataset": "/data/clinic_x/mri_2024",
        "test_subjects": ["patient-0412", "HOSP-7731"],
        "per_subject": {"HOSP-7731": {"n_windows": 3}, "patient-0412": {"n_windows": 4}},
        "skipped": {"attention": "subject hosp-7731: no events in /home/jane/meg/run_01.fif"},
    }
    local = json.dumps(metrics, indent=1)
    (model_dir / "metrics.json").write_text(local)
    # the split names the pretraining subjects; "sample" is also a word of the remote code
    (model_dir / "split.json").write_text(
        json.dumps({"train": ["sample", "pt0099"], "test": ["patient-0412", "HOSP-7731"]})
    )
    push_model(model_dir, "megfm/tiny", api=HfApi(endpoint=fake_hub.endpoint, token="hf_t"))

    (commit,) = fake_hub.commits
    published = json.loads(commit["files"]["metrics.json"])
    assert published["model"] == "model" and published["dataset"] == "mri_2024"
    assert published["test_subjects"] == ["subject-1", "subject-2"]
    assert published["per_subject"] == {
        "subject-2": {"n_windows": 3},
        "subject-1": {"n_windows": 4},
    }
    assert published["skipped"]["attention"] == "subject subject-2: no events in run_01.fif"
    assert published["reconstruction"] == METRICS["reconstruction"]
    for name, content in commit["files"].items():
        for secret in ("patient-0412", "hosp-7731", "/home/jane", "clinic_x", "pt0099"):
            assert secret not in content.decode("latin-1").lower(), (name, secret)
    assert (model_dir / "metrics.json").read_text() == local  # the local file is untouched

    # the sanitised copy is what the gate checks: a forbidden string still refuses it
    with pytest.raises(PrivacyError, match=r"metrics\.json.*forbidden string #1"):
        push_model(model_dir, "megfm/tiny", forbidden_strings=["mri_2024"], api=NoUpload())


def test_sanitize_metrics_labels_codes_consistently():
    metrics = {
        "test_subjects": ["sub-01", "pt7"],
        "test_subjects_in_pretraining": ["pt7"],
        "classification": {"subjects": "held-out", "n_subjects": 2, "subject_labels": [0, 1]},
        "notes": ["sub-01 and PT7 at C:\\Users\\jane\\meg\\x.fif", "p = 0.01", "auditory/left"],
    }
    sanitized = sanitize_metrics(metrics, subject_codes=["02"])
    assert sanitized["test_subjects"] == ["subject-1", "subject-2"]
    assert sanitized["test_subjects_in_pretraining"] == ["subject-2"]
    assert sanitized["classification"] == metrics["classification"]
    assert sanitized["notes"] == ["subject-1 and subject-2 at x.fif", "p = 0.01", "auditory/left"]
    assert metrics["test_subjects"] == ["sub-01", "pt7"]  # the input is left as it is
    assert subject_code_forms("01") == ("sub-01",)
    assert subject_code_forms("sub-pt0412") == ("sub-pt0412", "pt0412")


def test_gate_refuses_subject_codes_of_the_data(model_dir, dataset_dir):
    # no forbidden strings given: the dataset's subject column names the codes
    (model_dir / "figures" / "topomap_c01.png").write_bytes(_png())
    with pytest.raises(PrivacyError, match=r"topomap_c01\.png.*subject code of the data") as error:
        push_model(
            model_dir,
            "megfm/tiny",
            dataset_dir=dataset_dir,
            dataset_repo_id="megfm/d",
            api=NoUpload(),
        )
    assert "c01" not in str(error.value).replace("topomap_c01", "")
    (model_dir / "figures" / "topomap_c01.png").unlink()

    # the evaluated dataset recorded in metrics.json is read when no dataset is pushed
    (model_dir / "metrics.json").write_text(json.dumps({**METRICS, "dataset": str(dataset_dir)}))
    (model_dir / "README.md").write_text("Evaluated on RoeRichard; p = 0.01.\n")
    with pytest.raises(PrivacyError, match=r"README\.md \(line 1\): subject code of the data"):
        push_model(model_dir, "megfm/tiny", api=NoUpload())

    # split.json: a code of digits alone is refused in its BIDS spelling, not inside numbers
    (model_dir / "metrics.json").write_text(json.dumps(METRICS))
    (model_dir / "split.json").write_text(json.dumps({"train": ["01"], "test": ["02"]}))
    (model_dir / "README.md").write_text("Figures of sub-02.\n")
    with pytest.raises(PrivacyError, match=r"README\.md.*subject code of the data \(s\*"):
        push_model(model_dir, "megfm/tiny", api=NoUpload())


# --------------------------------------------------------------------------- refusals


def test_gate_refuses_pickle_files(model_dir):
    (model_dir / "training_args.bin").write_bytes(b"\x80\x04\x95\x00.")
    with pytest.raises(PrivacyError, match=r"training_args\.bin"):
        push_model(model_dir, "megfm/tiny", api=NoUpload())
    (model_dir / "training_args.bin").unlink()

    # a pickle under an innocent name is refused by its content
    import pickle

    (model_dir / "figures" / "attention.png").write_bytes(pickle.dumps({"weights": [1, 2]}))
    with pytest.raises(PrivacyError, match=r"attention\.png.*pickle data"):
        push_model(model_dir, "megfm/tiny", api=NoUpload())
    (model_dir / "figures" / "attention.png").unlink()

    # weights that are not safetensors (a renamed torch.save file)
    (model_dir / "model.safetensors").write_bytes(b"\x80\x02}q\x00." + b"\x00" * 64)
    with pytest.raises(PrivacyError, match=r"model\.safetensors.*not a safetensors file"):
        push_model(model_dir, "megfm/tiny", api=NoUpload())


@pytest.mark.parametrize(
    ("file", "content", "found"),
    [
        ("metrics.json", '{"note": "recorded at Clinic X for Jane Doe"}', "forbidden string #1"),
        ("preprocessor_config.json", '{"sfreq": 250.0, "his_id": "P-88213"}', "'his_id'"),
        ("metrics.json", '{"meas_date": "2021-03-04T10:11:12"}', "'meas_date'"),
        (
            "README.md",
            "---\nlicense: mit\n---\nContact: jane.doe@clinic.example\n",
            "e-mail address",
        ),
        ("README.md", "Patient born 12.05.1979, migraine.\n", "date of birth"),
        ("metrics.json", '{"subject_info": {"first_name": "X"}}', "'subject_info'"),
    ],
)
def test_gate_refuses_identifiers(model_dir, file, content, found):
    (model_dir / file).write_text(content)
    with pytest.raises(PrivacyError, match=found) as error:
        push_model(model_dir, "megfm/tiny", api=NoUpload(), forbidden_strings=["jane doe"])
    assert file in str(error.value)


def test_gate_refuses_identifiers_in_file_names(model_dir):
    (model_dir / "figures" / "topomap_JaneDoe.png").write_bytes(_png())
    with pytest.raises(PrivacyError, match=r"topomap_JaneDoe\.png \(name in the repository\)"):
        push_model(model_dir, "megfm/tiny", api=NoUpload(), forbidden_strings=["janedoe"])


def test_gate_refuses_unknown_dataset_columns_and_identifiers_in_shards(model_dir, dataset_dir):
    shard = dataset_dir / "parquet" / "train-0123abcd.parquet"
    _write_shard(shard, SUBJECTS, extra_column="patient_name")
    with pytest.raises(
        PrivacyError, match=r"train-0123abcd\.parquet.*unknown columns \['patient_name'\]"
    ):
        push_model(
            model_dir,
            "megfm/tiny",
            dataset_dir=dataset_dir,
            dataset_repo_id="megfm/d",
            api=NoUpload(),
        )
    _write_shard(shard, SUBJECTS)
    with pytest.raises(PrivacyError, match=r"column 'subject'.*forbidden string #1"):
        push_model(
            model_dir,
            "megfm/tiny",
            dataset_dir=dataset_dir,
            dataset_repo_id="megfm/d",
            forbidden_strings=["janedoe"],
            api=NoUpload(),
        )


def test_gate_refuses_incomplete_folders(model_dir, tmp_path):
    empty = tmp_path / "empty-dataset"
    empty.mkdir()
    with pytest.raises(ModelFolderError, match=r"missing: parquet/\*\.parquet"):
        push_model(
            model_dir, "megfm/tiny", dataset_dir=empty, dataset_repo_id="megfm/d", api=NoUpload()
        )

    (model_dir / "model.safetensors").unlink()
    with pytest.raises(ModelFolderError, match=r"missing: model\.safetensors"):
        push_model(model_dir, "megfm/tiny", api=NoUpload())
    (model_dir / "config.json").unlink()
    (model_dir / "modeling_megfm.py").unlink()
    with pytest.raises(ModelFolderError, match=r"missing: config\.json, model\.safetensors"):
        push_model(model_dir, "megfm/tiny", api=NoUpload())


def test_push_validates_arguments(model_dir):
    with pytest.raises(ValueError, match="repo_id='not a repo'"):
        push_model(model_dir, "not a repo", api=NoUpload())
    with pytest.raises(ValueError, match="give both"):
        push_model(model_dir, "megfm/tiny", dataset_dir=model_dir, api=NoUpload())
    with pytest.raises(ValueError, match=r"forbidden_strings\[0\]"):
        push_model(model_dir, "megfm/tiny", forbidden_strings=[" "], api=NoUpload())
