"""``amyloidkd ceilings``: how much amyloid signal a synthetic cohort's MRI carries.

Generates a phantom cohort (2 mm MRI, T1w only, like the demo's), then prints the ladder's
ceilings: the generator's oracle AUC (a cross-validated logistic regression on the noise-free
true MRI-visible effects: the best any MRI measure can do), the regional read-out (the
classic volumetric peer: 100 regional grey-matter measures, logistic regression), and the
linear probes of the prepared slices and of the frozen encoder's features (subject-grouped
CV). All go to ``DIR/ceilings.json``. A trained MRI model should beat the regional read-out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from AmyloidKDLib.atomic import write_text_atomic
from Training.ceilings import MEANINGS, cohort_ceilings, format_ladder


def _same_cohort(folder: Path, subjects: int, seed: int, phantom: Any) -> bool:
    """Whether ``folder`` already holds this cohort (same size, seed and knobs): reuse it."""
    try:
        info = json.loads((folder / "ground_truth" / "cohort.json").read_text())
    except (OSError, ValueError):
        return False
    return ((folder / "manifest.csv").is_file() and info.get("n_subjects") == subjects
            and info.get("seed") == seed and info.get("config") == phantom.to_dict())


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``ceilings`` subcommand."""
    parser = subparsers.add_parser("ceilings", help="oracle and linear-probe AUC of a synthetic cohort",
                                   description=__doc__.split("\n\n")[1] if __doc__ else None)
    parser.add_argument("--subjects", type=int, default=100, help="subjects in the cohort (default 100)")
    parser.add_argument("--seed", type=int, default=1001, help="cohort seed (default 1001)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="folder: cohort/, cache/ and ceilings.json")
    parser.add_argument("--config", default="cpu", metavar="NAME_OR_FILE",
                        help="training preset or file used to prepare the slices (default: cpu)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting (repeatable): a PhantomConfig knob "
                             "(no dot: --set mri_effect_scale=2) or a run setting used to "
                             "prepare the slices (dotted: --set data.jobs=1)")
    parser.set_defaults(func=run)


def phantom_config(overrides: list[str]) -> Any:
    """The ceilings cohort's PhantomConfig: 2 mm, T1w only, then ``key=value`` overrides."""
    import yaml

    from AmyloidKDLib.errors import ConfigError
    from AmyloidKDLib.phantom import PhantomConfig

    values: dict[str, Any] = {"mri_spacing_mm": 2.0, "contrasts": ["T1w"]}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--phantom-set wants KEY=VALUE, got {item!r}")
        values[key.strip()] = yaml.safe_load(value)
    return PhantomConfig.from_dict(values)


def run(args: argparse.Namespace) -> int:
    """Generate, prepare, measure; print both AUCs and write ``ceilings.json``."""
    from AmyloidKDLib.phantom import generate_cohort, sample_cohort
    from Training.config import load_config
    from Training.readouts import regional_cross_validation
    from Training.workflow import CohortSource, build_dataset, load_records

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    phantom = phantom_config([o for o in args.overrides if "." not in o.partition("=")[0]])
    progress = args.progress == "bar"
    manifest = out / "cohort" / "manifest.csv"
    if not _same_cohort(out / "cohort", args.subjects, args.seed, phantom):
        manifest = generate_cohort(out / "cohort", args.subjects, args.seed, "manifest", phantom,
                                   overwrite=True, progress=progress)
    overrides = [f"data.cache_dir={out / 'cache'}"] + [
        o for o in args.overrides if "." in o.partition("=")[0]]
    if not progress:
        overrides.append("engine.progress=false")
    config = load_config(args.config, overrides)
    records = load_records(CohortSource(manifest=str(manifest)), config)
    dataset = build_dataset(config, records, out)
    sessions = sample_cohort(args.subjects, args.seed, phantom)  # the truth the images came from
    regional = regional_cross_validation(config, dataset, records, config.cache_root(out), progress)
    result = cohort_ceilings(config, dataset, sessions, regional=regional)
    result.update(subjects=args.subjects, seed=args.seed, phantom=phantom.to_dict())
    print(format_ladder(result, {}))
    for key in ("oracle_auc", "regional_auc", "probe_auc", "feature_probe_auc"):
        if result.get(key) is not None:
            print(f"- {key}: {MEANINGS[key]}")
    print(f"{result['n_cases']} cases, {result['n_positive']} amyloid-positive, "
          f"{result['n_subjects']} subjects")
    write_text_atomic(out / "ceilings.json", json.dumps(result, indent=1))
    print(f"written: {out / 'ceilings.json'}")
    return 0
