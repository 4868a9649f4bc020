"""Cross-validation pooling: the pure pooling functions against hand-computed values, and
``cross_validate``'s wiring with training and evaluation replaced by fakes (no model is trained)."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn import metrics as skm

from AmyloidKDLib.errors import InputError
from Training import metrics as tm
from Training.pooling import (FoldPredictions, pool_fold_predictions, pooled_evaluation,
                              shift_to_threshold, write_pooled_predictions)
from Training.splits import LeakageError, SplitConfig, cross_validation_splits

# Two folds, hand-made. Student thresholds: 0.2 in fold 0, 0.7 in fold 1.
FOLD0 = FoldPredictions(
    fold=0, case_ids=["c1", "c2", "c3"], subjects=["A", "A", "B"], labels=[1, 1, 0],
    probabilities={"student": [0.3, 0.1, 0.25], "baseline": [0.6, 0.2, 0.5]},
    thresholds={"student": 0.2, "baseline": 0.5}, centiloids=[40.0, 42.0, 3.0])
FOLD1 = FoldPredictions(
    fold=1, case_ids=["c4", "c5", "c6", "c7"], subjects=["C", "D", "D", "E"], labels=[1, 0, 0, 1],
    probabilities={"student": [0.6, 0.1, 0.75, 0.9], "baseline": [0.4, 0.3, 0.35, 0.7]},
    thresholds={"student": 0.7, "baseline": 0.4})


def test_the_shift_keeps_each_folds_threshold():
    # 0.3 with θ 0.2 is positive (0.55); 0.6 with θ 0.7 is negative (0.45); p == θ is positive.
    shifted = shift_to_threshold([0.3, 0.6, 0.4, 1.0, 0.0], [0.2, 0.7, 0.4, 0.1, 0.9])
    assert shifted == pytest.approx([0.55, 0.45, 0.5, 0.95, 0.05], abs=1e-15)
    assert list(shifted >= 0.5) == [True, False, True, True, False]
    # Just below θ stays negative although 0.5 + (p - θ) / 2 rounds to 0.5 in floating point.
    p = np.nextafter(0.5, 0.0)
    assert 0.5 + (p - 0.5) / 2 == 0.5
    assert shift_to_threshold([p], [0.5])[0] < 0.5


def test_pooling_concatenates_the_folds_with_each_cases_own_threshold():
    pooled = pool_fold_predictions([FOLD0, FOLD1])
    assert list(pooled["case_ids"]) == ["c1", "c2", "c3", "c4", "c5", "c6", "c7"]
    assert list(pooled["subjects"]) == ["A", "A", "B", "C", "D", "D", "E"]
    assert list(pooled["labels"]) == [1, 1, 0, 1, 0, 0, 1]
    assert list(pooled["folds"]) == [0, 0, 0, 1, 1, 1, 1]
    assert list(pooled["thresholds"]["student"]) == [0.2] * 3 + [0.7] * 4
    assert list(pooled["thresholds"]["baseline"]) == [0.5] * 3 + [0.4] * 4
    assert list(pooled["probabilities"]["student"]) == [0.3, 0.1, 0.25, 0.6, 0.1, 0.75, 0.9]
    assert list(pooled["centiloids"][:3]) == [40.0, 42.0, 3.0] and np.isnan(pooled["centiloids"][3:]).all()


def test_pooled_metrics_by_hand():
    result = pooled_evaluation(pool_fold_predictions([FOLD0, FOLD1]), tm.EvalConfig(n_bootstrap=50),
                               {"student": "S", "baseline": "B"})
    student = result["models"]["S"]
    # optimal row, each case at its fold's θ: c1 0.3>=0.2 TP, c2 0.1<0.2 FN, c3 0.25>=0.2 FP,
    # c4 0.6<0.7 FN, c5 TN, c6 0.75>=0.7 FP, c7 TP -> TP 2, FN 2, FP 2, TN 1.
    expected_optimal = {"accuracy": 3 / 7, "precision": 2 / 4, "recall": 2 / 4, "f1": 4 / 8,
                        "specificity": 1 / 3, "npv": 1 / 3}
    # default row at 0.5: c4, c6, c7 positive -> TP 2 (c4, c7), FN 2, FP 1 (c6), TN 2.
    expected_default = {"accuracy": 4 / 7, "precision": 2 / 3, "recall": 2 / 4, "f1": 4 / 7,
                        "specificity": 2 / 3, "npv": 2 / 4}
    for metric in tm.THRESHOLD_METRICS:
        assert student["optimal"][metric]["value"] == pytest.approx(expected_optimal[metric]), metric
        assert student["default"][metric]["value"] == pytest.approx(expected_default[metric]), metric
    # AUC: positives 0.3, 0.1, 0.6, 0.9 against negatives 0.25, 0.1, 0.75:
    # 2 + 0.5 (tie at 0.1) + 2 + 3 = 7.5 of 12 pairs.
    assert student["default"]["auc"]["value"] == pytest.approx(7.5 / 12)
    assert student["optimal"]["auc"] == student["default"]["auc"]
    assert result["thresholds"]["S"] == {"default": 0.5, "optimal": pytest.approx((3 * 0.2 + 4 * 0.7) / 7)}
    # CIs resample the 5 subjects; the comparison (3 positive, 2 negative subjects) is clustered.
    assert result["resampling"] == {"resampling": "subjects", "n_subjects": 5, "n_cases": 7}
    (comparison,) = result["comparisons"]
    assert (comparison["model_a"], comparison["model_b"], comparison["resampling"]) == ("S", "B", "subjects")
    pooled = pool_fold_predictions([FOLD0, FOLD1])
    assert comparison["delong"] == tm.clustered_auc_test(
        pooled["labels"], pooled["probabilities"]["student"], pooled["probabilities"]["baseline"],
        pooled["subjects"])


def test_pooled_case_level_evaluation_matches_the_metrics_module(fixed_predictions):
    y, p = fixed_predictions
    fold = FoldPredictions(0, [f"c{i}" for i in range(y.size)], [f"s{i}" for i in range(y.size)], y,
                           {"student": p}, {"student": 0.5})
    config = tm.EvalConfig(n_bootstrap=100, seed=2)
    result = pooled_evaluation(pool_fold_predictions([fold]), config, by_subject=False)
    assert result["models"]["student"]["default"] == tm.evaluate_predictions(y, p, 0.5, config)
    assert result["resampling"]["resampling"] == "cases" and result["comparisons"] == []


def test_every_case_once_and_no_subject_in_two_folds():
    half = {"student": 0.5, "baseline": 0.5}
    with pytest.raises(InputError, match="tested in two folds"):
        pool_fold_predictions([FOLD0, FoldPredictions(1, ["c1"], ["Z"], [1], {k: [0.5] for k in half}, half)])
    with pytest.raises(LeakageError, match="subject 'A' is tested in folds 0 and 1"):
        pool_fold_predictions([FOLD0, FoldPredictions(1, ["c9"], ["A"], [1], {k: [0.5] for k in half}, half)])
    with pytest.raises(InputError, match="differ in length"):
        pool_fold_predictions([FoldPredictions(0, ["c1", "c2"], ["A", "B"], [1], {"student": [0.5, 0.4]},
                                               {"student": 0.5})])
    with pytest.raises(InputError, match="no fold"):
        pool_fold_predictions([])


def test_real_cross_validation_splits_pool_every_case_exactly_once():
    rng = np.random.default_rng(0)
    sessions = rng.integers(1, 4, size=40)
    subjects = np.repeat([f"sub{i:02d}" for i in range(40)], sessions)
    labels = np.repeat((rng.random(40) < 0.4).astype(int), sessions)
    case_ids = [f"case{i:03d}" for i in range(subjects.size)]
    folds = []
    for split in cross_validation_splits(list(subjects), labels, SplitConfig(n_folds=5)):
        test = list(split.test)
        folds.append(FoldPredictions(split.fold, [case_ids[i] for i in test], subjects[test], labels[test],
                                     {"student": rng.random(len(test))}, {"student": 0.5}))
    pooled = pool_fold_predictions(folds)
    assert sorted(pooled["case_ids"]) == case_ids
    for subject in set(subjects):
        assert len(set(pooled["folds"][pooled["subjects"] == subject].tolist())) == 1


def test_pooled_predictions_csv(tmp_path):
    pooled = pool_fold_predictions([FOLD0, FOLD1])
    rows = list(csv.DictReader(write_pooled_predictions(tmp_path / "pooled.csv", pooled).open()))
    assert [r["case_id"] for r in rows] == list(pooled["case_ids"])
    assert [int(r["pred_student"]) for r in rows] == [1, 0, 1, 0, 0, 1, 1]
    assert float(rows[3]["threshold_student"]) == 0.7 and float(rows[6]["probability_baseline"]) == 0.7
    assert rows[0]["subject_id"] == "A" and rows[0]["fold"] == "0" and float(rows[0]["centiloid"]) == 40.0


def test_cross_validate_pools_the_folds_and_writes_the_pooled_arrays(tmp_path, monkeypatch):
    """cross_validate's wiring with fakes for the cohort, the training and the per-fold evaluation."""
    from Training.commands import cv
    from Training.config import RunConfig

    rng = np.random.default_rng(1)
    sessions = rng.integers(1, 4, size=30)
    subjects = list(np.repeat([f"sub{i:02d}" for i in range(30)], sessions))
    labels = np.repeat((rng.random(30) < 0.4).astype(int), sessions)
    score = {p: labels * 0.3 + rng.random(labels.size) * 0.7 for p in ("student", "baseline")}
    info = [SimpleNamespace(case_id=f"case{i:03d}", subject_id=s, centiloid=float(i))
            for i, s in enumerate(subjects)]
    dataset = SimpleNamespace(subjects=subjects, labels=labels, info=info)
    thresholds = {"student": 0.45, "baseline": 0.55}

    def fake_run_phases(config, dataset, split, fold_dir, phases):
        return {p: SimpleNamespace(model=None, threshold=thresholds[p] + 0.01 * split.fold) for p in phases}

    def fake_evaluate_run(config, dataset, split, fold_dir, models):
        test = list(split.test)
        return fold_dir, {"labels": labels[test].tolist(),
                          "probabilities": {p: score[p][test].tolist() for p in models},
                          "models": {cv.MODEL_NAMES[p]: {"default": {"auc": {"value": 0.5}}} for p in models}}

    monkeypatch.setattr(cv, "load_records", lambda source, config: [])
    monkeypatch.setattr(cv, "build_dataset", lambda config, records, out: dataset)
    monkeypatch.setattr(cv, "run_phases", fake_run_phases)
    monkeypatch.setattr(cv, "evaluate_run", fake_evaluate_run)
    config = RunConfig()
    config.split.n_folds = 3
    config.evaluation.n_bootstrap = 50
    summary = cv.cross_validate(config, cv.CohortSource(manifest="unused.csv"), tmp_path,
                                ("student", "baseline"))
    pooled = summary["pooled"]
    assert sorted(pooled["case_ids"]) == [c.case_id for c in info]
    order = [int(c[4:]) for c in pooled["case_ids"]]
    assert list(pooled["labels"]) == labels[order].tolist()
    assert list(pooled["subjects"]) == [subjects[i] for i in order]
    assert list(pooled["centiloids"]) == [float(i) for i in order]
    assert np.array_equal(pooled["probabilities"]["student"], score["student"][order])
    assert set(pooled["thresholds"]["student"].round(6)) == {0.45, 0.46, 0.47}
    name = cv.MODEL_NAMES["student"]
    assert summary["models"][name]["default"]["auc"]["value"] == pytest.approx(
        skm.roc_auc_score(labels, score["student"]))
    assert summary["resampling"] == {"resampling": "subjects", "n_subjects": 30, "n_cases": labels.size}
    assert summary["comparisons"][0]["resampling"] == "subjects"
    rows = list(csv.DictReader((tmp_path / "pooled_predictions.csv").open()))
    assert [r["case_id"] for r in rows] == list(pooled["case_ids"])
    assert "95 % CIs resample subjects (n = 30 subjects" in summary["report"].read_text()
    assert json.loads((tmp_path / "metrics.json").read_text())["resampling"]["resampling"] == "subjects"


def test_with_one_positive_subject_the_comparison_falls_back_to_cases_and_says_so():
    fold = FoldPredictions(0, ["c1", "c2", "c3", "c4", "c5"], ["A", "A", "B", "C", "D"], [1, 1, 0, 0, 0],
                           {"student": [0.9, 0.4, 0.5, 0.2, 0.1], "baseline": [0.6, 0.5, 0.7, 0.3, 0.2]},
                           {"student": 0.5, "baseline": 0.5})
    result = pooled_evaluation(pool_fold_predictions([fold]), tm.EvalConfig(n_bootstrap=20))
    assert result["resampling"]["resampling"] == "subjects"  # the table's CIs still resample subjects
    (comparison,) = result["comparisons"]
    assert comparison["resampling"] == "cases"  # Obuchowski needs >= 2 positive subjects
    assert comparison["delong"] == tm.delong_test([1, 1, 0, 0, 0], [0.9, 0.4, 0.5, 0.2, 0.1],
                                                  [0.6, 0.5, 0.7, 0.3, 0.2])
