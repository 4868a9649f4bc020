"""End-to-end prediction time per case (1 mm T1 -> all outputs), split by step, with peak memory.

For the BiomedCLIP-size student (ViT-B/16 + LoRA, 15 slices of 224 px; random weights, which
time the same as trained ones) and the light student (CNN), each with the ``paper``
preparation (HD-BET v1, N4, affine registration at 1 mm) and the ``fast`` one (skull-free
input, coarse registration at 2 mm). Inputs are phantom subjects at 1 mm: with a skull for
``paper``, skull-free for ``fast``. Every configuration runs in a fresh process, so its peak
RSS and its cold start are its own.

    python Testing/benchmarks/bench_inference.py [--threads 2] [--cases 1]
           [--preps paper fast] [--students biomedclip light] [--work DIR]

Targets (issue 7), on 2 cores: <= 40 s per case with the BiomedCLIP-size student, <= 30 s with
the light student, peak RSS <= 4 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path[:0] = [str(REPO)]

STUDENTS = {"biomedclip": ("paper", "student"), "light": ("paper", "light_student")}
TARGET_SECONDS = {"biomedclip": 40.0, "light": 30.0}
TARGET_RSS_GB = 4.0
PHANTOM_SEED = 7


def make_inputs(work: Path, n_cases: int) -> dict[str, list[str]]:
    """Phantom T1s at 1 mm: with a skull (for ``paper``) and without (for ``fast``)."""
    from AmyloidKDLib.phantom import PhantomConfig, generate_cohort

    inputs = {}
    for prep, skull in (("paper", True), ("fast", False)):
        folder = work / f"phantom_{prep}"
        manifest = folder / "manifest.csv"
        if not manifest.exists():
            config = PhantomConfig(skull=skull, contrasts=("T1w",), mri_spacing_mm=1.0)
            generate_cohort(folder, max(n_cases, 1), PHANTOM_SEED, "manifest", config,
                            overwrite=True, progress=False)
        import csv

        with open(manifest, newline="") as handle:
            paths = [row["t1w"] for row in csv.DictReader(handle) if row.get("t1w")]
        inputs[prep] = [str((folder / p) if not Path(p).is_absolute() else Path(p))
                        for p in dict.fromkeys(paths)][:n_cases]
    return inputs


def run_one(prep: str, student: str, inputs: list[str], work: Path, threads: int,
            deterministic: bool) -> dict:
    """One configuration, in this (fresh) process: build, save, load, predict, write outputs."""
    import torch

    torch.set_num_threads(threads)
    warnings.simplefilter("ignore")
    from AmyloidKDLib.checkpoint import save_checkpoint
    from AmyloidKDLib.commands.predict import case_name, write_case_outputs
    from AmyloidKDLib.inference import Predictor
    from AmyloidKDLib.models import ModelConfig, build_model
    from AmyloidKDLib.pipeline import PrepConfig
    from AmyloidKDLib.slicing import SliceConfig
    from AmyloidKDLib.volume import load_volume

    preset, kind = STUDENTS[student]
    config = ModelConfig.preset(preset, kind, weights="none")
    checkpoint = work / f"ckpt_{student}_{prep}"
    if not (checkpoint / "checkpoint.json").exists():
        torch.manual_seed(0)
        save_checkpoint(checkpoint, build_model(config), config,
                        prep_config=PrepConfig.preset(prep).to_dict(),
                        slice_config=SliceConfig(n_slices=config.n_slices,
                                                 image_size=config.image_size).to_dict(),
                        threshold=0.5, provenance={"note": "random weights, benchmark only"})
    start = time.perf_counter()
    predictor = Predictor(checkpoint, device="cpu", deterministic=deterministic)
    load_seconds = time.perf_counter() - start

    cases = []
    out = work / f"out_{prep}_{student}"
    for path in inputs:
        started, cpu_started = time.perf_counter(), time.process_time()
        mri = load_volume(path)
        read = time.perf_counter() - started
        result = predictor.predict(mri)
        written = time.perf_counter()
        write_case_outputs(result, out, case_name(Path(path)))
        write = time.perf_counter() - written
        cases.append({"read": read, "write": write, "total": time.perf_counter() - started,
                      "cpu": time.process_time() - cpu_started, "load_average": os.getloadavg()[0],
                      **{k: v for k, v in result.timings.items() if k != "total"}})
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"prep": prep, "student": student, "encoder": config.encoder,
            "parameters": sum(p.numel() for p in predictor.model.parameters()),
            "load_checkpoint": load_seconds, "cases": cases, "peak_rss_gb": peak_kb / 2**20,
            "threads": threads, "deterministic": deterministic}


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else float("nan")


def print_table(results: list[dict]) -> None:
    """One row per configuration: median seconds per step and per case, peak RSS, targets."""
    header = (f"{'prep':6} {'student':10} {'encoder':22} {'load':>6} {'read':>6} {'prepare':>8} "
              f"{'model':>6} {'saliency':>8} {'write':>6} {'total':>7} {'CPU s':>6} {'RSS GB':>7} "
              f"{'load avg':>8}  target")
    print(header)
    print("-" * len(header))
    for r in results:
        if "error" in r:
            print(f"{r['prep']:6} {r['student']:10} failed: {r['error']}")
            continue
        m = {key: _median([c.get(key, 0.0) for c in r["cases"]])
             for key in ("read", "prepare", "model", "saliency", "write", "total", "cpu",
                         "load_average")}
        ok_time = m["total"] <= TARGET_SECONDS[r["student"]]
        ok_rss = r["peak_rss_gb"] <= TARGET_RSS_GB
        verdict = (f"<= {TARGET_SECONDS[r['student']]:.0f} s {'met' if ok_time else 'MISSED'}, "
                   f"<= {TARGET_RSS_GB:.0f} GB {'met' if ok_rss else 'MISSED'}")
        print(f"{r['prep']:6} {r['student']:10} {r['encoder']:22} {r['load_checkpoint']:6.1f} "
              f"{m['read']:6.1f} {m['prepare']:8.1f} {m['model']:6.1f} {m['saliency']:8.1f} "
              f"{m['write']:6.1f} {m['total']:7.1f} {m['cpu']:6.1f} {r['peak_rss_gb']:7.2f} "
              f"{m['load_average']:8.1f}  {verdict}")
    print("(seconds of wall time per case; CPU s = CPU time of all threads; load avg = the "
          "machine's 1-min load during the case: above the thread count, other work competed)")
    print()
    print("preparation steps (median seconds):")
    for r in results:
        if "error" in r:
            continue
        steps = sorted({k for c in r["cases"] for k in c if k.startswith("prepare/")})
        parts = ", ".join(f"{k.split('/', 1)[1]} {_median([c.get(k, 0.0) for c in r['cases']]):.1f}"
                          for k in steps)
        print(f"  {r['prep']:6} {r['student']:10} {parts}")


def main(argv: list[str] | None = None) -> int:
    """Run every requested configuration in its own process and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (ITK: see below)")
    parser.add_argument("--cases", type=int, default=1, help="phantom cases per configuration")
    parser.add_argument("--preps", nargs="+", default=["paper", "fast"], choices=["paper", "fast"])
    parser.add_argument("--students", nargs="+", default=list(STUDENTS), choices=list(STUDENTS))
    parser.add_argument("--multithreaded-itk", action="store_true",
                        help="let ANTs use --threads threads (faster, not bit-for-bit repeatable); "
                             "default: the Predictor's deterministic single-threaded ITK")
    parser.add_argument("--work", type=Path, default=None, help="keep inputs/outputs here")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--table", type=Path, default=None,
                        help="only print the table of a --json file written earlier")
    parser.add_argument("--one", nargs=3, metavar=("PREP", "STUDENT", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    if args.table:
        print_table(json.loads(args.table.read_text()))
        return 0
    if args.one:
        prep, student, spec = args.one
        spec = json.loads(Path(spec).read_text())
        result = run_one(prep, student, spec["inputs"], Path(spec["work"]), args.threads,
                         not args.multithreaded_itk)
        print("BENCH_RESULT " + json.dumps(result))
        return 0

    work = args.work or Path(tempfile.mkdtemp(prefix="amyloidkd-bench-inference-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    inputs = make_inputs(work, args.cases)
    print(f"inputs ready in {time.perf_counter() - started:.0f} s under {work}", file=sys.stderr)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    if args.multithreaded_itk:
        env["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)
    else:
        env.pop("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", None)
    results = []
    for prep in args.preps:
        for student in args.students:
            spec = work / f"spec_{prep}_{student}.json"
            spec.write_text(json.dumps({"inputs": inputs[prep], "work": str(work)}))
            command = [sys.executable, __file__, "--threads", str(args.threads),
                       "--one", prep, student, str(spec)]
            if args.multithreaded_itk:
                command.append("--multithreaded-itk")
            print(f"running {prep} / {student} ...", file=sys.stderr, flush=True)
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            line = next((l for l in done.stdout.splitlines() if l.startswith("BENCH_RESULT ")), None)
            if done.returncode != 0 or line is None:
                tail = " ".join(done.stderr.strip().splitlines()[-1:])
                results.append({"prep": prep, "student": student, "error": tail})
            else:
                results.append(json.loads(line.removeprefix("BENCH_RESULT ")))
    itk = "multi-threaded" if args.multithreaded_itk else "single-threaded (deterministic)"
    print(f"\nAmyloidKD prediction, {args.cases} phantom case(s) at 1 mm, {args.threads} torch "
          f"threads, ITK {itk}, CPU\n")
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
