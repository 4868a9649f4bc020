"""Rebuild the *synthetic* demo checkpoint that ships with the Slicer module.

    PYTHONPATH=$PWD python Testing/slicer/build_demo_checkpoint.py

writes ``AmyloidKD/Resources/Models/synthetic-demo/`` (``model.safetensors`` +
``checkpoint.json``): a light student (MobileNetV3-Small, the ``cpu`` preset) distilled from
a small teacher, both trained for a few epochs on a phantom cohort made from the MNI152
template with a fixed seed. It lets a new user press Apply right after installing; it is
trained on synthetic data only and says nothing about real patients. The command line and
the settings are recorded in ``checkpoint.json`` (``provenance``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TARGET = REPO / "AmyloidKD" / "Resources" / "Models" / "synthetic-demo"
COMMAND = "PYTHONPATH=$PWD python Testing/slicer/build_demo_checkpoint.py"
MAX_BYTES = 8 * 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    """Phantom cohort -> teacher -> light student -> the module's demo checkpoint folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1].strip())
    parser.add_argument("--subjects", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--teacher-epochs", type=int, default=4)
    parser.add_argument("--light-epochs", type=int, default=6)
    parser.add_argument("--out", type=Path, default=TARGET)
    parser.add_argument("--work", type=Path, default=None, help="keep the cohort and run here (default: temporary)")
    args = parser.parse_args(argv)

    from AmyloidKDLib.atomic import write_json_atomic
    from AmyloidKDLib.phantom import PhantomConfig, generate_cohort

    started = time.monotonic()
    work = args.work or Path(tempfile.mkdtemp(prefix="amyloidkd-demo-ckpt-"))
    try:
        manifest = generate_cohort(work / "cohort", args.subjects, args.seed, "manifest",
                                   PhantomConfig(mri_spacing_mm=2.0, contrasts=("T1w",)), overwrite=True,
                                   progress=False)
        common = [sys.executable, "-c", "import sys; from Training.cli import main; sys.exit(main())", "train"]
        settings = ["--manifest", str(manifest), "--out", str(work / "run"), "--config", "cpu", "--device", "cpu",
                    "--no-progress", "--set", f"seed={args.seed}", "--set", f"teacher.epochs={args.teacher_epochs}",
                    "--set", f"light.epochs={args.light_epochs}"]
        for phase in ("teacher", "light"):
            subprocess.run([*common, phase, *settings], check=True, cwd=REPO)
        trained = work / "run" / "checkpoints" / "light"
        if not (trained / "checkpoint.json").is_file():
            candidates = sorted((work / "run" / "checkpoints").iterdir())
            raise SystemExit(f"no light-student checkpoint in {work / 'run' / 'checkpoints'}: {candidates}")
        size = (trained / "model.safetensors").stat().st_size
        if size > MAX_BYTES:
            raise SystemExit(f"the light student's weights are {size / 2**20:.1f} MiB, over the 8 MiB limit")

        info = json.loads((trained / "checkpoint.json").read_text(encoding="utf-8"))
        provenance = dict(info.get("provenance") or {})
        provenance.update({
            "name": "AmyloidKD synthetic demo (light student)",
            "synthetic": True,
            "trained_on": (f"synthetic phantom cohort only ({args.subjects} subjects from the MNI152 template, "
                           f"seed {args.seed}); says nothing about real patients"),
            "rebuild_command": (f"{COMMAND} --subjects {args.subjects} --seed {args.seed} "
                                f"--teacher-epochs {args.teacher_epochs} --light-epochs {args.light_epochs}"),
            "build_seconds": round(time.monotonic() - started, 1),
        })
        info["provenance"] = provenance
        staging = args.out.with_name(args.out.name + ".part")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        shutil.copy2(trained / "model.safetensors", staging / "model.safetensors")
        write_json_atomic(staging / "checkpoint.json", info)
        shutil.rmtree(args.out, ignore_errors=True)
        staging.rename(args.out)
        print(f"{args.out}: {size / 2**20:.1f} MiB, built in {provenance['build_seconds']:.0f} s")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
