"""Training pipeline: configs, paired augmentation, the engine (resume, early stopping, best
weights) and a real run of the phases on a tiny synthetic cohort."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from AmyloidKDLib.errors import CheckpointError, ConfigError
from Training.augment import AugmentConfig, augment_pair
from Training.config import RunConfig, list_presets, load_config
from Training.engine import EngineConfig, FitSettings, fit
from Training.sampling import ClassBalancedBatchSampler

# ----------------------------------------------------------------------------- configs


def test_presets_load_and_round_trip_through_json(tmp_path):
    assert {"cpu", "paper"} <= set(list_presets())
    paper = load_config("paper")
    assert (paper.teacher.lr_encoder, paper.teacher.lr_heads) == (5e-6, 2e-5)
    assert (paper.student.lr_attention, paper.student.lr_projection, paper.student.lr_classifier) == (
        2e-5, 8e-6, 5e-5)
    assert (paper.teacher.epochs, paper.teacher.patience, paper.student.epochs, paper.student.patience) == (
        15, 5, 100, 25)
    assert (paper.data.n_slices, paper.data.image_size) == (15, 224)
    cpu = load_config("cpu", ["teacher.epochs=2", "engine.device=cpu", "data.contrast=FLAIR"])
    assert cpu.teacher.epochs == 2 and cpu.engine.device == "cpu" and cpu.data.contrast == "FLAIR"
    cpu.save(tmp_path / "config.json")
    again = RunConfig.from_dict(json.loads((tmp_path / "config.json").read_text()))
    assert again == cpu


@pytest.mark.parametrize("preset, overrides, message", [
    ("cpu", ["teacher.epochz=3"], "teacher.epochz"),
    ("gpu", [], "unknown preset 'gpu'"),
    ("cpu", ["data.contrast=DWI"], "data.contrast"),
    # Values YAML cannot make into the field's type are named with the type expected.
    ("cpu", ["teacher.lr_heads=fast"], "teacher.lr_heads must be a number"),
    ("cpu", ["teacher.epochs=2.5"], "teacher.epochs must be a whole number"),
    ("cpu", ["teacher.augment=maybe"], "teacher.augment must be true or false"),
])
def test_config_typos_and_bad_values_are_named(preset, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(preset, overrides)


@pytest.mark.parametrize("override, section, key, value, kind", [
    ("teacher.lr_encoder=1e-3", "teacher", "lr_encoder", 1e-3, float),  # PyYAML: the string '1e-3'
    ("teacher.epochs=4", "teacher", "epochs", 4, int),
    ("student.lr_classifier=2", "student", "lr_classifier", 2.0, float),  # an int where a float goes
])
def test_override_numbers_are_typed_whatever_yaml_makes_of_them(override, section, key, value, kind):
    # A string learning rate would make AdamW fail deep inside a step.
    got = getattr(getattr(load_config("cpu", [override]), section), key)
    assert got == pytest.approx(value) and type(got) is kind


# ----------------------------------------------------------------------------- augmentation


def _phantom_stack(generator: torch.Generator) -> torch.Tensor:
    """[4, 3, 32, 32] slices: a bright off-centre square on a dark background per slice."""
    stack = torch.full((4, 3, 32, 32), -1.5)
    for k in range(4):
        stack[k, :, 8 + k:18 + k, 10:22] = 1.0 + 0.1 * k
    return stack + 0.01 * torch.randn(stack.shape, generator=generator)


def test_mri_and_pet_get_the_same_spatial_draw():
    g = torch.Generator().manual_seed(0)
    mri = _phantom_stack(g)
    pet = 0.5 * mri.clone()  # a PET registered to the MRI (different intensities, same anatomy)
    config = AugmentConfig(max_rotation_deg=15, max_scale=0.1, max_translation=0.1,
                           mri_contrast=0.0, mri_brightness=0.0)
    mri_aug, pet_aug = augment_pair(mri, pet, config, torch.Generator().manual_seed(5))
    assert not torch.allclose(mri_aug, mri, atol=1e-2)  # something moved
    assert torch.allclose(pet_aug, 0.5 * mri_aug, atol=1e-5)  # ...identically in both
    # A different seed gives a different draw: the equality above is not trivial.
    _, pet_other = augment_pair(mri, pet, config, torch.Generator().manual_seed(6))
    assert not torch.allclose(pet_other, pet_aug, atol=1e-2)


def test_pet_intensities_are_never_rescaled():
    g = torch.Generator().manual_seed(1)
    mri, pet = _phantom_stack(g), _phantom_stack(g)
    config = AugmentConfig(max_rotation_deg=0, max_scale=0, max_translation=0,
                           mri_contrast=0.3, mri_brightness=0.3)
    mri_aug, pet_aug = augment_pair(mri, pet, config, torch.Generator().manual_seed(2))
    assert torch.allclose(pet_aug, pet, atol=1e-5)
    assert not torch.allclose(mri_aug, mri, atol=1e-3)


def test_a_harmonised_pet_is_padded_with_its_zero_background():
    """A deviation map has background 0 and negative values inside the brain: padding the moved
    image with the slice minimum (right for CLIP-normalised slices) would paint a dark frame."""
    g = torch.Generator().manual_seed(3)
    pet = torch.zeros(1, 2, 3, 32, 32)
    pet[..., 8:24, 8:24] = torch.randn(1, 2, 3, 16, 16, generator=g) - 2.0
    config = AugmentConfig(max_rotation_deg=0, max_scale=0, max_translation=0.2,
                           mri_contrast=0.0, mri_brightness=0.0)
    draw = torch.Generator().manual_seed(1)
    _, moved = augment_pair(pet.clone(), pet, config, draw, pet_background=0.0)
    _, default = augment_pair(pet.clone(), pet, config, torch.Generator().manual_seed(1))
    border = torch.zeros(32, 32, dtype=torch.bool)
    border[:2], border[-2:], border[:, :2], border[:, -2:] = True, True, True, True
    assert torch.all(moved[..., border] == 0)
    assert default[..., border].min() < -2.5  # the default fill is the minimum, well below 0


# ----------------------------------------------------------------------------- engine


def _linear_problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 6, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).float()
    items = [{"index": i, "x": x[i], "label": y[i]} for i in range(48)]
    return x, y, items


def _fit_linear(tmp_path, epochs: int, resume: bool, interrupt_after: int | None = None):
    x, y, items = _linear_problem()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.02)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=6)
    sampler = ClassBalancedBatchSampler(y.int().numpy(), range(48), batch_size=8, seed=0)
    loader = torch.utils.data.DataLoader(items, batch_sampler=sampler)

    def step(m, batch, epoch):
        return nn.functional.binary_cross_entropy_with_logits(m(batch["x"]).squeeze(1), batch["label"]), {}

    def validate(m, epoch):
        return {"val_loss": float(nn.functional.binary_cross_entropy_with_logits(m(x).squeeze(1), y))}

    def stop(epoch, row):
        if interrupt_after is not None and epoch == interrupt_after:
            raise KeyboardInterrupt

    result = fit(model, optimizer, loader, step, validate, FitSettings(epochs=epochs, patience=10),
                 tmp_path, EngineConfig(progress=False, device="cpu"), scheduler=scheduler,
                 resume=resume, on_epoch_end=stop)
    return result, model


def test_resume_continues_from_the_last_completed_epoch(tmp_path):
    straight, straight_model = _fit_linear(tmp_path / "straight", epochs=5, resume=False)
    losses = [h["train_loss"] for h in straight.history]
    assert losses[-1] < 0.8 * losses[0]  # it learns
    with pytest.raises(KeyboardInterrupt):  # killed right after epoch 2 was saved
        _fit_linear(tmp_path / "broken", epochs=5, resume=False, interrupt_after=2)
    saved = json.loads((tmp_path / "broken" / "state" / "trainer.json").read_text())
    assert saved["completed_epochs"] == 2
    # The rest of the folder is Accelerate's save_state output (weights in safetensors).
    assert {"model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl"} <= {
        p.name for p in (tmp_path / "broken" / "state").iterdir()}
    resumed, resumed_model = _fit_linear(tmp_path / "broken", epochs=5, resume=True)
    assert resumed.resumed_from_epoch == 2
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4, 5]
    # Same batches, same RNG, same optimizer and scheduler state: the same trajectory.
    for a, b in zip(straight.history, resumed.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["lr"] == pytest.approx(b["lr"])
    for p, q in zip(straight_model.parameters(), resumed_model.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_float64_heads_train_in_float64_and_come_back_as_the_same_float32_parameters(tmp_path):
    """``engine.head_dtype: float64`` (the protocol preset, issue 26): the step sees float64
    outputs of float32 batches, the fitted model is float32 again with the same parameter
    objects, and the weights are those of float64 training (close to, not equal to, float32's)."""
    x, y, items = _linear_problem()
    fitted = {}
    for dtype in ("float32", "float64"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1))
        before = [id(p) for p in model.parameters()]
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.02)
        loader = torch.utils.data.DataLoader(items, batch_size=8)
        seen = set()

        def step(m, batch, epoch):
            out = m(batch["x"]).squeeze(1)
            seen.add(out.dtype)
            return nn.functional.binary_cross_entropy_with_logits(out, batch["label"].to(out.dtype)), {}

        fit(model, optimizer, loader, step, lambda m, e: {"epoch": float(e)},
            FitSettings(epochs=3, patience=3, monitor="epoch", mode="max"), tmp_path / dtype,
            EngineConfig(progress=False, device="cpu", head_dtype=dtype))
        assert seen == {getattr(torch, dtype)}
        assert [id(p) for p in model.parameters()] == before
        assert all(p.dtype == torch.float32 for p in model.parameters())
        assert model(x).dtype == torch.float32  # no input cast left behind
        fitted[dtype] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert not torch.equal(fitted["float32"], fitted["float64"])
    torch.testing.assert_close(fitted["float32"], fitted["float64"], atol=1e-4, rtol=1e-4)
    with pytest.raises(ConfigError, match="head_dtype"):
        EngineConfig(head_dtype="float16")


def test_resuming_with_another_model_is_a_checkpoint_error(tmp_path):
    _fit_linear(tmp_path, epochs=1, resume=False)
    x, y, items = _linear_problem()
    other = nn.Linear(6, 1)  # not the network that wrote the state
    optimizer = torch.optim.AdamW(other.parameters(), lr=0.02)
    loader = torch.utils.data.DataLoader(items, batch_size=16)
    with pytest.raises(CheckpointError, match="Start without --resume"):
        fit(other, optimizer, loader, lambda m, b, e: (m(b["x"]).mean(), {}),
            lambda m, e: {"val_loss": 0.0}, FitSettings(epochs=2, patience=2), tmp_path,
            EngineConfig(progress=False, device="cpu"), resume=True)


def test_early_stopping_keeps_the_best_epoch(tmp_path):
    x, y, items = _linear_problem()
    model = nn.Linear(6, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # nothing improves after epoch 1
    loader = torch.utils.data.DataLoader(items, batch_size=16)
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.69, 0.9])

    def validate(m, epoch):
        return {"val_auc": next(scores)}

    result = fit(model, optimizer, loader,
                 lambda m, b, e: (m(b["x"]).mean() * 0.0 + 1.0, {}), validate,
                 FitSettings(epochs=6, patience=3, monitor="val_auc", mode="max"), tmp_path,
                 EngineConfig(progress=False, device="cpu"))
    assert result.stopped_early and result.best_epoch == 2 and len(result.history) == 5
    assert result.best_value == pytest.approx(0.7)
    assert math.isclose(result.history[-1]["val_auc"], 0.69)


# ----------------------------------------------------------------------------- a real tiny run

#: Small enough for CI: 4 slices of 64 px, a few epochs, far fewer registration iterations.
TINY = ["data.n_slices=4", "data.image_size=64", "data.jobs=2", "split.n_folds=3",
        "engine.progress=false", "engine.device=cpu", "evaluation.n_bootstrap=200",
        "teacher.epochs=3", "teacher.patience=3", "teacher.batch_size=4",
        "student.epochs=3", "student.patience=3", "student.init_from_teacher=true",
        "student.standardize_features=false",
        "student.batch_size=4", "light.epochs=1", "light.batch_size=4",
        "data.prep_overrides={n4: {iterations: [10, 5]}, registration: {shrink_factors: [4, 2], "
        "smoothing_sigmas: [2.0, 1.0], iterations: [100, 30]}, pet: {registration: "
        "{shrink_factors: [4, 2], smoothing_sigmas: [2.0, 1.0], iterations: [50, 20]}}}"]


@pytest.fixture(scope="module")
def tiny_cohort(tmp_path_factory):
    """A 10-subject phantom cohort (2 mm MRI, T1w + PET; some subjects with 2-3 sessions)."""
    from AmyloidKDLib.phantom import PhantomConfig, generate_cohort

    root = tmp_path_factory.mktemp("cohort")
    config = PhantomConfig(mri_spacing_mm=2.0, contrasts=("T1w",), prevalence=0.5,
                           orientation_mix=0.3)
    return generate_cohort(root, 10, seed=5, layout="manifest", config=config, progress=False)


@pytest.fixture(scope="module")
def tiny_run(tiny_cohort, tmp_path_factory):
    """Teacher, distilled student and baseline trained on the tiny cohort (one hold-out split)."""
    from Training.workflow import CohortSource, prepare_run, run_phases

    run_dir = tmp_path_factory.mktemp("run")
    config = load_config("cpu", TINY)
    dataset, split = prepare_run(config, CohortSource(manifest=str(tiny_cohort)), run_dir)
    results = run_phases(config, dataset, split, run_dir, ("teacher", "student", "baseline"))
    return config, dataset, split, run_dir, results


@pytest.mark.slow
def test_a_tiny_run_lowers_its_losses_and_writes_checkpoints_that_load(tiny_run):
    from AmyloidKDLib.checkpoint import load_checkpoint
    from Training.phases import predict_probabilities

    config, dataset, split, run_dir, results = tiny_run
    subjects = np.array(dataset.subjects)
    assert len(set(subjects)) < len(subjects)  # repeat sessions exist ...
    assert not set(subjects[list(split.test)]) & set(subjects[list(split.train) + list(split.val)])
    teacher = results["teacher"].fit.history
    assert len(teacher) == 3
    assert teacher[-1]["align_loss"] < 0.8 * teacher[0]["align_loss"]  # MRI embedding moves to PET-guided
    assert all(math.isfinite(h["triplet_loss"]) and h["triplet_loss"] > 0 for h in teacher)
    assert max(h["no_negative"] for h in teacher) < 0.5  # Centiloid-aware negatives were found
    baseline = [h["train_loss"] for h in results["baseline"].fit.history]
    assert min(baseline[1:]) < baseline[0]
    # The student's weight moves from distillation to classification over its epochs.
    weights = [h["cls_weight"] for h in results["student"].fit.history]
    assert weights[0] == pytest.approx(0.5) and weights == sorted(weights) and weights[-1] > 0.5
    assert results["student"].extra["initialised_from_teacher"]  # attention from cross-attention
    # The teacher's PET reference was fitted on training-fold negatives and saved with it.
    harmonization = json.loads((run_dir / "teacher" / "history.json").read_text())["pet_harmonization"]
    train_negatives = int((dataset.labels[list(split.train)] == 0).sum())
    assert harmonization["method"] == "tracer" and harmonization["unknown"]["n_reference"] == train_negatives
    assert load_checkpoint(run_dir / "checkpoints" / "teacher")[0].harmonization.is_fitted
    for phase in ("teacher", "student", "baseline"):
        model, info = load_checkpoint(run_dir / "checkpoints" / phase)
        assert info.threshold == pytest.approx(results[phase].threshold)
        # The Platt scaling fitted on validation travels with the weights (identity if skipped).
        calibration = json.loads((run_dir / phase / "history.json").read_text())["calibration"]
        assert calibration["method"] == "platt"
        expected = (calibration["scale"], calibration["offset"]) if calibration["fitted"] else (1.0, 0.0)
        assert (float(model.calibration.scale), float(model.calibration.offset)) == pytest.approx(expected)
        assert info.slice_config["n_slices"] == 4 and info.prep_config == config.prep_config().to_dict()
        with_pet = phase == "teacher"
        reloaded = predict_probabilities(model, dataset, split.test, with_pet=with_pet)
        in_memory = predict_probabilities(results[phase].model, dataset, split.test, with_pet=with_pet)
        np.testing.assert_allclose(reloaded, in_memory, atol=1e-5)
    # The slice stacks are cached: preparing again reuses every file, nothing is redone.
    from Training.workflow import CohortSource, build_dataset, load_records

    files = sorted((run_dir / "cache" / "slices").glob("*.safetensors"))
    assert len(files) == len(dataset)
    stamps = [f.stat().st_mtime_ns for f in files]
    again = build_dataset(config, load_records(CohortSource(manifest=dataset_source(run_dir)), config), run_dir)
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert torch.equal(again.mri[0], dataset.mri[0])


def dataset_source(run_dir):
    return json.loads((run_dir / "cohort.json").read_text())["manifest"]


@pytest.mark.slow
def test_evaluate_and_resume_through_the_command_line(tiny_run, capsys):
    from Training.cli import TRAINING_COMMANDS
    from AmyloidKDLib.cli import run as cli

    config, dataset, split, run_dir, results = tiny_run
    assert cli(["evaluate", "--run", str(run_dir)], TRAINING_COMMANDS) == 0
    printed = capsys.readouterr().out
    assert "report:" in printed and "student (distilled)" in printed
    test_labels = dataset.labels[list(split.test)]
    if min(test_labels.sum(), (1 - test_labels).sum()) >= 2:  # DeLong needs 2 of each class
        assert "student (distilled) vs baseline (MRI only)" in printed
    metrics = json.loads((run_dir / "evaluation" / "metrics.json").read_text())
    from sklearn.metrics import roc_auc_score

    preds = (run_dir / "evaluation" / "predictions_student.csv").read_text().splitlines()[1:]
    labels = [int(line.split(",")[2]) for line in preds]
    probs = [float(line.split(",")[3]) for line in preds]
    assert metrics["models"]["student (distilled)"]["default"]["auc"]["value"] == pytest.approx(
        roc_auc_score(labels, probs))
    for name in ("roc.png", "report.md", "metrics.csv", "training_curves_teacher.png"):
        assert (run_dir / "evaluation" / name).is_file()
    # Resume: a light student trained for 1 epoch, then continued to 2 from its saved state.
    common = ["--manifest", dataset_source(run_dir), "--out", str(run_dir), "--config", "cpu"]
    common += [x for item in TINY for x in ("--set", item)]
    assert cli(["train", "light", *common], TRAINING_COMMANDS) == 0
    first = json.loads((run_dir / "light" / "history.json").read_text())
    assert len(first["history"]) == 1
    # The cpu preset standardises the light student's CNN features with training-fold statistics
    # of its initial encoder (the CNN trained one epoch since, so recompute from a fresh build).
    from AmyloidKDLib.checkpoint import load_checkpoint
    from AmyloidKDLib.models import build_model

    light, _ = load_checkpoint(run_dir / "checkpoints" / "light")
    assert light.slices.standardization.is_fitted
    torch.manual_seed(config.seed + 2)
    fresh = build_model(config.model_config("light_student")).eval()
    with torch.no_grad():
        features = fresh.slices.features(torch.stack([dataset[int(i)]["mri"] for i in split.train]))
    torch.testing.assert_close(light.slices.standardization.mean, features.mean(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(light.slices.standardization.std, features.std(0), rtol=1e-4, atol=1e-5)
    assert cli(["train", "light", *common, "--set", "light.epochs=2", "--resume"], TRAINING_COMMANDS) == 0
    second = json.loads((run_dir / "light" / "history.json").read_text())
    assert second["resumed_from_epoch"] == 1 and [h["epoch"] for h in second["history"]] == [1, 2]
    assert second["history"][0] == first["history"][0]


def test_train_without_a_teacher_checkpoint_is_a_clear_error(tiny_cohort, tmp_path, capsys):
    from Training.cli import TRAINING_COMMANDS
    from AmyloidKDLib.cli import run as cli

    code = cli(["train", "student", "--manifest", str(tiny_cohort), "--out", str(tmp_path / "run"),
                *[x for item in TINY for x in ("--set", item)]], TRAINING_COMMANDS)
    assert code == 2
    assert "amyloidkd train teacher" in capsys.readouterr().err
    assert not (tmp_path / "run" / "cache").exists()  # refused before preparing anything


@pytest.mark.slow
def test_train_stores_a_centiloid_readout_that_predict_writes(tiny_run, tmp_path):
    """train -> checkpoint -> predict: the student checkpoint carries the read-out fitted on the
    training cases, and results.csv gets the MRI Centiloid inside its interval."""
    import csv

    from AmyloidKDLib.centiloid_readout import CentiloidReadout
    from AmyloidKDLib.checkpoint import load_checkpoint
    from AmyloidKDLib.cli import run as cli
    from Training.cli import TRAINING_COMMANDS

    config, dataset, split, run_dir, _ = tiny_run
    common = ["--manifest", dataset_source(run_dir), "--out", str(run_dir), "--config", "cpu"]
    common += [x for item in TINY for x in ("--set", item)]
    assert cli(["train", "baseline", *common], TRAINING_COMMANDS) == 0
    readout = CentiloidReadout.from_dict(load_checkpoint(run_dir / "checkpoints" / "baseline")[1].centiloid_readout)
    training = sorted(set(split.train) | set(split.val))
    assert readout.details["n_cases"] == len(training) == len(readout.residuals)
    assert readout.details["n_subjects"] == len({dataset.subjects[i] for i in training})
    # predict one held-out case from its raw MRI
    from Training.regional import regional_data
    from Training.workflow import CohortSource, load_records

    record = load_records(CohortSource(manifest=dataset_source(run_dir)), config)[split.test[0]]
    t1 = record.mri["T1w"]
    out = tmp_path / "predicted"
    assert cli(["predict", str(t1), "--checkpoint", str(run_dir / "checkpoints" / "baseline"),
                "--out", str(out), "--device", "cpu", "--skull-strip", "none"]) == 0
    with open(out / "results.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    pred, lo, hi = (float(row[c]) for c in ("centiloid_pred", "centiloid_lo", "centiloid_hi"))
    assert lo < pred < hi
    # the numbers are the read-out's on the case's regional measures (prepared with its PET
    # in training, alone in predict: the same MRI registration, to ITK's thread noise)
    expected = readout.predict(regional_data([record], config, config.cache_root(run_dir)).mri)
    np.testing.assert_allclose([pred, lo, hi], [float(v[0]) for v in expected], atol=0.5)
