"""Headless batch prediction inside 3D Slicer.

    Slicer --no-main-window --python-script AmyloidKDBatch.py -- \
        --input DIR_OR_CSV --out DIR [--checkpoint CKPT] [--device auto|cpu|cuda] \
        [--skull-strip hd-bet-v1|hd-bet|none] [--timeout SECONDS] [--tracer NAME] [--no-scene]

Each MRI is loaded as a volume node and run through ``AmyloidKDLogic.process`` (the same
path as the Apply button). Per case, ``OUT/<case>/`` receives the prediction command's files
(results.csv, saliency NIfTIs, top-region label map, overview PNG) and, unless ``--no-scene``,
a Slicer scene ``<case>.mrb`` with the MRI and both overlays for review. ``OUT/batch_results.csv``
summarises all cases. Exit code: 0 all cases ok, 1 some failed, 2 bad usage or input,
3 the batch itself failed (an unexpected error; the traceback is on stderr), 130 interrupted (Ctrl-C).

Slicer does not exit by itself after ``--python-script``: this script always ends it, with
``slicer.util.exit`` in a ``finally``. The application still needs a display; on a machine
without one, run it as ``xvfb-run -a Slicer --no-main-window --python-script ...`` or with
``QT_QPA_PLATFORM=offscreen``.
"""

import logging
import sys
import time
import traceback
from pathlib import Path

#: Exit code when something escapes run_batch (import error, full disk, ...).
EXIT_BATCH_ERROR = 3
#: Exit code after Ctrl-C (128 + SIGINT, as shells report it; the predict command's too).
EXIT_INTERRUPTED = 130


def run_batch(argv: list) -> int:
    """Process every case named by ``argv``; return the exit code."""
    import slicer

    moduleDir = str(Path(slicer.util.modulePath("AmyloidKD")).parent)
    if moduleDir not in sys.path:
        sys.path.insert(0, moduleDir)
    from AmyloidKDModuleLib.batch import (
        EXIT_USAGE,
        BatchRow,
        batch_exit_code,
        centiloid_cells,
        list_cases,
        parse_batch_arguments,
        pet_of_cases,
        write_batch_summary,
    )
    from AmyloidKDModuleLib import scene
    from AmyloidKDModuleLib.compatibility import python_problem
    from AmyloidKDModuleLib.errors import ModuleError
    from AmyloidKDModuleLib.runner import case_name

    problem = python_problem()
    if problem:
        print(f"AmyloidKDBatch: error: {problem}", file=sys.stderr)
        return EXIT_USAGE

    try:
        args = parse_batch_arguments(argv)
    except SystemExit as exc:  # argparse already printed the usage and the problem
        return EXIT_USAGE if exc.code else 0
    checkpoint = args.checkpoint
    try:
        cases = list_cases(args.input)
        pets = pet_of_cases(args.input, args.tracer)
        if checkpoint is None:  # never silently: say which model runs, and check it is still there
            checkpoint = slicer.util.settingsValue("AmyloidKD/checkpoint", "")
            if not str(checkpoint).strip():
                raise ModuleError("no checkpoint: pass --checkpoint (the student checkpoint folder).")
            print(f"AmyloidKDBatch: no --checkpoint given: using the one last used in the module, {checkpoint}",
                  file=sys.stderr)
        from AmyloidKDModuleLib.modelinfo import read_model_info

        info = read_model_info(checkpoint)  # a remembered path an update moved away fails here, clearly
        if info.synthetic:
            print(f"AmyloidKDBatch: warning: {info.notice}", file=sys.stderr)
        from AmyloidKD import AmyloidKDLogic  # the module file, already loaded by Slicer

        logic = AmyloidKDLogic()
        logic.setupPythonRequirements(args.skull_strip, askConfirmation=False, checkpoint=checkpoint)
    except ModuleError as exc:
        print(f"AmyloidKDBatch: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"AmyloidKDBatch: error: cannot create the output folder {args.out}: {exc}", file=sys.stderr)
        return EXIT_USAGE

    rows = []
    try:
        for index, path in enumerate(cases, start=1):
            case = case_name(path)
            caseOut = args.out / case
            print(f"AmyloidKDBatch: [{index}/{len(cases)}] {case}", flush=True)
            started = time.monotonic()
            slicer.mrmlScene.Clear()
            try:
                mriNode: "vtkMRMLScalarVolumeNode" = slicer.util.loadVolume(str(path), properties={"name": case, "show": False})
                if not args.no_scene:  # no layout without a main window: the saved scene gets Slicer's views
                    scene.ensure_slice_views(slicer.mrmlScene)
                result = logic.process(mriNode, checkpoint=checkpoint, device=args.device, skullStrip=args.skull_strip,
                                       showResult=not args.no_scene, outputDirectory=caseOut, timeout=args.timeout)
                row = BatchRow(case, str(path), "ok", result.probability, result.label, result.threshold,
                               **centiloid_cells(caseOut))
                print(f"AmyloidKDBatch:   probability {result.probability:.3f} -> {result.label_text}", flush=True)
                if path in pets:  # the manifest names a PET: SUVR and Centiloid in the standard VOIs
                    petPath, tracer = pets[path]
                    petNode: "vtkMRMLScalarVolumeNode" = slicer.util.loadVolume(str(petPath), properties={"name": f"{case} PET", "show": False})
                    try:
                        quantified = logic.quantifyPet(mriNode, petNode, tracer, timeout=args.timeout)
                        row.tracer, row.suvr, row.centiloid = quantified.tracer, f"{quantified.suvr:.4f}", f"{quantified.centiloid:.1f}"
                        print(f"AmyloidKDBatch:   PET SUVR {row.suvr}, Centiloid {row.centiloid} ({tracer})", flush=True)
                    except Exception as exc:  # the prediction stands; the case is failed with the PET's reason
                        row.tracer, row.status = tracer, "failed"
                        row.error = "PET quantification: " + (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                if not args.no_scene:
                    slicer.util.saveScene(str(caseOut / f"{case}.mrb"))
                row.seconds = round(time.monotonic() - started, 2)
                rows.append(row)
            except Exception as exc:  # one bad case must not stop the batch; it is recorded with its reason
                logging.exception(f"AmyloidKDBatch: {case} failed")
                rows.append(BatchRow(case, str(path), "failed", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                                     seconds=round(time.monotonic() - started, 2)))
    except KeyboardInterrupt:  # Ctrl-C: the cases finished so far are still summarised
        write_batch_summary(rows, args.out / "batch_results.csv")
        raise
    summary = write_batch_summary(rows, args.out / "batch_results.csv")
    failed = sum(r.status != "ok" for r in rows)
    print(f"AmyloidKDBatch: {len(rows) - failed} ok, {failed} failed; summary in {summary}", flush=True)
    return batch_exit_code(rows)


def _slicer_exit():
    """``slicer.util.exit`` inside the Slicer application, else ``sys.exit`` (plain Python, Slicer's core)."""
    try:
        import slicer

        application = getattr(slicer, "app", None)
        if hasattr(slicer, "modules") and callable(getattr(application, "commandOptions", None)):
            return slicer.util.exit
    except BaseException:  # noqa: BLE001 - no usable Slicer: end this Python instead
        pass
    return sys.exit


def main(argv: list, exit_function=None) -> int:
    """Run the batch and always end Slicer: ``exit_function(code)`` (default ``slicer.util.exit``)
    is called in a ``finally``, with a non-zero code for any error, whatever escapes."""
    status = EXIT_BATCH_ERROR
    try:
        result = run_batch(argv)
        status = result if isinstance(result, int) else EXIT_BATCH_ERROR
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_BATCH_ERROR)
    except KeyboardInterrupt:  # Ctrl-C: the running case was cancelled (process tree stopped) on the way out
        print("AmyloidKDBatch: interrupted", file=sys.stderr)
        status = EXIT_INTERRUPTED
    except BaseException as exc:  # noqa: BLE001 - reported, then Slicer is ended with a failure code
        print(f"AmyloidKDBatch: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
        status = EXIT_BATCH_ERROR
    finally:
        if exit_function is None:
            exit_function = _slicer_exit()
        exit_function(status)
    return status


if __name__ == "__main__":
    main(sys.argv[1:])
