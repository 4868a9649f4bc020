"""The MRI Centiloid read-out: conformal order statistics, CV+ coverage, checkpoint storage."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from AmyloidKDLib.centiloid_readout import (CentiloidReadout, conformal_quantile, conformal_rank,
                                            cv_plus_interval)
from AmyloidKDLib.errors import CheckpointError


@pytest.fixture(scope="module")
def two_parcels():
    """A real (coarse) parcellation of the 2 mm template: one parcel per hemisphere."""
    from AmyloidKDLib.regional_features import parcellation_from_centroids

    return parcellation_from_centroids(np.array([[-30.0, -20.0, 10.0], [30.0, -20.0, 10.0]]), 2)


@pytest.fixture(scope="module")
def old_checkpoint(tmp_path_factory):
    """A real (untrained) light-student checkpoint without a Centiloid read-out."""
    from test_inference import write_test_checkpoint

    return write_test_checkpoint(tmp_path_factory.mktemp("ckpt") / "student", kind="light_student")


def test_the_conformal_quantile_is_the_ceil_of_09_n_plus_1_th_order_statistic():
    scores = np.array([5.0, 1.0, 4.0, 2.0, 3.0, 9.0, 7.0, 8.0, 6.0, 10.0])
    # n = 10: ⌈0.9·11⌉ = ⌈9.9⌉ = 10 -> the largest; α 0.2: ⌈0.8·11⌉ = 9 -> 9.
    assert conformal_quantile(scores, 0.1) == 10.0
    assert conformal_quantile(scores, 0.2) == 9.0
    # n = 9, α 0.3: (1 − α)(n + 1) = 7 exactly (7.000…01 in floating point): the 7th, not the 8th.
    assert conformal_rank(9, 0.3) == 7 and conformal_quantile(scores[:9], 0.3) == 7.0
    # n = 8 is too few for 90 %: ⌈0.9·9⌉ = 9 > 8, the interval is unbounded.
    assert conformal_quantile(scores[:8], 0.1) == math.inf


def test_cv_plus_bounds_are_the_hand_computed_order_statistics():
    # 9 calibration cases in 3 folds; one new case whose fold predictions are 10, 20, 30.
    folds = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    residuals = np.array([1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 1.0, 2.0, 3.0])
    lower, upper = cv_plus_interval(np.array([[10.0], [20.0], [30.0]]), residuals, folds, 0.2)
    # n = 9, α 0.2: upper rank ⌈0.8·10⌉ = 8, lower rank ⌊0.2·10⌋ = 2.
    # μ + R = 11 12 13 21 22 23 31 32 33 -> 8th = 32; μ − R = 9 8 7 19 18 17 29 28 27 -> 2nd = 8.
    assert (lower[0], upper[0]) == (8.0, 32.0)
    lower, upper = cv_plus_interval(np.array([[10.0], [20.0], [30.0]]), residuals, folds, 0.05)
    assert (lower[0], upper[0]) == (-math.inf, math.inf)   # ⌈0.95·10⌉ = 10 > 9


def test_the_90_percent_interval_covers_90_percent_of_fresh_cases():
    """4000 independent draws of a linear model with noise (numpy least squares as the fold
    models): 40 calibration cases in 5 folds and one fresh case each; the CV+ interval's
    coverage must lie within 3 binomial SEs of 0.90 (an off-by-one rank moves it by ~0.024)."""
    rng = np.random.default_rng(2027)
    draws, n, k, beta = 4000, 40, 5, np.array([12.0, -6.0, 3.0, 0.0])
    folds = np.arange(n) % k
    hits, widths = 0, []
    for _ in range(draws):
        x = np.column_stack([np.ones(n + 1), rng.normal(size=(n + 1, 4))])
        cl = 20.0 + x[:, 1:] @ beta + rng.normal(0.0, 10.0, size=n + 1)
        fold_predictions, residuals = np.zeros((k, 1)), np.zeros(n)
        for fold in range(k):
            train = folds != fold
            coef = np.linalg.lstsq(x[:n][train], cl[:n][train], rcond=None)[0]
            residuals[~train] = np.abs(cl[:n][~train] - x[:n][~train] @ coef)
            fold_predictions[fold] = x[n] @ coef
        lo, hi = cv_plus_interval(fold_predictions, residuals, folds, 0.1)
        hits += int(lo[0] <= cl[n] <= hi[0])
        widths.append(hi[0] - lo[0])
    coverage, se = hits / draws, math.sqrt(0.09 / draws)
    assert abs(coverage - 0.90) < 3 * se, coverage
    # The noise SD is 10, so a 90 % interval is at least 2·1.645·10 ≈ 33 CL wide.
    assert 33.0 < float(np.median(widths)) < 45.0


def _readout(two_parcels, seed=1):
    from Training.centiloid_readout import fit_centiloid_readout

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(30, 4))
    cl = 25.0 + x @ np.array([10.0, 5.0, 0.0, -2.0]) + rng.normal(0, 8.0, size=30)
    return fit_centiloid_readout(x, cl, [f"s{i // 2}" for i in range(30)], (cl > 20).astype(int),
                                 two_parcels), x


def test_the_read_out_survives_the_checkpoint_bit_for_bit(two_parcels, old_checkpoint, tmp_path):
    import shutil

    from AmyloidKDLib.checkpoint import load_checkpoint, set_centiloid_readout

    folder = shutil.copytree(old_checkpoint, tmp_path / "student")
    readout, x = _readout(two_parcels)
    set_centiloid_readout(folder, readout.to_dict())
    _, info = load_checkpoint(folder)   # the weights' recorded SHA-256 still matches
    again = CentiloidReadout.from_dict(info.centiloid_readout)
    for a, b in zip(readout.predict(x), again.predict(x)):
        assert a.tobytes() == b.tobytes()
    assert again.model.weights.tobytes() == readout.model.weights.tobytes()
    assert again.residuals.tobytes() == readout.residuals.tobytes()
    assert again.centroids_mm.tobytes() == two_parcels.centroids_mm.tobytes()
    assert again.parcellation_signature == two_parcels.signature
    # A damaged entry is the checkpoint's error, with what to do.
    stored = json.loads((folder / "checkpoint.json").read_text())
    del stored["centiloid_readout"]["fold_models"]
    with pytest.raises(CheckpointError, match="re-train"):
        CentiloidReadout.from_dict(stored["centiloid_readout"])
    stored["centiloid_readout"] = readout.to_dict()
    stored["centiloid_readout"]["residual_folds"][0] = 9
    with pytest.raises(CheckpointError, match="inconsistent"):
        CentiloidReadout.from_dict(stored["centiloid_readout"])


def test_predict_rebuilds_the_training_parcels_exactly_from_the_stored_centres():
    from AmyloidKDLib.errors import InputError
    from AmyloidKDLib.regional_features import build_parcellation, case_features, parcellation_from_centroids

    trained = build_parcellation(2, 20)   # k-means (scikit-learn), as training makes it
    stored = json.loads(json.dumps(trained.centroids_mm.tolist()))   # through checkpoint.json
    rebuilt = parcellation_from_centroids(np.array(stored), 2)
    assert np.array_equal(rebuilt.labels, trained.labels) and rebuilt.signature == trained.signature
    with pytest.raises(InputError, match="template grid"):
        case_features(np.zeros((10, 10, 10)), rebuilt)


def test_a_checkpoint_whose_parcels_cannot_be_rebuilt_is_refused_at_load(two_parcels, old_checkpoint, tmp_path):
    import shutil

    from AmyloidKDLib.checkpoint import set_centiloid_readout
    from AmyloidKDLib.inference import Predictor

    folder = shutil.copytree(old_checkpoint, tmp_path / "student")
    readout, _ = _readout(two_parcels)
    stored = readout.to_dict()
    stored["parcellation"]["signature"] = "0" * 16   # parcels trained on another template
    set_centiloid_readout(folder, stored)
    with pytest.raises(CheckpointError, match="parcels rebuilt"):
        Predictor(folder, device="cpu", saliency=False)
    set_centiloid_readout(folder, readout.to_dict())
    predictor = Predictor(folder, device="cpu", saliency=False)
    assert predictor._parcellation.signature == two_parcels.signature
