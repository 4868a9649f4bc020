"""The steps every training command shares: cohort -> prepared dataset -> subject-level split
-> phases -> evaluation report, with one run directory holding all of it.

Run directory layout::

    RUN/config.json            the resolved RunConfig
    RUN/cohort.json            where the cases came from (manifest, OASIS-3 or ADNI root), the case
                               list and how each case's files were chosen (``selection``)
    RUN/split.json             train / val / test case ids (subject-disjoint, checked)
    RUN/<phase>/               engine state (resumable), best weights, history.json, training_curves.png
    RUN/checkpoints/<phase>/   library checkpoints (model.safetensors + checkpoint.json)
    RUN/evaluation/            report.md, metrics.json, metrics.csv, predictions_<model>.csv, roc.png
"""

from __future__ import annotations

import copy

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from AmyloidKDLib.errors import CheckpointError, ConfigError, InputError
from Training.config import RunConfig
from Training.data import SliceDataset, case_id, prepare_cohort
from Training.engine import is_main_process, main_process_first
from Training.metrics import compare_paired, evaluate_model, resampling_info
from Training.report import (CasePrediction, format_table, plot_roc, plot_training_curves, write_json,
                             write_predictions, write_report)
from Training.phases import (PHASES, PhaseResult, predict_probabilities, train_light, train_student,
                             train_teacher)
from Training.splits import Split, assert_no_subject_leakage, cross_validation_splits, holdout_split

logger = logging.getLogger(__name__)


@dataclass
class CohortSource:
    """Where a run's cases come from: a manifest CSV, an OASIS-3 style root or an ADNI root."""

    manifest: str | None = None
    oasis3: str | None = None
    adni: str | None = None

    def __post_init__(self) -> None:
        if sum(bool(s) for s in (self.manifest, self.oasis3, self.adni)) != 1:
            raise ConfigError("give exactly one data source: --manifest CSV, --oasis3 ROOT or --adni ROOT.")

    @property
    def location(self) -> str:
        """The manifest or root given."""
        return str(self.manifest or self.oasis3 or self.adni)

    def to_dict(self) -> dict[str, str | None]:
        """JSON form, stored in ``RUN/cohort.json``."""
        return {"manifest": self.manifest, "oasis3": self.oasis3, "adni": self.adni}


def load_records(source: CohortSource, config: RunConfig) -> list[Any]:
    """The usable cases of ``source`` for this run's contrast: those with that MRI and a label.

    Cases without the contrast or without a label are left out and counted in the log; none
    left is an error that says why.
    """
    from Training.cohort import read_adni, read_manifest, read_oasis3

    contrast, data = config.data.contrast, config.data
    if source.manifest:
        records = read_manifest(source.manifest, contrasts=(contrast,), label_threshold=data.label_threshold)
    elif source.adni:
        if contrast != "T1w":
            raise ConfigError(f"the ADNI reader pairs amyloid PET with T1 only; use --contrast T1w "
                              f"(got {contrast}).")
        records = read_adni(source.adni, max_days=data.max_days, label=data.adni_label,
                            label_threshold=data.label_threshold)
    else:
        records = read_oasis3(source.oasis3, max_days=data.max_days, contrasts=(contrast,),
                              centiloid_column=data.centiloid_column,
                              label_threshold=data.label_threshold, pairing=data.pairing,
                              clinical_window_days=data.clinical_window_days)
    usable = [r for r in records if (r.mri or {}).get(contrast) and r.label is not None]
    dropped = len(records) - len(usable)
    if dropped:
        logger.warning("%d of %d cases left out: no %s MRI or no amyloid label",
                       dropped, len(records), contrast)
    if not usable:
        raise InputError(f"no case in {source.location} has both a {contrast} MRI and an "
                         f"amyloid label (or Centiloid); choose another --contrast or check the data.")
    return usable


def write_cohort_json(run_dir: str | Path, source: CohortSource, config: RunConfig,
                      records: Sequence[Any]) -> None:
    """``RUN/cohort.json``: the source, the contrast, the case ids and, per case, how its files
    and label were chosen (the OASIS-3 and ADNI readers' ``selection``)."""
    write_json(Path(run_dir) / "cohort.json", {
        **source.to_dict(), "contrast": config.data.contrast, "cases": [case_id(r) for r in records],
        "selection": {case_id(r): r.selection for r in records if getattr(r, "selection", None)}})


def build_dataset(config: RunConfig, records: Sequence[Any], run_dir: str | Path,
                  with_pet: bool = True) -> SliceDataset:
    """Prepare (or reuse from the cache) every case and load the slice stacks."""
    files = prepare_cohort(records, config.data.contrast, config.prep_config(), config.slice_config(),
                           config.cache_root(run_dir), jobs=config.data.jobs, with_pet=with_pet, progress=config.engine.progress,
                           scheduler=config.data.scheduler, cluster_config=config.data.cluster_config)
    return SliceDataset(records, files)


def split_to_ids(split: Split, dataset: SliceDataset) -> dict[str, Any]:
    """Case ids of each set (what ``split.json`` stores)."""
    ids = [c.case_id for c in dataset.info]
    return {"fold": split.fold, **{name: [ids[i] for i in getattr(split, name)]
                                   for name in ("train", "val", "test")}}


def split_from_ids(data: dict[str, Any], dataset: SliceDataset) -> Split:
    """The :class:`Split` whose case ids ``data`` lists; cases unknown to the dataset are an error."""
    position = {c.case_id: i for i, c in enumerate(dataset.info)}
    parts = {}
    for name in ("train", "val", "test"):
        missing = [c for c in data[name] if c not in position]
        if missing:
            raise InputError(f"split.json lists cases the cohort no longer has ({missing[:3]}); "
                             f"use a new --out directory for a changed cohort.")
        parts[name] = tuple(sorted(position[c] for c in data[name]))
    split = Split(int(data.get("fold", 0)), parts["train"], parts["val"], parts["test"])
    assert_no_subject_leakage(split, dataset.subjects)
    return split


def run_split(config: RunConfig, dataset: SliceDataset, run_dir: str | Path, fold: int | None = None
              ) -> Split:
    """The run's split: read from ``RUN/split.json`` when present, else made and saved.

    ``fold=None`` gives one hold-out split (about 60/20/20 % of subjects); an integer picks
    that fold of the configured stratified group k-fold.
    """
    path = Path(run_dir) / "split.json"
    if path.is_file():
        return split_from_ids(json.loads(path.read_text()), dataset)
    if fold is None:
        split = holdout_split(dataset.subjects, dataset.labels, 1 / config.split.n_folds,
                              1 / config.split.n_folds, config.split.seed)
    else:
        splits = cross_validation_splits(dataset.subjects, dataset.labels, config.split)
        if not 0 <= fold < len(splits):
            raise ConfigError(f"--fold must be in 0..{len(splits) - 1}, got {fold}.")
        split = splits[fold]
    write_json(path, split_to_ids(split, dataset))
    return split


def prepare_run(config: RunConfig, source: CohortSource, run_dir: str | Path, fold: int | None = None,
                with_pet: bool = True) -> tuple[SliceDataset, Split]:
    """Records, prepared dataset and split of a run; writes ``config.json`` and ``cohort.json``."""
    run_dir = Path(run_dir)
    # Launched on several processes (accelerate launch), the main one prepares the cohort into
    # the cache and writes the run files; the others then read them.
    with main_process_first(cpu=config.engine.use_cpu()):
        run_dir.mkdir(parents=True, exist_ok=True)
        records = load_records(source, config)
        prep = config
        if not is_main_process():  # every case is in the cache now: read it in this process
            prep = copy.deepcopy(config)
            prep.data.jobs, prep.data.scheduler = 1, "local"
        if is_main_process():
            config.save(run_dir / "config.json")
            write_cohort_json(run_dir, source, config, records)
        dataset = build_dataset(prep, records, run_dir, with_pet=with_pet)
        split = run_split(config, dataset, run_dir, fold)
    return dataset, split


def load_teacher(run_dir: str | Path, device: str = "cpu") -> nn.Module:
    """The teacher checkpoint of a run (``RUN/checkpoints/teacher``), in eval mode."""
    from AmyloidKDLib.checkpoint import load_checkpoint

    path = Path(run_dir) / "checkpoints" / "teacher"
    if not path.is_dir():
        raise CheckpointError(f"no teacher checkpoint in {path}; run 'amyloidkd train teacher' with "
                              f"the same --out first (or pass --teacher).")
    model, _ = load_checkpoint(path, device=device)
    return model


def run_phases(config: RunConfig, dataset: SliceDataset, split: Split, run_dir: str | Path,
               phases: Sequence[str], resume: bool = False, teacher_checkpoint: str | Path | None = None
               ) -> dict[str, PhaseResult]:
    """Train ``phases`` (in the method's order) and return their results."""
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        raise ConfigError(f"unknown phase(s) {unknown}; choose from {', '.join(PHASES)}.")
    results: dict[str, PhaseResult] = {}
    teacher: nn.Module | None = None
    for phase in PHASES:
        if phase not in phases:
            continue
        if phase in ("student", "light") and teacher is None:
            teacher = _load_model(teacher_checkpoint) if teacher_checkpoint else load_teacher(run_dir)
        if phase == "teacher":
            results[phase] = train_teacher(config, dataset, split, run_dir, resume)
            teacher = results[phase].model
        elif phase == "student":
            results[phase] = train_student(config, dataset, split, run_dir, teacher=teacher, resume=resume)
        elif phase == "baseline":
            results[phase] = train_student(config, dataset, split, run_dir, teacher=None, resume=resume)
        else:
            results[phase] = train_light(config, dataset, split, run_dir, teacher=teacher, resume=resume)
    return results


def _load_model(checkpoint: str | Path) -> nn.Module:
    from AmyloidKDLib.checkpoint import load_checkpoint

    return load_checkpoint(checkpoint)[0]


#: Display names in the report, in table order.
MODEL_NAMES = {"teacher": "teacher (MRI+PET)", "student": "student (distilled)",
               "light": "light student", "baseline": "baseline (MRI only)"}


def available_models(run_dir: str | Path) -> dict[str, tuple[nn.Module, float]]:
    """Every phase checkpoint of the run, loaded: name -> (model, validation threshold)."""
    from AmyloidKDLib.checkpoint import load_checkpoint

    found = {}
    for phase in PHASES:
        path = Path(run_dir) / "checkpoints" / phase
        if path.is_dir():
            model, info = load_checkpoint(path)
            found[phase] = (model, float(info.threshold))
    if not found:
        raise CheckpointError(f"no checkpoints in {Path(run_dir) / 'checkpoints'}; train a phase first.")
    return found


def evaluate_run(config: RunConfig, dataset: SliceDataset, split: Split, run_dir: str | Path,
                 models: dict[str, tuple[nn.Module, float]]) -> tuple[Path, dict[str, Any]]:
    """The evaluation report of a run on its test cases; returns (report path, metrics).

    Each model is scored at θ = 0.5 and at its validation-F1-optimal θ; the distilled
    student and the light student are compared with the baseline on identical cases.
    """
    out_dir = Path(run_dir) / "evaluation"
    test = list(split.test)
    labels = dataset.labels[test]
    subjects = [dataset.subjects[i] for i in test]  # sessions of a subject: CIs resample subjects
    probabilities: dict[str, np.ndarray] = {}
    results, thresholds = {}, {}
    for phase in PHASES:
        if phase not in models:
            continue
        model, threshold = models[phase]
        probs = predict_probabilities(model, dataset, test, with_pet=phase == "teacher")
        probabilities[phase] = probs
        name = MODEL_NAMES[phase]
        results[name] = evaluate_model(labels, probs, threshold, config.evaluation, subjects)
        thresholds[name] = {"default": config.evaluation.default_threshold, "optimal": threshold}
        write_predictions(out_dir / f"predictions_{phase}.csv",
                          [CasePrediction(dataset.info[i].case_id, dataset.info[i].subject_id,
                                          int(labels[k]), float(probs[k]), dataset.info[i].centiloid)
                           for k, i in enumerate(test)],
                          {"default": config.evaluation.default_threshold, "optimal": threshold})
    comparisons = []
    # Obuchowski's clustered test needs >= 2 subjects per class; with fewer, cases (labelled so).
    per_class = [len({s for s, y in zip(subjects, labels) if y == c}) for c in (0, 1)]
    pairs_by = subjects if min(per_class) >= 2 else None
    if "baseline" in probabilities and len(set(labels.tolist())) == 2 and min(
            int(labels.sum()), int((1 - labels).sum())) >= 2:
        for phase in ("student", "light"):
            if phase in probabilities:
                comparisons.append(compare_paired(
                    labels, probabilities[phase], probabilities["baseline"], config.evaluation,
                    (MODEL_NAMES[phase], MODEL_NAMES["baseline"]), pairs_by))
    figures = []
    if len(set(labels.tolist())) == 2:
        plot_roc({MODEL_NAMES[p]: (labels, probabilities[p]) for p in probabilities}, out_dir / "roc.png")
        figures.append("roc.png")
    for phase in probabilities:
        history_path = Path(run_dir) / phase / "history.json"
        if history_path.is_file():
            history = json.loads(history_path.read_text())["history"]
            plot_training_curves(history, out_dir / f"training_curves_{phase}.png", title=phase)
            figures.append(f"training_curves_{phase}.png")
    report = write_report(out_dir, results, thresholds, comparisons, figures,
                          extra={"n_test_cases": len(test), "n_test_positive": int(labels.sum()),
                                 "fold": split.fold, "contrast": config.data.contrast},
                          resampling=resampling_info(subjects, len(test)))
    return report, {"models": results, "thresholds": thresholds, "comparisons": comparisons,
                    "probabilities": {p: v.tolist() for p, v in probabilities.items()},
                    "labels": labels.tolist(), "table": format_table(results, thresholds)}
