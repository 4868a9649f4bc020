"""Does the saliency point at the phantom's amyloid-related regions? (issue 28, point 6)

Phantom subjects have known amyloid-linked atrophy regions (``phantom.anatomy.ATROPHY_REGIONS``:
spheres at MNI coordinates, both hemispheres). For each subject the model's saliency in MNI space
is scored by its ROC AUC for telling those regions' brain voxels from the rest of the brain, next
to two maps that know nothing of the subject: a random map (AUC ~0.5) and an uninformed one (a
broad Gaussian at the brain's centre, the shape a coarse CAM tends to take). Prints a table.

    PYTHONPATH=$PWD python Testing/benchmarks/bench_localisation.py \
        [--checkpoint AmyloidKD/Resources/Models/synthetic-demo] [--subjects 8] [--seed 11] \
        [--methods gradcam,gradient-x-input] [--target predicted|positive]

``--checkpoint`` takes any student checkpoint, e.g. the one ``amyloidkd demo --out DIR`` trains
(``DIR/checkpoints/student``). Each subject's model column is given per saliency method.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def atrophy_mask(shape, affine) -> np.ndarray:
    """Voxels of the grid inside any atrophy sphere (both hemispheres)."""
    from AmyloidKDLib.phantom.anatomy import ATROPHY_REGIONS

    ijk = np.indices(shape).reshape(3, -1)
    world = (affine @ np.r_[ijk, np.ones((1, ijk.shape[1]))])[:3]
    inside = np.zeros(ijk.shape[1], bool)
    for (x, y, z), radius in ATROPHY_REGIONS.values():
        for side in (1.0, -1.0):
            inside |= np.linalg.norm(world - np.array([[side * x], [y], [z]]), axis=0) <= radius
    return inside.reshape(shape)


def uninformed_map(brain: np.ndarray, sigma_voxels: float = 12.0) -> np.ndarray:
    centre = np.array(np.nonzero(brain)).mean(axis=1)
    ijk = np.indices(brain.shape).reshape(3, -1)
    return np.exp(-((ijk - centre[:, None]) ** 2).sum(axis=0) / (2 * sigma_voxels ** 2)).reshape(brain.shape)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(REPO / "AmyloidKD" / "Resources" / "Models" / "synthetic-demo"))
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--methods", default="gradcam,gradient-x-input",
                        help="saliency methods to score, comma-separated (AmyloidKDLib.saliency.SALIENCY_METHODS)")
    parser.add_argument("--target", default="predicted", choices=("predicted", "positive"),
                        help="the class the maps explain: the predicted one (as predict does) or always "
                             "amyloid positivity")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]

    from nilearn.datasets import load_mni152_brain_mask
    from sklearn.metrics import roc_auc_score

    from AmyloidKDLib.inference import Predictor
    from AmyloidKDLib.saliency import SaliencyConfig
    from AmyloidKDLib.phantom import PhantomConfig, generate_cohort
    from AmyloidKDLib.volume import load_volume

    predictors = {m: Predictor(args.checkpoint, device="cpu", saliency_config=SaliencyConfig(method=m, target=args.target)) for m in methods}
    rng = np.random.default_rng(args.seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="amyloidkd-localisation-") as work:
        config = PhantomConfig(mri_spacing_mm=2.0, pet_spacing_mm=4.0, contrasts=("T1w",),
                               longitudinal_share=0.0, montage_subjects=0)
        manifest = Path(generate_cohort(Path(work) / "cohort", args.subjects, args.seed, "manifest", config=config,
                                        overwrite=True, progress=False))
        cases = list(csv.DictReader(manifest.open(newline="", encoding="utf-8")))
        for case in cases:
            started = time.perf_counter()
            mri = load_volume(manifest.parent / case["t1w"], "T1w")
            results = {m: predictor.predict(mri) for m, predictor in predictors.items()}
            result = results[methods[0]]
            saliency = result.saliency_mni
            mask_image = load_mni152_brain_mask(resolution=2)
            if mask_image.shape != saliency.shape or not np.allclose(mask_image.affine, saliency.affine, atol=1e-3):
                raise SystemExit("the saliency's MNI grid is not nilearn's 2 mm grid; adapt the benchmark")
            brain = np.asarray(mask_image.dataobj) > 0
            truth = atrophy_mask(saliency.shape, saliency.affine)[brain]
            maps = {**{m: np.asarray(r.saliency_mni.data)[brain] for m, r in results.items()},
                    "random": rng.random(int(brain.sum())), "uninformed": uninformed_map(brain)[brain]}
            rows.append({"subject": case["subject_id"], "label": int(case["label"]),
                         "centiloid": float(case["centiloid"]), "p": result.probability,
                         **{name: roc_auc_score(truth, values) for name, values in maps.items()},
                         "seconds": time.perf_counter() - started})
    print(f"checkpoint: {args.checkpoint}; {len(rows)} phantom subjects (seed {args.seed}); maps explain the "
          f"{args.target} class; "
          "AUC of each map for the atrophy regions' voxels vs the rest of the brain (MNI, 2 mm)")
    columns = [*methods, "random", "uninformed"]
    print("| subject | label | centiloid | p(positive) | " + " | ".join(columns) + " |")
    print("| --- " * (4 + len(columns)) + "|")
    for row in rows:
        print(f"| {row['subject']} | {row['label']} | {row['centiloid']:.1f} | {row['p']:.3f} | "
              + " | ".join(f"{row[c]:.3f}" for c in columns) + " |")
    for group, members in (("all", rows), ("positive", [r for r in rows if r["label"] == 1])):
        if members:
            print(f"| median, {group} ({len(members)}) | | | | "
                  + " | ".join(f"{np.median([r[c] for r in members]):.3f}" for c in columns) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
