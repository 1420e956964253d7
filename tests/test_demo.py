"""`megfm demo` end to end at a reduced size: every stage runs and leaves its outputs."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import ModelCard

from megfm_hf.cli import main
from megfm_hf.demo import DemoSettings, format_summary, run_demo


@pytest.mark.slow
def test_demo_runs_every_stage(tmp_path):
    settings = DemoSettings(subjects=4, duration=12.0, steps=12, helmet_positions=20, max_windows=3)
    summary = run_demo(tmp_path, settings)

    assert set(summary["seconds"]) == {
        "simulate",
        "build dataset",
        "pretrain",
        "evaluate",
        "fine-tune",
        "model card",
    }
    model = tmp_path / "pretraining" / "model"
    for name in (
        "config.json",
        "model.safetensors",
        "modeling_megfm.py",
        "preprocessor_config.json",
    ):
        assert (model / name).is_file(), name
    card = ModelCard.load(model / "README.md")
    assert card.data.eval_results, "the card carries the evaluation as model-index metadata"
    assert any(result.metric_type == "nmse" for result in card.data.eval_results)
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert {"reconstruction", "attention", "classification"} <= set(metrics)
    assert (tmp_path / "report" / "report.md").read_text().startswith("#")
    predictions = (tmp_path / "finetuning" / "subject_predictions.tsv").read_text().splitlines()
    assert len(predictions) == 1 + summary["fine_tuning"]["n_subjects"]
    assert json.loads((tmp_path / "summary.json").read_text())["claims"] == summary["claims"]
    table = format_summary(summary)
    assert "1 evoked NMSE auditory/left magnetometer" in table
    assert "2 attention alignment somatosensory/right" in table


def test_demo_command_line_rejects_a_missing_output():
    with pytest.raises(SystemExit):
        main(["demo"])
