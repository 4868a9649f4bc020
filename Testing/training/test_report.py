"""Report files: the table, the comparison and the figures, with the thresholds actually used."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from sklearn import metrics as skm

from Training import metrics as tm
from Training import report


def test_report_files_hold_the_table_the_comparison_and_the_figures(tmp_path, fixed_predictions):
    y, p = fixed_predictions
    rng = np.random.default_rng(5)
    baseline = np.clip(p + rng.normal(0, 0.2, size=p.size), 0, 1)
    config = tm.EvalConfig(n_bootstrap=100)
    results = {"student": tm.evaluate_model(y, p, 0.45, config),
               "baseline": tm.evaluate_model(y, baseline, 0.5, config)}
    thresholds = {"student": {"default": 0.5, "optimal": 0.45},
                  "baseline": {"default": 0.5, "optimal": 0.5}}
    roc = report.plot_roc({"student": (y, p), "baseline": (y, baseline)}, tmp_path / "roc.png")
    history = [{"epoch": 1, "train_loss": 1.0, "val_auc": 0.6}, {"epoch": 2, "train_loss": 0.7, "val_auc": 0.7}]
    curves = report.plot_training_curves(history, tmp_path / "curves.png")
    path = report.write_report(tmp_path, results, thresholds,
                               [tm.compare_paired(y, p, baseline, config)], [roc.name, curves.name])
    assert roc.read_bytes()[:4] == b"\x89PNG" and curves.stat().st_size > 1000
    text = path.read_text()
    assert "student vs baseline" in text and "optimal (0.45)" in text
    stored = json.loads((tmp_path / "metrics.json").read_text())
    assert stored["models"]["student"]["default"]["auc"]["value"] == pytest.approx(skm.roc_auc_score(y, p))
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert len(rows) == 2 * 2 * len(tm.ALL_METRICS)
    f1_row = next(r for r in rows if r["model"] == "baseline" and r["threshold"] == "default"
                  and r["metric"] == "f1")
    assert float(f1_row["value"]) == pytest.approx(skm.f1_score(y, baseline >= 0.5), abs=1e-6)
    preds = report.write_predictions(tmp_path / "predictions_student.csv",
                                     [report.CasePrediction(f"c{i}", f"s{i}", int(t), float(q))
                                      for i, (t, q) in enumerate(zip(y, p))], {"default": 0.5})
    rows = list(csv.DictReader(preds.open()))
    assert sum(int(r["pred_default"]) for r in rows) == int((p >= 0.5).sum())


@pytest.mark.parametrize("default, expected", [(0.5, "`default` uses θ = 0.5,"),
                                               (0.35, "`default` uses θ = 0.35,")])
def test_the_report_states_the_threshold_actually_used(tmp_path, fixed_predictions, default, expected):
    y, p = fixed_predictions
    config = tm.EvalConfig(n_bootstrap=20, default_threshold=default)
    results = {"student": tm.evaluate_model(y, p, 0.42, config)}
    path = report.write_report(tmp_path, results, {"student": {"default": default, "optimal": 0.42}})
    text = path.read_text()
    assert path.name == report.REPORT_NAME == "report.md"
    assert expected in text and "optimal (0.42)" in text and f"default ({default:.2f})" in text
    if default != 0.5:
        assert "0.5" not in text.split("```")[0]  # no hard-coded θ left in the prose
    # The table's default row really is scored at that θ.
    f1 = json.loads((tmp_path / "metrics.json").read_text())["models"]["student"]["default"]["f1"]
    assert f1["value"] == pytest.approx(skm.f1_score(y, p >= default))


def test_the_report_says_whether_subjects_or_cases_were_resampled(tmp_path, fixed_predictions):
    y, p = fixed_predictions
    baseline = np.clip(p + np.random.default_rng(5).normal(0, 0.2, size=p.size), 0, 1)
    subjects = [f"s{i // 3}" for i in range(y.size)]  # 20 subjects, 3 sessions each
    config = tm.EvalConfig(n_bootstrap=50)
    results = {"student": tm.evaluate_model(y, p, 0.45, config, groups=subjects)}
    comparison = tm.compare_paired(y, p, baseline, config, groups=subjects)
    path = report.write_report(tmp_path, results, {"student": {"default": 0.5, "optimal": 0.45}},
                               [comparison], resampling=tm.resampling_info(subjects, y.size))
    text = path.read_text()
    assert "95 % CIs resample subjects (n = 20 subjects, 60 cases)" in text
    assert "60 identical test cases of 20 subjects" in text and "Obuchowski" in text
    assert "paired subject bootstrap" in text
    stored = json.loads((tmp_path / "metrics.json").read_text())
    assert stored["resampling"] == {"resampling": "subjects", "n_subjects": 20, "n_cases": 60}
    assert stored["comparisons"][0]["resampling"] == "subjects"
    case_level = report.format_comparison(tm.compare_paired(y, p, baseline, config))
    assert "paired case bootstrap" in case_level and "Obuchowski" not in case_level
    assert report.resampling_sentence(tm.resampling_info(None, 60)).startswith(
        "95 % CIs resample cases (n = 60 cases)")
