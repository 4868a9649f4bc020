"""Regional measures of the prepared MRI (and PET) of a cohort: the classic read-out any deep
model must beat.

The parcellation and the per-case features live in the library
(:mod:`AmyloidKDLib.regional_features`), because ``predict`` computes the same features for a
checkpoint's Centiloid read-out; this module caches them per case for training.

Features are computed once per case and cached beside the slice stacks
(``<cache>/regions/<key>.npz``), keyed by the case's slice-cache key and the parcellation.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from AmyloidKDLib.atomic import atomic_path
from AmyloidKDLib.regional_features import (DEFAULT_PARCELS, GM_THRESHOLD, Parcellation,  # noqa: F401
                                           build_parcellation, case_features, feature_names,
                                           template_resolution)

logger = logging.getLogger(__name__)

#: Bump when the features of a case change for the same parcellation settings.
REGIONAL_VERSION = 1


@dataclass
class RegionalData:
    """Regional vectors of a cohort, in the order of its records."""

    mri: np.ndarray            # (n_cases, n_features)
    pet: np.ndarray | None     # (n_cases, n_features) or None when a case has no PET
    names: list[str]


def _case_regional(record: Any, contrast: str, prep_config: Any, slice_config: Any,
                   cache_root: Path, n_parcels: int) -> tuple[np.ndarray, np.ndarray | None]:
    from AmyloidKDLib.pipeline import prepare_case
    from AmyloidKDLib.volume import load_volume
    from Training.data import mri_path, slice_cache_key

    parcellation = build_parcellation(template_resolution(prep_config), n_parcels)
    key = slice_cache_key(record, contrast, prep_config, slice_config, True)
    ident = hashlib.sha256(json.dumps([REGIONAL_VERSION, key, parcellation.signature]).encode()).hexdigest()[:24]
    target = cache_root / "regions" / f"{ident}.npz"
    if target.is_file():
        stored = np.load(target)
        return stored["mri"], (stored["pet"] if "pet" in stored.files else None)
    mri = load_volume(mri_path(record, contrast), contrast)
    pet = load_volume(record.pet_path, "PET") if record.pet_path else None
    prepared = prepare_case(mri, pet, config=prep_config, cache_dir=cache_root / "prepared")
    mri_vector = case_features(prepared.mri.data, parcellation, weighted=True)
    pet_vector = (case_features(prepared.pet.data, parcellation, weighted=False)
                  if prepared.pet is not None else None)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as temporary:
        with open(temporary, "wb") as handle:
            arrays = {"mri": mri_vector} if pet_vector is None else {"mri": mri_vector, "pet": pet_vector}
            np.savez(handle, **arrays)
    return mri_vector, pet_vector


def regional_data(records: Sequence[Any], config: Any, cache_root: str | Path,
                  n_parcels: int = DEFAULT_PARCELS, progress: bool = False) -> RegionalData:
    """Regional vectors of every record (prepared through the run's cache, so cases prepared
    for the slice models are read, not prepared again)."""
    from AmyloidKDLib.progress import progress_bar

    cache_root = Path(cache_root)
    mri, pet = [], []
    for record in progress_bar(records, desc="regional features", unit="case", enabled=progress):
        m, p = _case_regional(record, config.data.contrast, config.prep_config(), config.slice_config(),
                              cache_root, n_parcels)
        mri.append(m)
        pet.append(p)
    names = feature_names(build_parcellation(template_resolution(config.prep_config()), n_parcels))
    has_pet = all(p is not None for p in pet)
    return RegionalData(np.stack(mri), np.stack(pet) if has_pet else None, names)
