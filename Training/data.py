"""From cohort records to training tensors, prepared once.

Each case (one MRI contrast, optionally its PET) goes through AmyloidKDLib's composed
preparation (``prepare_case``: N4, skull stripping, normalisation, MNI registration, PET
carried along) and sagittal slicing, exactly as inference does. The resulting slice stacks
are cached on disk under a key made of the input files (path, size, mtime) and every
preparation and slicing setting, so no epoch, phase or fold registers or slices again, and
a changed setting never reuses a stale stack.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from AmyloidKDLib.atomic import atomic_path
from AmyloidKDLib.errors import AmyloidKDError, InputError
from AmyloidKDLib.models.harmonization import tracer_index

logger = logging.getLogger(__name__)

SLICE_CACHE_VERSION = 1
#: Voxels above this fraction of the 99th percentile of a PET's positive voxels form the head
#: mask of :func:`pet_to_interim_suvr`.
INTERIM_PET_MASK_FRACTION = 0.25


def case_id(record: Any) -> str:
    """A case's name, unique within a cohort: the session id (prefixed with the subject id
    unless it already starts with it)."""
    subject, session = str(record.subject_id), str(record.session_id or "")
    if not session:
        return subject
    return session if session.startswith(subject) else f"{subject}_{session}"


def _file_signature(path: str | os.PathLike | None) -> list[Any]:
    if path is None:
        return [None]
    p = Path(path)
    if p.is_dir():  # a DICOM series: every file's name, size and time
        files = sorted(f for f in p.iterdir() if f.is_file())
        return [str(p.resolve())] + [[f.name, f.stat().st_size, int(f.stat().st_mtime)] for f in files]
    if not p.is_file():
        raise InputError(f"{p} does not exist; check the manifest/cohort paths.")
    stat = p.stat()
    return [str(p.resolve()), stat.st_size, int(stat.st_mtime)]


def _to_dict(config: Any) -> Any:
    if hasattr(config, "to_dict"):
        return config.to_dict()
    import dataclasses

    return dataclasses.asdict(config)


def mri_path(record: Any, contrast: str) -> str:
    """The record's MRI file for ``contrast``; a clear error when the case lacks it."""
    path = (record.mri or {}).get(contrast)
    if not path:
        raise InputError(f"case {case_id(record)} has no {contrast} MRI (it has "
                         f"{', '.join(sorted(record.mri or {})) or 'none'}); choose another "
                         f"--contrast or drop the case from the manifest.")
    return str(path)


def pet_to_interim_suvr(volume: Any) -> Any:
    """A PET that is not an SUVR map (ADNI's IDA images are in scanner units) divided by its
    mean over the head: the voxels above ``INTERIM_PET_MASK_FRACTION`` of the 99th
    percentile, as ADNI's own "standardized image" step scales to a whole-brain mean of one.

    Interim, until SUVR normalised to the whole cerebellum (the standard VOIs of the Centiloid
    module) replaces it: the result no longer depends on the scanner's units, but a higher
    cortical burden also raises the reference a little, so absolute uptake is compressed.

    Raises:
        InputError: the image has no positive voxels.
    """
    data = np.asarray(volume.data, dtype=np.float32)
    positive = data[data > 0]
    if positive.size == 0:
        raise InputError(f"{volume.source or 'the PET'}: no positive voxel to normalise by.")
    head = data > INTERIM_PET_MASK_FRACTION * float(np.percentile(positive, 99))
    return volume.with_data(data / float(data[head].mean()), "PET")


def slice_cache_key(record: Any, contrast: str, prep_config: Any, slice_config: Any,
                    with_pet: bool = True) -> str:
    """Content key of a case's slice stacks: inputs, every setting that shapes them, and the
    library's ``PIPELINE_VERSION`` (bumped whenever the image path changes, so stacks made by
    an older pipeline are never reused)."""
    from AmyloidKDLib import pipeline

    payload = {"version": SLICE_CACHE_VERSION, "pipeline": pipeline.PIPELINE_VERSION,
               "contrast": contrast,
               "mri": _file_signature(mri_path(record, contrast)),
               "pet": _file_signature(record.pet_path) if with_pet and record.pet_path else None,
               "prep": _to_dict(prep_config), "slices": _to_dict(slice_config)}
    if payload["pet"] and getattr(record, "pet_scale", "suvr") != "suvr":
        payload["pet_scale"] = [record.pet_scale, INTERIM_PET_MASK_FRACTION]
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _stack_tensor(stack: Any) -> torch.Tensor:
    images = stack.images
    tensor = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))
    return tensor.detach().to(torch.float32).contiguous()


def prepare_case_slices(record: Any, contrast: str, prep_config: Any, slice_config: Any,
                        cache_dir: str | Path, with_pet: bool = True) -> Path:
    """Prepare one case (through the library) and write its slice stacks; returns the file.

    The file ``<cache>/slices/<key>.safetensors`` holds ``mri`` (and ``pet``) as
    ``[N, 3, S, S]`` float16; an existing file is reused as is.
    """
    from safetensors.torch import save_file

    from AmyloidKDLib.pipeline import prepare_case
    from AmyloidKDLib.slicing import sagittal_slices
    from AmyloidKDLib.volume import load_volume

    cache_dir = Path(cache_dir)
    key = slice_cache_key(record, contrast, prep_config, slice_config, with_pet)
    target = cache_dir / "slices" / f"{key}.safetensors"
    if target.is_file():
        return target
    mri = load_volume(mri_path(record, contrast), contrast)
    pet = load_volume(record.pet_path, "PET") if with_pet and record.pet_path else None
    if pet is not None and getattr(record, "pet_scale", "suvr") != "suvr":
        pet = pet_to_interim_suvr(pet)
    prepared = prepare_case(mri, pet, config=prep_config, cache_dir=cache_dir / "prepared")
    mri_stack = sagittal_slices(prepared.mri, prepared.mask, slice_config)
    tensors = {"mri": _stack_tensor(mri_stack)}
    if prepared.pet is not None:
        # The PET is sliced at the MRI's planes, so the two stacks correspond slice by slice.
        tensors["pet"] = _stack_tensor(sagittal_slices(prepared.pet, prepared.mask, slice_config,
                                                       positions=mri_stack.positions))
    with atomic_path(target) as temporary:
        save_file({k: v.to(torch.float16) for k, v in tensors.items()}, str(temporary),
                  metadata={"case": case_id(record), "contrast": contrast})
    return target


def _prepare_one(args: tuple) -> tuple[int, str | None, str | None]:
    index, record, contrast, prep_config, slice_config, cache_dir, with_pet = args
    try:
        return index, str(prepare_case_slices(record, contrast, prep_config, slice_config,
                                              cache_dir, with_pet)), None
    except AmyloidKDError as exc:
        return index, None, f"{case_id(record)}: {exc}"


def prepare_cohort(records: Sequence[Any], contrast: str, prep_config: Any, slice_config: Any,
                   cache_dir: str | Path, jobs: int = 1, with_pet: bool = True,
                   progress: bool = True, scheduler: str = "local",
                   cluster_config: str | None = None) -> list[Path]:
    """Slice files of every record, preparing those not cached yet.

    One case is one task of :func:`AmyloidKDLib.executor.map_cases`: in this process
    (``jobs`` 1, scheduler ``local``), on ``jobs`` local worker processes with one thread each,
    or on a Dask cluster (``scheduler``, ``cluster_config``; see docs/cluster.md).

    Raises:
        InputError: listing every case that could not be prepared (all others are cached,
            so a rerun after fixing them only prepares those).
    """
    from AmyloidKDLib.executor import map_cases

    tasks = [(i, r, contrast, prep_config, slice_config, str(cache_dir), with_pet)
             for i, r in enumerate(records)]
    paths: list[str | None] = [None] * len(records)
    errors = []
    # In this process the thread pools stay as the run set them; worker processes get 1 thread.
    threads = None if jobs <= 1 and scheduler == "local" else 1
    for position, result, lost in map_cases(
            _prepare_one, tasks, scheduler=scheduler, jobs=jobs, threads=threads,
            cluster_config=cluster_config or None, progress=progress, desc=f"prepare {contrast}"):
        if lost is not None:  # the task itself failed (e.g. its worker was lost repeatedly)
            errors.append(f"{case_id(records[position])}: {lost}")
            continue
        index, path, error = result
        paths[index] = path
        errors += [error] if error else []
    if errors:
        raise InputError(f"{len(errors)} case(s) could not be prepared: " + "; ".join(errors[:5]))
    return [Path(p) for p in paths if p is not None]


@dataclass
class CaseInfo:
    """What a dataset item carries besides its tensors."""

    case_id: str
    subject_id: str
    label: int
    centiloid: float
    tracer: str | None = None


class SliceDataset(torch.utils.data.Dataset):
    """The prepared slice stacks of a cohort, held in memory (float16) and served as float32.

    Items are dicts: ``index`` (position in the cohort), ``mri`` ``[N, 3, S, S]``, ``pet``
    (same shape; zeros when the case has no PET, with ``has_pet`` False), ``label``,
    ``centiloid`` (NaN when unknown), ``tracer`` (the PET harmonisation row of
    :func:`~AmyloidKDLib.models.harmonization.tracer_index`).
    """

    def __init__(self, records: Sequence[Any], slice_files: Sequence[str | Path]) -> None:
        from safetensors.torch import load_file

        if len(records) != len(slice_files):
            raise InputError(f"{len(records)} records but {len(slice_files)} slice files.")
        self.info = []
        self.files = [str(path) for path in slice_files]  # each case's slice file (content-keyed name)
        self.mri, self.pet = [], []
        for record, path in zip(records, slice_files):
            tensors = load_file(str(path))
            self.mri.append(tensors["mri"])
            self.pet.append(tensors.get("pet"))
            label = record.label
            if label is None or (isinstance(label, float) and math.isnan(label)):
                raise InputError(f"case {case_id(record)} has no amyloid label; training and "
                                 f"evaluation need one (column 'label' or a Centiloid).")
            centiloid = float("nan") if record.centiloid is None else float(record.centiloid)
            self.info.append(CaseInfo(case_id(record), str(record.subject_id), int(label), centiloid,
                                      getattr(record, "tracer", None)))
        self._tracer_rows = np.array([tracer_index(c.tracer) for c in self.info], dtype=int)

    def __len__(self) -> int:
        return len(self.info)

    @property
    def labels(self) -> np.ndarray:
        """Amyloid label per case."""
        return np.array([c.label for c in self.info], dtype=int)

    @property
    def subjects(self) -> list[str]:
        """Subject id per case."""
        return [c.subject_id for c in self.info]

    @property
    def centiloids(self) -> np.ndarray:
        """Centiloid per case (NaN where unknown)."""
        return np.array([c.centiloid for c in self.info], dtype=float)

    @property
    def tracer_rows(self) -> np.ndarray:
        """PET harmonisation row per case (:func:`AmyloidKDLib.models.harmonization.tracer_index`)."""
        return self._tracer_rows.copy()

    def has_pet(self, indices: Sequence[int] | None = None) -> bool:
        """Whether every case (of ``indices``) has a PET stack: the teacher needs them all."""
        chosen = range(len(self)) if indices is None else indices
        return all(self.pet[i] is not None for i in chosen)

    def __getitem__(self, index: int) -> dict[str, Any]:
        mri = self.mri[index].float()
        pet = self.pet[index]
        return {"index": index, "mri": mri,
                "pet": pet.float() if pet is not None else torch.zeros_like(mri),
                "has_pet": pet is not None,
                "label": torch.tensor(float(self.info[index].label)),
                "centiloid": torch.tensor(self.info[index].centiloid, dtype=torch.float32),
                "tracer": torch.tensor(self._tracer_rows[index], dtype=torch.long)}
