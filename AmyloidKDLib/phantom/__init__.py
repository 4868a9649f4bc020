"""Synthetic PET/MRI cohorts built on the real MNI152 2009 template (the embedded default data).

Real OASIS-3 and ADNI data need credentials, so the demo, the tests and the benchmarks use a
cohort this package makes in minutes. It behaves like the real problem: amyloid PET shows the
amyloid burden clearly (cortical SUVR in the regions where amyloid accumulates first rises with
Centiloid), MRI shows it only weakly (temporo-parietal and hippocampal grey-matter loss with a slope and a
pattern of its own per subject, and ventricular enlargement, mixed with age, white-matter
lesions and random cortical loss unrelated to amyloid), the Centiloid and label are a noisy
PET measurement (labels near the 20 Centiloid threshold are uncertain), and some subjects
come back for several sessions. ``docs/synthetic_cohort.md`` describes the model (v2).

Each subject gets its own smooth deformation of the template; each scan its own rigid pose,
grid and (sometimes) a non-RAS storage orientation, as scanners write them. The cohort is
written in the two layouts a real user prepares (see ``docs/data_layouts.md``): an OASIS-3
style tree with the OASIS-3 CSVs, and a plain manifest CSV. Everything is deterministic per
seed; the ground truth of every session (Centiloid, atrophy, poses, deformation) is saved
next to the images, so tests can check the images against it.

Modules, in the order a cohort is made: ``config`` (the knobs), ``truth`` (per-subject and
per-session draws), ``ceilings`` (the generator's own best MRI measure), ``geometry`` (scan -> MNI mapping), ``anatomy`` (template maps),
``synthesis`` (images), ``writing`` (files and CSVs), ``measure`` (read-outs for tests and
benchmarks).
"""

from AmyloidKDLib.phantom.anatomy import (ATROPHY_REGIONS, EARLY_AMYLOID_REGIONS, TemplateMaps,
                                          build_template_maps, region_masks)
from AmyloidKDLib.phantom.config import (PHANTOM_CONTRASTS, TRACERS, PhantomConfig,
                                         centiloid_to_suvr, mixture_weight)
from AmyloidKDLib.phantom.geometry import BRAIN_CENTRE_MM, SessionGeometry
from AmyloidKDLib.phantom.measure import measure_cohort
from AmyloidKDLib.phantom.synthesis import (FLAIR_TISSUE, T2_TISSUE, subject_displacement,
                                            synthesize_mri, synthesize_pet)
from AmyloidKDLib.phantom.ceilings import oracle_auc, oracle_features
from AmyloidKDLib.phantom.truth import (ATROPHY_REGION_NAMES, GENERATOR_VERSION, SessionTruth,
                                        SubjectTruth, sample_cohort, sample_sessions,
                                        sample_subject, subject_id_for)
from AmyloidKDLib.phantom.writing import (CONTRAST_COLUMNS, LAYOUTS, MANIFEST_COLUMNS,
                                          OASIS_CENTILOID_COLUMNS, OASIS_CENTILOID_CSV,
                                          OASIS_CLINICAL_CSV, OASIS_DEMOGRAPHICS_CSV,
                                          generate_cohort, mri_relpath, pet_relpath, write_scan)

__all__ = [
    "ATROPHY_REGIONS", "ATROPHY_REGION_NAMES", "BRAIN_CENTRE_MM", "GENERATOR_VERSION", "CONTRAST_COLUMNS", "EARLY_AMYLOID_REGIONS",
    "FLAIR_TISSUE", "LAYOUTS", "MANIFEST_COLUMNS", "OASIS_CENTILOID_COLUMNS",
    "OASIS_CENTILOID_CSV", "OASIS_CLINICAL_CSV", "OASIS_DEMOGRAPHICS_CSV", "PHANTOM_CONTRASTS",
    "T2_TISSUE", "TRACERS", "PhantomConfig", "SessionGeometry", "SessionTruth", "SubjectTruth",
    "TemplateMaps", "build_template_maps", "centiloid_to_suvr", "generate_cohort",
    "measure_cohort", "mixture_weight", "mri_relpath", "oracle_auc", "oracle_features", "pet_relpath", "region_masks",
    "sample_cohort", "sample_sessions", "sample_subject", "subject_displacement",
    "subject_id_for", "synthesize_mri", "synthesize_pet", "write_scan",
]
