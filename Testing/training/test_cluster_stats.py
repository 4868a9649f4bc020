"""Subject-clustered statistics: the cluster bootstrap and Obuchowski's clustered AUC test.

Cohorts hold several sessions per subject. A simulation with a strong subject effect
shows that CIs which resample subjects (or sum structural components per subject) cover the
true AUC at about the nominal 95 %, while the case-level methods, which treat sessions as
independent, fall clearly short. Smaller tests pin the pieces: the weighted bootstrap AUC
against scikit-learn on the explicitly expanded resample, Obuchowski's variance against a
hand computation, and its reduction to DeLong's test with one case per subject.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from Training import metrics as tm

# Simulation: subject label L ~ Bernoulli(0.35), shared by the subject's 1-3 sessions;
# score = MU * L + u (subject effect, variance SIGMA_U2) + e (session noise, SIGMA_E2).
# Every positive-negative pair comes from two different subjects, so its scores are
# independent normals and the population AUC is Phi(MU / sqrt(2 (SIGMA_U2 + SIGMA_E2))).
MU, SIGMA_U2, SIGMA_E2 = 1.2, 0.9, 0.1
TRUE_AUC = float(stats.norm.cdf(MU / math.sqrt(2 * (SIGMA_U2 + SIGMA_E2))))
N_SUBJECTS, N_SIMULATIONS, N_BOOTSTRAP = 200, 400, 200


def simulate_cohort(rng: np.random.Generator, n_subjects: int = N_SUBJECTS
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, scores, subject ids) of one clustered cohort."""
    while True:
        label = (rng.random(n_subjects) < 0.35).astype(int)
        if 3 <= label.sum() <= n_subjects - 3:
            break
    sessions = rng.integers(1, 4, size=n_subjects)
    subjects = np.repeat(np.arange(n_subjects), sessions)
    effect = rng.normal(0, math.sqrt(SIGMA_U2), size=n_subjects)
    scores = (MU * label + effect)[subjects] + rng.normal(0, math.sqrt(SIGMA_E2), size=subjects.size)
    return label[subjects], scores, subjects


@pytest.fixture(scope="module")
def coverage() -> dict[str, float]:
    """Share of simulated cohorts whose 95 % CI holds the true AUC, per method."""
    rng = np.random.default_rng(2024)
    config = tm.EvalConfig(n_bootstrap=N_BOOTSTRAP, seed=0)
    hits = {"cluster_bootstrap": 0, "obuchowski": 0, "case_bootstrap": 0, "delong": 0}
    z = stats.norm.ppf(0.975)
    for sim in range(N_SIMULATIONS):
        y, s, g = simulate_cohort(rng)
        config.seed = sim
        for name, groups in (("cluster_bootstrap", g), ("case_bootstrap", None)):
            ci = tm.evaluate_predictions(y, s, 0.5, config, groups=groups)["auc"]
            hits[name] += ci["ci_low"] <= TRUE_AUC <= ci["ci_high"]
        for name, groups in (("obuchowski", g), ("delong", None)):
            auc, var = tm.clustered_auc_variance(y, s, groups)
            hits[name] += abs(auc - TRUE_AUC) <= z * math.sqrt(var)
    return {name: count / N_SIMULATIONS for name, count in hits.items()}


def test_subject_level_cis_cover_the_true_auc_and_case_level_cis_do_not(coverage):
    print(f"\ntrue AUC {TRUE_AUC:.4f}; 95 % CI coverage over {N_SIMULATIONS} cohorts: "
          + ", ".join(f"{k} {v:.3f}" for k, v in coverage.items()))
    assert 0.90 <= coverage["cluster_bootstrap"] <= 0.985, coverage
    assert 0.90 <= coverage["obuchowski"] <= 0.985, coverage
    assert coverage["case_bootstrap"] < 0.90, coverage
    assert coverage["delong"] < 0.90, coverage


def test_weighted_cluster_auc_equals_scikit_learn_on_the_expanded_resample():
    rng = np.random.default_rng(3)
    y, s, g = simulate_cohort(rng, 40)
    s = np.round(s, 1)  # ties between and within subjects
    codes = tm._group_codes(g, y.size)
    weights = tm._cluster_bootstrap_weights(codes, 50, 9)
    aucs = tm._weighted_aucs(y, s, weights)
    checked = 0
    for row, auc in zip(weights, aucs):
        # The resample, written out: every case as often as its subject was drawn.
        expanded = np.repeat(np.arange(y.size), row.astype(int))
        assert np.array_equal(np.unique(g[expanded]), np.unique(g[row > 0]))
        if len(set(y[expanded])) == 2:
            assert auc == pytest.approx(roc_auc_score(y[expanded], s[expanded]), abs=1e-12)
            checked += 1
        else:
            assert math.isnan(auc)
    assert checked >= 45
    # A subject drawn k times gives all of its cases weight k; the weights of a resample sum
    # to the cases of as many subject draws as there are subjects.
    sessions = np.bincount(codes)
    for row in weights:
        per_subject = np.array([row[codes == k][0] for k in range(sessions.size)])
        assert per_subject.sum() == sessions.size
        for k in range(sessions.size):
            assert np.all(row[codes == k] == per_subject[k])


def test_weighted_confusion_counts_equal_counts_on_the_expanded_resample():
    rng = np.random.default_rng(4)
    y, s, g = simulate_cohort(rng, 30)
    weights = tm._cluster_bootstrap_weights(tm._group_codes(g, y.size), 10, 1)
    pred = s >= 0.4
    tp, fp, tn, fn = tm._weighted_counts(y, pred, weights)
    for k, row in enumerate(weights):
        e = np.repeat(np.arange(y.size), row.astype(int))
        assert tp[k] == np.sum(pred[e] & (y[e] == 1)) and fp[k] == np.sum(pred[e] & (y[e] == 0))
        assert tn[k] == np.sum(~pred[e] & (y[e] == 0)) and fn[k] == np.sum(~pred[e] & (y[e] == 1))


def test_one_case_per_subject_gives_the_case_level_numbers():
    rng = np.random.default_rng(5)
    y, s, _ = simulate_cohort(rng, 80)
    b = s + rng.normal(0, 1, size=s.size)
    own = [f"subject{i}" for i in range(y.size)]
    # Obuchowski's test with one case per cluster is DeLong's test.
    clustered, delong = tm.clustered_auc_test(y, s, b, own), tm.delong_test(y, s, b)
    assert set(clustered) == set(delong)
    for key in delong:
        assert clustered[key] == pytest.approx(delong[key], abs=1e-10), key
    # ... and the subject bootstrap draws the same resamples as the case bootstrap.
    config = tm.EvalConfig(n_bootstrap=100, seed=6)
    by_subject = tm.evaluate_predictions(y, s, 0.3, config, groups=np.arange(y.size))
    by_case = tm.evaluate_predictions(y, s, 0.3, config)
    for metric in tm.ALL_METRICS:
        for key in ("value", "ci_low", "ci_high"):
            assert by_subject[metric][key] == pytest.approx(by_case[metric][key], abs=1e-12)


def test_obuchowski_variance_by_hand():
    # Subjects A: positive 0.8, negative 0.3; B: positive 0.6; C: negatives 0.7 and 0.2.
    y = [1, 0, 1, 0, 0]
    a = [0.8, 0.3, 0.6, 0.7, 0.2]
    g = ["A", "A", "B", "C", "C"]
    # V10(0.8) = 1, V10(0.6) = 2/3 (above 0.3 and 0.2, below 0.7); AUC = 5/6.
    # V01(0.3) = 1, V01(0.7) = 1/2, V01(0.2) = 1.
    # Per subject, V10_i - m_i θ: A 1/6, B -1/6, C 0; V01_i - n_i θ: A 1/6, B 0, C 3/2 - 5/3 = -1/6.
    # I = 3, I10 = 2 (A, B), I01 = 2 (A, C), M = 2, N = 3:
    # S10 = 2/(1*2) (1/36 + 1/36) = 1/18; S01 = 2/(1*3) (2/36) = 1/27; S11 = 3/2 * 1/36 = 1/24.
    # Var = S10/M + S01/N + 2 S11/(M N) = 1/36 + 1/81 + 1/72 = 35/648.
    theta, var = Fraction(5, 6), Fraction(35, 648)
    auc, got = tm.clustered_auc_variance(y, a, g)
    assert auc == pytest.approx(float(theta), abs=1e-15)
    assert got == pytest.approx(float(var), abs=1e-15)
    # Against a constant score (AUC 1/2, no variance) the difference test has the same variance.
    test = tm.clustered_auc_test(y, a, [0.5] * 5, g)
    assert test["difference"] == pytest.approx(float(theta - Fraction(1, 2)), abs=1e-15)
    assert test["se"] == pytest.approx(math.sqrt(35 / 648), abs=1e-15)
    # Case-level DeLong ignores that A's sessions belong together and gives another variance:
    # s10 = var(1, 2/3) = 1/18, s01 = var(1, 1/2, 1) = 1/12; 1/18/2 + 1/12/3 = 1/36 + 1/36 = 1/18.
    assert tm.clustered_auc_variance(y, a)[1] == pytest.approx(1 / 18, abs=1e-15)


def test_clustered_covariance_between_two_models_by_brute_force():
    """Obuchowski's covariance from explicit double sums over case pairs, in exact fractions."""
    y = [1, 0, 1, 1, 0, 0, 1, 0]
    a = [0.9, 0.2, 0.4, 0.7, 0.4, 0.1, 0.6, 0.8]
    b = [0.5, 0.5, 0.3, 0.9, 0.6, 0.2, 0.7, 0.1]
    g = [0, 0, 1, 1, 2, 2, 3, 4]

    def psi(x, v):
        return Fraction(1) if x > v else Fraction(1, 2) if x == v else Fraction(0)

    pos = [i for i in range(8) if y[i] == 1]
    neg = [i for i in range(8) if y[i] == 0]
    big_m, big_n = len(pos), len(neg)
    clusters = sorted(set(g))
    i_all = len(clusters)
    i10 = len({g[i] for i in pos})
    i01 = len({g[i] for i in neg})

    def parts(s):
        s = [Fraction(x).limit_denominator(100) for x in s]
        theta = sum(psi(s[i], s[j]) for i in pos for j in neg) / (big_m * big_n)
        d10 = [sum(sum(psi(s[i], s[j]) for j in neg) / big_n for i in pos if g[i] == c)
               - sum(1 for i in pos if g[i] == c) * theta for c in clusters]
        d01 = [sum(sum(psi(s[i], s[j]) for i in pos) / big_m for j in neg if g[j] == c)
               - sum(1 for j in neg if g[j] == c) * theta for c in clusters]
        return theta, d10, d01

    ta, a10, a01 = parts(a)
    tb, b10, b01 = parts(b)

    def cov(x10, x01, z10, z01):
        s10 = Fraction(i10, (i10 - 1) * big_m) * sum(p * q for p, q in zip(x10, z10))
        s01 = Fraction(i01, (i01 - 1) * big_n) * sum(p * q for p, q in zip(x01, z01))
        s11 = Fraction(i_all, i_all - 1) * sum(p * q for p, q in zip(x10, z01))
        s11t = Fraction(i_all, i_all - 1) * sum(p * q for p, q in zip(z10, x01))
        return s10 / big_m + s01 / big_n + (s11 + s11t) / (big_m * big_n)

    var_diff = cov(a10, a01, a10, a01) + cov(b10, b01, b10, b01) - 2 * cov(a10, a01, b10, b01)
    result = tm.clustered_auc_test(y, a, b, g)
    assert result["auc_a"] == pytest.approx(float(ta), abs=1e-14)
    assert result["auc_b"] == pytest.approx(float(tb), abs=1e-14)
    assert result["se"] == pytest.approx(math.sqrt(float(var_diff)), abs=1e-12)


def test_the_subject_bootstrap_is_fast():
    import time

    rng = np.random.default_rng(8)
    y, s, g = simulate_cohort(rng, 150)
    b = s + rng.normal(0, 0.5, size=s.size)
    config = tm.EvalConfig(n_bootstrap=1000)
    started = time.perf_counter()
    tm.evaluate_predictions(y, s, 0.5, config, groups=g)
    tm.compare_paired(y, s, b, config, groups=g)
    assert time.perf_counter() - started < 1.0  # ~300 cases, 1000 resamples, twice


def test_groups_must_match_the_cases_and_clusters_need_both_classes():
    with pytest.raises(tm.InputError, match="one subject id per case"):
        tm.evaluate_predictions([0, 1, 1], [0.1, 0.9, 0.8], groups=["a", "b"])
    with pytest.raises(tm.InputError, match=">= 2 subjects with a positive"):
        tm.clustered_auc_test([1, 1, 0, 0], [0.9, 0.8, 0.1, 0.3], [0.5, 0.6, 0.2, 0.1], ["a", "a", "b", "c"])
