"""The replication benchmark's statistics and report (Training/benchmark.py), the demo's
reading and held-out picks, and one quick ``amyloidkd benchmark`` run end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from Training.benchmark import (DEVELOPMENT_SEEDS, is_development_seed, markdown_report,
                                pool_cohorts, pool_differences, reading, summarize_cohort)
from Training.commands.demo import held_out_cases
from Training.commands.demo import reading as demo_reading
from Training.metrics import EvalConfig


def test_pooled_difference_is_the_inverse_variance_mean_computed_by_hand():
    result = pool_differences([0.1, 0.0, -0.05], [0.05, 0.1, 0.05])
    # weights 400, 100, 400
    assert result["pooled"] == pytest.approx((40 + 0 - 20) / 900)
    assert result["se"] == pytest.approx(math.sqrt(1 / 900))
    assert result["ci_low"] == pytest.approx(20 / 900 - 1.959964 / 30, abs=1e-6)
    q = 400 * (0.1 - 20 / 900) ** 2 + 100 * (20 / 900) ** 2 + 400 * (-0.05 - 20 / 900) ** 2
    assert result["q"] == pytest.approx(q)
    assert result["i2"] == pytest.approx((q - 2) / q)
    assert result["n_positive"] == 1 and result["n_cohorts"] == 3
    assert result["mean"] == pytest.approx(0.05 / 3)


def test_a_cohort_without_a_standard_error_gets_no_weight():
    result = pool_differences([0.2, 0.0], [0.0, 0.1])
    assert result["pooled"] == pytest.approx(0.0)
    assert result["n_positive"] == 1
    assert math.isnan(pool_differences([0.1], [float("nan")])["pooled"])


def test_phase_seconds_add_fitting_and_feature_encoding_over_folds(tmp_path):
    from Training.commands.benchmark import _phase_seconds

    for fold, (fit, encode) in enumerate(((10.0, 4.0), (12.0, 0.5))):
        (tmp_path / f"fold{fold}" / "student").mkdir(parents=True)
        (tmp_path / f"fold{fold}" / "student" / "history.json").write_text(json.dumps(
            {"seconds": fit, "features": {"encode_seconds": encode, "source": "disk"}}))
    (tmp_path / "fold0" / "baseline").mkdir()
    (tmp_path / "fold0" / "baseline" / "history.json").write_text(json.dumps({"seconds": 3.0,
                                                                              "features": {}}))
    assert _phase_seconds(tmp_path) == {"student": pytest.approx(26.5), "baseline": pytest.approx(3.0)}


def test_development_seed_range():
    assert is_development_seed(DEVELOPMENT_SEEDS.start) and is_development_seed(1999)
    assert not is_development_seed(2000) and not is_development_seed(999)


def _pooled(seed: int, n_subjects: int = 60, effect: float = 1.0) -> dict:
    rng = np.random.default_rng(seed)
    subjects, labels = [], []
    for s in range(n_subjects):
        label = int(rng.random() < 0.4)
        for _ in range(int(rng.integers(1, 3))):
            subjects.append(f"S{s}")
            labels.append(label)
    y = np.asarray(labels)
    good = y * effect + rng.normal(size=y.size)
    weak = y * effect * 0.3 + rng.normal(size=y.size)
    return {"labels": y, "subjects": subjects,
            "probabilities": {"teacher": 1 / (1 + np.exp(-3 * good)), "student": good,
                              "baseline": weak, "light": good + 0.1 * rng.normal(size=y.size)}}


def test_cohort_summary_matches_scikit_learn_and_its_cis_resample_subjects():
    pooled = _pooled(1)
    summary = summarize_cohort(pooled, EvalConfig(n_bootstrap=300))
    y = pooled["labels"]
    for phase, probs in pooled["probabilities"].items():
        row = summary["models"][phase]
        assert row["auc"] == pytest.approx(roc_auc_score(y, probs))
        assert row["ci_low"] < row["auc"] < row["ci_high"]
    comparison = summary["comparisons"]["student - baseline"]
    expected = (roc_auc_score(y, pooled["probabilities"]["student"])
                - roc_auc_score(y, pooled["probabilities"]["baseline"]))
    assert comparison["difference"] == pytest.approx(expected)
    assert comparison["ci_low"] < comparison["difference"] < comparison["ci_high"]
    assert comparison["se"] > 0 and 0 <= comparison["p_value"] <= 1
    assert summary["n_subjects"] == 60 and summary["n_cases"] == len(pooled["subjects"])


def _result(differences: list[float], kind: str = "confirmation") -> dict:
    cohorts = []
    for seed, d in enumerate(differences, start=5000):
        cohorts.append({"seed": seed, "seconds": 60.0, "ceilings": {"oracle_auc": 0.8, "probe_auc": 0.7},
                        "summary": {"n_cases": 10, "n_subjects": 8, "n_positive_cases": 4,
                                    "models": {"student": {"auc": 0.7, "ci_low": 0.6, "ci_high": 0.8},
                                               "baseline": {"auc": 0.7 - d, "ci_low": 0.5, "ci_high": 0.8}},
                                    "comparisons": {"student - baseline": {
                                        "difference": d, "ci_low": d - 0.05, "ci_high": d + 0.05,
                                        "se": 0.025, "p_value": 0.5}}}})
    result = {"kind": kind, "protocol": {"path": "p.yaml", "sha256": "0" * 64, "overrides": []},
              "generator_version": 2, "subjects": 8, "folds": 5, "mri_effect_scale": 1.0,
              "cohorts": cohorts}
    result["pooled"] = pool_cohorts(cohorts)
    return result


@pytest.mark.parametrize("differences, phrase", [
    ([0.1, 0.12, 0.09], "ranks cases better"),
    ([-0.1, -0.12, -0.09], "ranks cases worse"),
    ([0.02, -0.03, 0.01], "no difference"),
])
def test_the_reading_follows_the_pooled_ci(differences, phrase):
    result = _result(differences)
    text = " ".join(reading(result))
    assert phrase in text
    assert f"{sum(d > 0 for d in differences)} of 3 cohorts positive" in text
    report = markdown_report(result)
    assert "| 5000 |" in report and "student - baseline" in report


def test_the_forest_plot_has_a_row_per_cohort_and_the_pooled_one(tmp_path):
    """(The end-to-end run below has one cohort; the plot of several is checked here.)"""
    from matplotlib.image import imread

    from Training.benchmark import forest_plot

    heights = {n: imread(forest_plot(_result([0.1, -0.05, 0.02][:n]), tmp_path / f"{n}.png")).shape[0]
               for n in (1, 3)}
    # figure height 1.2 + 0.45 (cohorts + 2) inches: 2.55 and 3.45 for 1 and 3 cohorts
    assert heights[3] / heights[1] == pytest.approx(3.45 / 2.55, rel=0.02)


def test_a_development_seed_is_called_a_development_run():
    assert "development run" in " ".join(reading(_result([0.0], kind="development")))


def test_demo_reading_explains_an_auc_below_chance():
    summary = {"n_subjects": 40, "n_cases": 50, "n_positive_cases": 15,
               "models": {"student": {"auc": 0.45, "ci_low": 0.3, "ci_high": 0.6},
                          "baseline": {"auc": 0.6, "ci_low": 0.45, "ci_high": 0.75}},
               "comparisons": {"student - baseline": {"difference": -0.15, "ci_low": -0.3,
                                                      "ci_high": 0.02, "p_value": 0.08}}}
    text = "\n".join(demo_reading(summary, 2.0, 5))
    assert "2x the realistic default" in text
    assert "compatible with chance" in text
    assert "baseline (MRI only): AUC 0.600 (95 % CI 0.450 to 0.750) - its CI includes 0.5" in text
    assert "no difference" in text
    assert "-0.150" in text


def test_light_equivalence_needs_a_narrow_ci_and_both_models_above_chance():
    from Training.benchmark import light_equivalence

    narrow = {"ci_low": -0.02, "ci_high": 0.025}
    assert light_equivalence(narrow, [0.6], [0.62]).startswith("equivalent")
    # near chance: the same narrow CI shows nothing
    assert "not clearly above chance" in light_equivalence(narrow, [0.45], [0.62])
    # a CI of -0.082 to +0.071 is no equivalence, whatever the point estimate
    assert "not inside" in light_equivalence({"ci_low": -0.082, "ci_high": 0.071}, [0.6], [0.6])


def test_each_model_is_placed_against_the_oracle_and_the_best_read_out():
    from Training.benchmark import distance_lines

    lines = distance_lines({"student": 0.55, "regional_distilled": 0.74, "teacher": 0.9},
                           {"oracle_auc": 0.8, "regional_auc": 0.75, "probe_auc": 0.6,
                            "feature_probe_auc": 0.62})
    text = "\n".join(lines)
    assert "student (distilled, MRI): AUC 0.550, -0.250 from the oracle (0.800), -0.200 from the best " \
           "read-out (regional read-out, 0.750)" in text
    assert "-0.010 from the best read-out" in text
    assert "teacher" not in text.replace("PET teacher", "")  # teachers are not MRI-only models


def test_demo_picks_held_out_cases_of_one_fold_half_positive():
    pooled = {"folds": [0, 0, 0, 0, 1, 1, 0, 0], "labels": [1, 0, 1, 0, 1, 0, 1, 0],
              "centiloids": [50, 5, 90, 2, 70, 1, 30, 8]}
    picks = held_out_cases(pooled, 0, 4)
    assert all(pooled["folds"][i] == 0 for i in picks)
    assert sorted(pooled["labels"][i] for i in picks) == [0, 0, 1, 1]
    assert 4 not in picks and 5 not in picks
    positives = [pooled["centiloids"][i] for i in picks if pooled["labels"][i]]
    assert positives == [30, 90]  # the lowest and the highest positive of fold 0


@pytest.mark.slow
def test_quick_benchmark_runs_end_to_end(tmp_path):
    """One quick cohort through every step of the command (generation, preparation, ceilings,
    4 phases x 3 folds, report, reuse): over 60 s (85-87 s in `make test`, whose other xdist
    worker shares the 2 cores; preparing ~22 cases is most of it) because it is the only test
    of the command as a whole, which issue 26 requires in CI. Pooling is tested above."""
    from AmyloidKDLib.cli import run as cli_run
    from Training.cli import TRAINING_COMMANDS

    def run(argv):
        return cli_run(argv, TRAINING_COMMANDS)

    out = tmp_path / "bench"
    code = run(["--progress", "none", "benchmark", "--quick", "--cohort-seeds", "1000",
                "--out", str(out)])
    assert code == 0
    result = json.loads((out / "benchmark.json").read_text())
    assert result["kind"] == "quick check"
    assert [c["seed"] for c in result["cohorts"]] == [1000]
    for cohort in result["cohorts"]:
        summary = cohort["summary"]
        assert set(summary["models"]) == {"teacher", "student", "baseline", "light", "regional",
                                          "regional_distilled", "regional_centiloid", "regional_teacher"}
        assert 0.0 <= cohort["ceilings"]["regional_auc"] <= 1.0
        assert cohort["ceilings"]["regional_auc"] == pytest.approx(summary["models"]["regional"]["auc"], abs=1e-9)
        assert len(summary["fold_auc"]["regional_distilled"]) == 3
        assert all(0.0 <= m["auc"] <= 1.0 for m in summary["models"].values())
        assert 0.0 < cohort["ceilings"]["oracle_auc"] <= 1.0
        assert 0.0 < cohort["ceilings"]["feature_probe_auc"] <= 1.0  # the protocol's frozen encoder
        assert summary["n_subjects"] >= 14
    pooled = result["pooled"]["comparisons"]["student - baseline"]
    assert pooled["n_cohorts"] == 1
    assert (out / "forest.png").stat().st_size > 5000
    assert "Replication benchmark (quick check)" in (out / "benchmark.md").read_text()
    # a second call reuses the finished cohort
    assert run(["--progress", "none", "benchmark", "--quick", "--cohort-seeds", "1000",
                "--out", str(out)]) == 0
