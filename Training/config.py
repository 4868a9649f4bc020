"""Run configuration: one dataclass per stage, nested in :class:`RunConfig`, loaded from the
YAML presets in ``Training/presets/`` (``paper``: the paper's settings; ``cpu``: small enough
for a 2-core laptop; ``protocol``: frozen encoders, heads trained on cached features, for the
replication benchmark) and stored as JSON in every run directory.

Unknown keys raise :class:`ConfigError` naming them, so a typo in a YAML file never falls
back silently to a default.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from AmyloidKDLib import configs
from AmyloidKDLib.errors import ConfigError
from AmyloidKDLib.losses import LossScheduleConfig
from Training.augment import AugmentConfig
from Training.engine import EngineConfig
from Training.metrics import EvalConfig
from Training.splits import SplitConfig

PRESET_DIR = Path(__file__).resolve().parent / "presets"
MRI_CONTRASTS = ("T1w", "T2w", "FLAIR", "T2star")


@dataclass
class DataConfig:
    """Which images are used and how they are prepared and sliced."""

    contrast: str = "T1w"          # MRI contrast of the run: T1w, T2w, FLAIR or T2star
    prep_preset: str = "paper"     # AmyloidKDLib PrepConfig preset ("paper" or "fast")
    prep_overrides: dict[str, Any] = field(default_factory=dict)
    n_slices: int = 15             # sagittal slices per case
    image_size: int = 224          # slice side in pixels
    cache_dir: str = ""            # prepared cases and slice tensors; "" = <run>/cache
    jobs: int = 1                  # cases prepared in parallel (worker processes with scheduler local)
    scheduler: str = "local"       # local | tcp://HOST:PORT | slurm | pbs | sge | lsf (docs/cluster.md)
    cluster_config: str = ""       # YAML/JSON batch-job settings for slurm/pbs/sge/lsf
    max_days: int = 365            # OASIS-3 and ADNI: largest PET-MRI gap when pairing sessions
    pairing: str = "auto"          # OASIS-3: "pup-mrid" (OASIS3_PUP.csv's MRId), "nearest" (within
                                   # max_days) or "auto" (pup-mrid when OASIS3_PUP.csv is present)
    clinical_window_days: int = 0  # OASIS-3: keep PET with a UDSb4 visit within this many days (0 off;
                                   # the authors' cohort: 365)
    centiloid_column: str = "Centiloid_fSUVR_rsf_TOT_CORTMEAN"  # OASIS-3 label source (the authors')
    label_threshold: float = 20.6  # amyloid-positive when Centiloid > this (the authors' cut-off)
    adni_label: str = "status"     # ADNI: "status" (UC Berkeley AMYLOID_STATUS / the old cut-off
                                   # columns) or "centiloid" (CENTILOIDS > label_threshold)

    def __post_init__(self) -> None:
        if self.contrast not in MRI_CONTRASTS:
            raise ConfigError(f"data.contrast must be one of {', '.join(MRI_CONTRASTS)}, got "
                              f"{self.contrast!r}.")
        if self.pairing not in ("auto", "pup-mrid", "nearest"):
            raise ConfigError(f"data.pairing must be auto, pup-mrid or nearest, got {self.pairing!r}.")
        if self.adni_label not in ("status", "centiloid"):
            raise ConfigError(f"data.adni_label must be status or centiloid, got {self.adni_label!r}.")
        if self.n_slices < 1 or self.image_size < 32 or self.jobs < 1:
            raise ConfigError("data.n_slices must be >= 1, data.image_size >= 32 and data.jobs >= 1.")
        from AmyloidKDLib.executor import check_scheduler

        check_scheduler(self.scheduler)


@dataclass
class ModelChoice:
    """Which library model preset each phase builds (``AmyloidKDLib.models.ModelConfig``)."""

    preset: str = "paper"                                  # ModelConfig preset name
    teacher: dict[str, Any] = field(default_factory=dict)  # overrides per kind
    student: dict[str, Any] = field(default_factory=dict)
    light_student: dict[str, Any] = field(default_factory=dict)


@dataclass
class TeacherConfig:
    """Phase 1: PET-guided contrastive teacher (soft triplet + alignment + classification)."""

    epochs: int = 15
    patience: int = 5
    batch_size: int = 8
    grad_accum_steps: int = 1
    lr_encoder: float = 5e-6       # LoRA / encoder parameters
    lr_heads: float = 2e-5         # projection, attention, pooling, classifier
    weight_decay: float = 1e-2
    base_margin: float = 0.5       # triplet margin for a negative just min_centiloid_gap away ...
    max_margin: float = 2.0        # ... growing towards this for a far one
    centiloid_scale: float = 50.0  # Centiloid gap scale of that growth (tanh)
    min_centiloid_gap: float = 5.0 # negatives differ from the anchor by at least this
    hard_negatives: bool = True    # closest valid negative (else a random valid one)
    classification_weight: float = 1.0  # BCE on the teacher's guided logits
    alignment_weight: float = 1.0  # MSE + cosine of the MRI-only vs PET-guided embedding (x schedule)
    balanced_batches: bool = True
    augment: bool = True
    # "tracer": PET as its deviation from the training fold's amyloid-negative mean of the same
    # tracer (AmyloidKDLib.models.harmonization); "none": raw windowed SUVR slices.
    pet_harmonization: str = "tracer"
    monitor: str = "val_loss"
    mode: str = "min"

    def __post_init__(self) -> None:
        if self.pet_harmonization not in ("tracer", "none"):
            raise ConfigError(f"teacher.pet_harmonization must be 'tracer' or 'none', got "
                              f"{self.pet_harmonization!r}.")


@dataclass
class StudentConfig:
    """Phase 2: MRI-only student distilled from the teacher (also the baseline, without teacher)."""

    epochs: int = 100
    patience: int = 25
    batch_size: int = 8
    grad_accum_steps: int = 1
    lr_attention: float = 2e-5
    lr_projection: float = 8e-6    # encoder (LoRA) + per-slice projection
    lr_classifier: float = 5e-5    # pooling + classifier
    weight_decay: float = 1e-2
    plateau_factor: float = 0.5    # ReduceLROnPlateau on the monitored validation metric
    plateau_patience: int = 5
    feature_weight: float = 1.0    # within distillation: feature (MSE of normalised embeddings)
    logit_weight: float = 1.0      # ... and logit KD (binary, temperature-scaled; see schedule)
    focal_alpha: float = 0.68      # MarginFocalLoss: weight of the positive class
    focal_gamma: float = 2.0
    focal_margin_positive: float = 0.5
    balanced_batches: bool = False
    augment: bool = True
    init_from_teacher: bool = True
    # Standardise the encoder's features per slice and feature with training-fold statistics
    # (AmyloidKDLib.models.heads.FeatureStandardization): for random or frozen encoders.
    standardize_features: bool = False
    monitor: str = "val_f1"
    mode: str = "max"

    def __post_init__(self) -> None:
        if self.init_from_teacher and self.standardize_features:
            raise ConfigError("student.init_from_teacher and student.standardize_features exclude each "
                              "other: the projection copied from the teacher expects unstandardised "
                              "features. Set one of them to false.")


@dataclass
class LightConfig:
    """Light CNN student distilled with classic KD: alpha*T^2*KL + (1-alpha)*CE."""

    epochs: int = 30
    patience: int = 10
    batch_size: int = 8
    grad_accum_steps: int = 1
    lr: float = 3e-4
    weight_decay: float = 1e-2
    alpha: float = 0.5
    temperature: float = 2.0
    balanced_batches: bool = False
    augment: bool = True
    standardize_features: bool = False  # as student.standardize_features (the CNN is never copied)
    # Start attention, pooling and classifier from the teacher's (init_student_from_teacher). True
    # keeps what the paper preset has always done; the cpu and protocol presets set it false (with a
    # random or frozen encoder, copying the teacher's heads inverted the light student's rankings).
    init_from_teacher: bool = True
    monitor: str = "val_auc"
    mode: str = "max"


@dataclass
class RegionalConfig:
    """The regional read-outs (Training/readouts.py): parcels of the MNI grey matter, L2
    strengths, the distillation weight λ and the cross-fitting folds. Fixed on development
    cohorts (docs/benchmarks.md), never on a confirmation."""

    enabled: bool = True
    n_parcels: int = 100
    alpha: float = 10.0
    teacher_alpha: float = 0.1
    distill_weight: float = 0.5
    temperature: float = 2.0
    inner_folds: int = 5


@dataclass
class RunConfig:
    """Everything one training run needs; stored as ``config.json`` in the run directory."""

    name: str = "paper"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelChoice = field(default_factory=ModelChoice)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    light: LightConfig = field(default_factory=LightConfig)
    schedule: LossScheduleConfig = field(default_factory=LossScheduleConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    regional: RegionalConfig = field(default_factory=RegionalConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON/YAML-serialisable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Build from a nested dict; unknown keys raise ConfigError naming them, values are typed."""
        return configs.from_dict(cls, data)

    def model_config(self, kind: str):
        """The library ``ModelConfig`` of ``kind`` (teacher, student, light_student) for this run."""
        from AmyloidKDLib.models import ModelConfig

        overrides = {"n_slices": self.data.n_slices, "image_size": self.data.image_size,
                     **getattr(self.model, kind)}
        return ModelConfig.preset(self.model.preset, kind, **overrides)

    def prep_config(self):
        """The library ``PrepConfig`` for this run."""
        from AmyloidKDLib.pipeline import PrepConfig

        config = PrepConfig.preset(self.data.prep_preset)
        if self.data.prep_overrides:
            config = PrepConfig.from_dict(configs.merge(config.to_dict(), self.data.prep_overrides))
        return config

    def slice_config(self):
        """The library ``SliceConfig`` matching the model's slice count and size."""
        from AmyloidKDLib.slicing import SliceConfig

        return SliceConfig(n_slices=self.data.n_slices, image_size=self.data.image_size)

    def cache_root(self, run_dir: str | Path) -> Path:
        """Where prepared cases, slice stacks and encoder features go: ``data.cache_dir``, else
        ``<run_dir>/cache``."""
        return Path(self.data.cache_dir) if self.data.cache_dir else Path(run_dir) / "cache"

    def save(self, path: str | Path) -> None:
        """Write the config as JSON."""
        from Training.report import write_json

        write_json(path, self.to_dict())


def list_presets() -> list[str]:
    """Names of the YAML presets shipped in ``Training/presets/``."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section.")
    node[keys[-1]] = value


def load_config(preset_or_path: str = "cpu", overrides: list[str] | None = None) -> RunConfig:
    """A :class:`RunConfig` from a preset name or a YAML/JSON file, with ``key.sub=value`` overrides.

    Override values are parsed as YAML (``teacher.epochs=2``, ``engine.device=cpu``).
    """
    path = Path(preset_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{preset_or_path}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown preset {preset_or_path!r}. Available: "
                              f"{', '.join(list_presets())}, or pass a .yaml/.json file.")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML/JSON: {exc}") from exc
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value.")
        key, raw = item.split("=", 1)
        _set_path(data, key.strip(), yaml.safe_load(raw))
    return RunConfig.from_dict(data)


# Keys older run folders hold that this version dropped; ignored when a run is read back.
RETIRED_KEYS = (("engine", "seed"),)


def config_from_json(path: str | Path) -> RunConfig:
    """Read a run directory's ``config.json`` back."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read run config {path}: {exc}") from exc
    for section, key in RETIRED_KEYS:  # written by older versions, no longer meaningful
        if isinstance(data.get(section), dict):
            data[section].pop(key, None)
    return RunConfig.from_dict(data)
