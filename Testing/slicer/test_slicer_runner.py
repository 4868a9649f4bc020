"""The Slicer module's non-Slicer part, with real subprocesses.

The prediction command is replaced by a small stand-in package named ``AmyloidKDLib`` in a
temporary folder (put first on PYTHONPATH by the runner's own ``library_environment``), so
``python -m AmyloidKDLib predict ...`` really runs, prints progress, writes results.csv,
fails a case, or starts a tree of child processes to cancel - without the model. The
exact command line is also checked against the real library's parser.
"""

from __future__ import annotations

import csv
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "AmyloidKD"))

from AmyloidKDModuleLib import batch, dependencies, runner  # noqa: E402
from AmyloidKDModuleLib.errors import ModuleError  # noqa: E402

STAND_IN = textwrap.dedent('''
    """Stand-in for `python -m AmyloidKDLib predict` (test only): same arguments and outputs."""
    import argparse, csv, os, subprocess, sys, time
    from pathlib import Path

    parser = argparse.ArgumentParser()
    parser.add_argument("command")
    parser.add_argument("input")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--device")
    parser.add_argument("--skull-strip")
    parser.add_argument("--progress")
    args = parser.parse_args()
    source = Path(args.input)
    inputs = sorted(source.iterdir()) if source.is_dir() else [source]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "argv.txt").write_text("\\n".join(sys.argv[1:]))
    print("loading checkpoint", args.checkpoint, file=sys.stderr, flush=True)
    if any(p.name.startswith("hang") for p in inputs):
        here = Path(__file__).parent
        child = subprocess.Popen([sys.executable, str(here / "tree.py"), str(out), "child"])
        while True:
            print("AMYLOIDKD_PROGRESS 0.1000 waiting", flush=True)
            time.sleep(0.2)
    rows, failed = [], False
    for index, path in enumerate(inputs):
        case = path.name.split(".nii")[0]
        print(f"AMYLOIDKD_PROGRESS {index / len(inputs):.4f} {case}: preparing", flush=True)
        print(f"{case}: 50%|#####     | tqdm-like bar", file=sys.stderr, flush=True)
        row = dict(case=case, input=str(path), probability="", label="", threshold="0.6",
                   status="ok", error="", seconds_prepare="0.5", seconds_model="0.25",
                   seconds_saliency="0.125", seconds_total="0.875")
        if case.startswith("broken"):
            row.update(status="failed", error=f"{path} is not a 3D image")
            failed = True
        else:
            probability = len(path.read_bytes()) / 100.0
            row.update(probability=f"{probability:.4f}", label=str(int(probability >= 0.6)))
            for suffix in ("saliency.nii.gz", "saliency_mni.nii.gz", "top_regions.nii.gz", "overview.png"):
                (out / f"{case}_{suffix}").write_bytes(b"x")
        rows.append(row)
        print(f"AMYLOIDKD_PROGRESS {(index + 1) / len(inputs):.4f} {case}: done", flush=True)
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    sys.exit(1 if failed else 0)
''')

TREE = textwrap.dedent('''
    """Test helper: a child that starts a grandchild in the same group and one in a new session."""
    import os, subprocess, sys, time
    from pathlib import Path

    out, role = Path(sys.argv[1]), sys.argv[2]
    if role == "child":
        subprocess.Popen([sys.executable, __file__, str(out), "grandchild"])
        subprocess.Popen([sys.executable, __file__, str(out), "escaped"], start_new_session=True)
    (out / f"{role}.pid").write_text(str(os.getpid()))
    while True:
        time.sleep(0.2)
''')


@pytest.fixture()
def stand_in(tmp_path: Path) -> Path:
    """A folder holding a stand-in ``AmyloidKDLib`` package (its __main__ is the fake CLI)."""
    package = tmp_path / "stand_in" / "AmyloidKDLib"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(STAND_IN)
    (package / "tree.py").write_text(TREE)
    return package.parent


@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    """A folder with the two files a checkpoint folder must hold."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for name in runner.CHECKPOINT_FILES:
        (folder / name).write_text("{}")
    return folder


def _start(stand_in: Path, request: runner.PredictRequest, cwd: Path) -> runner.BackgroundProcess:
    command = runner.build_predict_command(sys.executable, request)
    env = runner.library_environment(os.environ, stand_in)
    return runner.BackgroundProcess.start(command, env=env, cwd=cwd)


def _dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


# --- the command line ---------------------------------------------------------------------


def test_predict_command_is_exactly_the_documented_cli_call(tmp_path):
    request = runner.PredictRequest(tmp_path / "t1.nii.gz", tmp_path / "ckpt", tmp_path / "out",
                                    device="cpu", skull_strip="none")
    assert runner.build_predict_command("/opt/Slicer/bin/PythonSlicer", request) == [
        "/opt/Slicer/bin/PythonSlicer", "-m", "AmyloidKDLib", "predict", str(tmp_path / "t1.nii.gz"),
        "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out"),
        "--device", "cpu", "--skull-strip", "none", "--progress", "lines"]
    without = runner.PredictRequest(tmp_path / "t1.nii.gz", tmp_path / "ckpt", tmp_path / "out", skull_strip=None)
    assert "--skull-strip" not in runner.build_predict_command("python", without)


def test_real_library_parser_accepts_the_command_and_shares_the_contract(tmp_path):
    from AmyloidKDLib import cli
    from AmyloidKDLib.commands import predict

    request = runner.PredictRequest(tmp_path / "t1.nii.gz", tmp_path / "ckpt", tmp_path / "out",
                                    device="cuda", skull_strip="hd-bet")
    args = cli.build_parser().parse_args(runner.build_predict_command("python", request)[3:])
    assert (args.command, args.input, args.checkpoint, args.out) == (
        "predict", str(request.input_path), str(request.checkpoint), str(request.out_dir))
    assert (args.device, args.skull_strip, args.progress) == ("cuda", "hd-bet", "lines")
    assert tuple(predict.RESULT_COLUMNS) == runner.RESULT_COLUMNS
    assert predict.PROGRESS_PREFIX == runner.PROGRESS_PREFIX


@pytest.mark.parametrize("device, skull_strip, word", [("gpu", "none", "device"), ("cpu", "bet", "skull")])
def test_unknown_choices_are_refused_with_the_valid_ones(tmp_path, device, skull_strip, word):
    with pytest.raises(ModuleError, match=word) as info:
        runner.PredictRequest(tmp_path, tmp_path, tmp_path, device=device, skull_strip=skull_strip)
    assert "choose one of" in str(info.value)


def test_library_environment_puts_the_library_first_and_unbuffers(tmp_path):
    env = runner.library_environment({"PYTHONPATH": os.pathsep.join(["/a", str(tmp_path)]), "HOME": "/h"}, tmp_path)
    assert env["PYTHONPATH"].split(os.pathsep) == [str(tmp_path), "/a"]
    assert env["PYTHONUNBUFFERED"] == "1" and env["HOME"] == "/h"


def test_library_parent_directory_finds_this_checkout():
    assert runner.library_parent_directory() == REPO


@pytest.mark.parametrize("line, expected", [
    ("AMYLOIDKD_PROGRESS 0.25 case1: registration", runner.Progress(0.25, "case1: registration")),
    ("AMYLOIDKD_PROGRESS 1 done", runner.Progress(1.0, "done")),
    ("AMYLOIDKD_PROGRESS 0.5000", runner.Progress(0.5, "")),
    ("  AMYLOIDKD_PROGRESS 0.1 leading spaces\n", runner.Progress(0.1, "leading spaces")),
    ("AMYLOIDKD_PROGRESS 1.5 beyond the end", None),
    ("AMYLOIDKD_PROGRESS -0.1 negative", None),
    ("AMYLOIDKD_PROGRESS half done", None),
    ("AMYLOIDKD_PROGRESSX 0.5 other tool", None),
    ("progress 0.5", None),
    ("", None),
])
def test_progress_lines_are_parsed_and_anything_else_is_a_log_line(line, expected):
    assert runner.parse_progress_line(line) == expected


@pytest.mark.parametrize("name, case", [("sub-01_T1w.nii.gz", "sub-01_T1w"), ("a.b.nii", "a.b"),
                                        ("X.NII.GZ", "X"), ("scan.mgz", "scan")])
def test_case_name_strips_nifti_suffixes(name, case):
    assert runner.case_name(Path("/data") / name) == case


def test_checkpoint_is_found_from_its_folder_or_its_json(checkpoint):
    assert runner.resolve_checkpoint(checkpoint) == checkpoint.resolve()
    assert runner.resolve_checkpoint(checkpoint / "checkpoint.json") == checkpoint.resolve()
    (checkpoint / "model.safetensors").unlink()
    with pytest.raises(ModuleError, match="model.safetensors missing"):
        runner.resolve_checkpoint(checkpoint)
    with pytest.raises(ModuleError, match="does not exist"):
        runner.resolve_checkpoint(checkpoint / "nowhere")


# --- running it ---------------------------------------------------------------------------


def test_background_run_streams_progress_and_results_are_read_back(tmp_path, stand_in, checkpoint):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "sub-01.nii.gz").write_bytes(b"a" * 20)
    (inputs / "sub-02.nii").write_bytes(b"b" * 75)
    request = runner.PredictRequest(inputs, checkpoint, tmp_path / "out", device="cpu", skull_strip="none")
    process = _start(stand_in, request, cwd=tmp_path)
    events = []
    assert process.wait(timeout=30, on_event=events.append) == 0

    fractions = [e.progress.fraction for e in events if e.progress]
    assert fractions == [0.0, 0.5, 0.5, 1.0]
    assert process.progress == runner.Progress(1.0, "sub-02: done")
    stderr = [e for e in events if e.stream == "stderr"]
    assert len(stderr) == 3 and all(e.progress is None for e in stderr)
    assert (tmp_path / "out" / "argv.txt").read_text().split("\n") == runner.build_predict_command("x", request)[3:]

    results = runner.read_results(tmp_path / "out")
    assert [r.case for r in results] == ["sub-01", "sub-02"]
    assert [r.probability for r in results] == [0.2, 0.75]
    assert [r.label for r in results] == [0, 1]
    assert [r.label_text for r in results] == ["amyloid negative", "amyloid positive"]
    assert results[1].threshold == 0.6 and results[1].seconds == {
        "prepare": 0.5, "model": 0.25, "saliency": 0.125, "total": 0.875}
    assert all(r.ok and not r.outputs.missing() for r in results)
    assert results[0].outputs.saliency == tmp_path / "out" / "sub-01_saliency.nii.gz"


def test_a_failed_case_is_reported_and_the_others_are_kept(tmp_path, stand_in, checkpoint):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "broken.nii.gz").write_bytes(b"")
    (inputs / "good.nii.gz").write_bytes(b"g" * 90)
    process = _start(stand_in, runner.PredictRequest(inputs, checkpoint, tmp_path / "out"), cwd=tmp_path)
    returncode = process.wait(timeout=30)
    assert returncode == 1
    assert runner.describe_exit(returncode) == "some cases failed (the others were processed)"
    broken, good = runner.read_results(tmp_path / "out")
    assert (broken.ok, broken.probability, broken.label, broken.label_text) == (False, None, None, "no result")
    assert "not a 3D image" in broken.error
    assert broken.outputs.missing() == [broken.outputs.saliency, broken.outputs.saliency_mni,
                                        broken.outputs.top_regions, broken.outputs.overview]
    assert good.ok and good.probability == 0.9


def test_cancel_kills_the_whole_process_tree(tmp_path, stand_in, checkpoint, request):
    hang = tmp_path / "hang.nii.gz"
    hang.write_bytes(b"h")
    out = tmp_path / "out"
    process = _start(stand_in, runner.PredictRequest(hang, checkpoint, out), cwd=tmp_path)
    request.addfinalizer(process.cancel)
    roles = ("child", "grandchild", "escaped")
    deadline = time.monotonic() + 20
    while not all((out / f"{r}.pid").exists() for r in roles):
        assert time.monotonic() < deadline, f"the stand-in did not start its tree: {process.poll()}"
        time.sleep(0.05)
    time.sleep(0.1)  # let each helper finish writing its pid
    pids = {r: int((out / f"{r}.pid").read_text()) for r in roles}
    request.addfinalizer(lambda: [_kill_quietly(p) for p in pids.values()])  # if an assertion fails
    assert os.getpgid(pids["escaped"]) != process.pid  # it left the group: only psutil finds it
    assert process.poll() and process.progress.text == "waiting"
    assert not any(_dead(p) for p in pids.values())

    process.cancel(timeout=2.0)

    assert process.cancelled and process.returncode is not None
    deadline = time.monotonic() + 5
    while not all(_dead(p) for p in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert {r: _dead(p) for r, p in pids.items()} == {r: True for r in roles}
    assert runner.describe_exit(process.returncode, cancelled=True) == "cancelled by the user"
    process.cancel()  # a second cancel is harmless


def test_wait_with_a_timeout_stops_the_run_and_says_so(tmp_path, stand_in, checkpoint):
    hang = tmp_path / "hang.nii.gz"
    hang.write_bytes(b"h")
    process = _start(stand_in, runner.PredictRequest(hang, checkpoint, tmp_path / "out"), cwd=tmp_path)
    with pytest.raises(ModuleError, match="longer than 1 s"):
        process.wait(timeout=1.0)
    assert process.cancelled and process.returncode is not None


def test_a_missing_executable_is_a_clear_error(tmp_path):
    with pytest.raises(ModuleError, match="could not start"):
        runner.BackgroundProcess.start([str(tmp_path / "no-python"), "-c", "pass"])


# --- results.csv --------------------------------------------------------------------------


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def test_results_with_missing_columns_or_values_are_refused(tmp_path):
    with pytest.raises(ModuleError, match="was not written"):
        runner.read_results(tmp_path)
    _write_csv(tmp_path / "results.csv", ["case", "input", "probability"], [["a", "a.nii", "0.1"]])
    with pytest.raises(ModuleError, match="lacks the columns label, threshold"):
        runner.read_results(tmp_path)
    row = ["a", "a.nii", "high", "1", "0.5", "ok", "", "1", "1", "1", "3"]
    _write_csv(tmp_path / "results.csv", list(runner.RESULT_COLUMNS), [row])
    with pytest.raises(ModuleError, match="row 2: column 'probability' holds 'high'"):
        runner.read_results(tmp_path)
    row[2], row[5] = "0.7", "maybe"
    _write_csv(tmp_path / "results.csv", list(runner.RESULT_COLUMNS), [row])
    with pytest.raises(ModuleError, match="neither 'ok' nor 'failed'"):
        runner.read_results(tmp_path)


# --- batch script helpers -----------------------------------------------------------------


def test_batch_arguments_accept_slicers_separator(tmp_path):
    args = batch.parse_batch_arguments(["--", "--input", str(tmp_path), "--out", "o", "--device", "cpu",
                                        "--skull-strip", "none", "--no-scene"])
    assert (args.input, args.out, args.device, args.skull_strip, args.no_scene, args.checkpoint) == (
        tmp_path, Path("o"), "cpu", "none", True, None)
    with pytest.raises(SystemExit):
        batch.parse_batch_arguments(["--input", str(tmp_path), "--out", "o", "--device", "gpu"])


def test_batch_cases_from_a_folder_a_file_or_a_manifest(tmp_path):
    (tmp_path / "b.nii.gz").write_bytes(b"")
    (tmp_path / "a.nii").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("")
    assert batch.list_cases(tmp_path) == [tmp_path / "a.nii", tmp_path / "b.nii.gz"]
    assert batch.list_cases(tmp_path / "a.nii") == [tmp_path / "a.nii"]
    _write_csv(tmp_path / "manifest.csv", ["subject_id", "t1w"], [["s1", "b.nii.gz"], ["s2", str(tmp_path / "a.nii")]])
    assert batch.list_cases(tmp_path / "manifest.csv") == [tmp_path / "b.nii.gz", tmp_path / "a.nii"]


def test_batch_finds_each_manifest_rows_pet_and_tracer(tmp_path):
    for name in ("a.nii", "b.nii", "pa.nii", "pb.nii"):
        (tmp_path / name).write_bytes(b"")
    _write_csv(tmp_path / "m.csv", ["t1w", "pet_path", "tracer"], [["a.nii", "pa.nii", "PiB"], ["b.nii", "pb.nii", ""]])
    assert batch.pet_of_cases(tmp_path / "m.csv", "florbetapir") == {
        tmp_path / "a.nii": (tmp_path / "pa.nii", "PiB"), tmp_path / "b.nii": (tmp_path / "pb.nii", "florbetapir")}
    with pytest.raises(ModuleError, match="names a PET but no tracer; add a tracer column or pass --tracer"):
        batch.pet_of_cases(tmp_path / "m.csv")
    _write_csv(tmp_path / "n.csv", ["t1w"], [["a.nii"]])
    assert batch.pet_of_cases(tmp_path / "n.csv") == {} and batch.pet_of_cases(tmp_path / "a.nii") == {}
    assert batch.parse_batch_arguments(["--input", "m.csv", "--out", "o", "--tracer", "PiB"]).tracer == "PiB"


def test_tracers_offered_in_slicer_are_the_librarys():
    from AmyloidKDLib.centiloid import TRACER_EQUATIONS

    assert set(runner.TRACER_CHOICES) == set(TRACER_EQUATIONS)


def test_batch_input_errors_name_the_problem(tmp_path):
    with pytest.raises(ModuleError, match="no such file or folder"):
        batch.list_cases(tmp_path / "missing")
    with pytest.raises(ModuleError, match="holds no .nii or .nii.gz file"):
        batch.list_cases(tmp_path)
    _write_csv(tmp_path / "m.csv", ["subject", "path"], [["s1", "x.nii"]])
    with pytest.raises(ModuleError, match="needs a column t1w or mri_path .*found columns subject, path"):
        batch.list_cases(tmp_path / "m.csv")
    _write_csv(tmp_path / "m.csv", ["mri_path"], [["gone.nii.gz"]])
    with pytest.raises(ModuleError, match="gone.nii.gz does not exist"):
        batch.list_cases(tmp_path / "m.csv")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "s.nii").write_bytes(b"")
    (tmp_path / "x" / "s.nii.gz").write_bytes(b"")
    with pytest.raises(ModuleError, match="same case name"):
        batch.list_cases(tmp_path / "x")


def test_batch_summary_and_exit_code(tmp_path):
    rows = [batch.BatchRow("a", "a.nii", "ok", 0.8, 1, 0.5, seconds=2.0, centiloid_pred="34.2", centiloid_lo="-20.4",
                           centiloid_hi="88.0", tracer="PiB", suvr="1.8000", centiloid="74.1"),
            batch.BatchRow("b", "b.nii", "failed", error="bad file")]
    path = batch.write_batch_summary(rows, tmp_path / "batch_results.csv")
    with open(path, newline="") as handle:
        written = list(csv.DictReader(handle))
    assert written[0]["probability"] == "0.8" and written[1]["probability"] == ""
    assert [written[0][c] for c in ("centiloid_pred", "centiloid_lo", "centiloid_hi", "tracer", "suvr", "centiloid")] == [
        "34.2", "-20.4", "88.0", "PiB", "1.8000", "74.1"]
    assert written[1]["suvr"] == "" and written[1]["centiloid_pred"] == ""
    assert written[1]["error"] == "bad file" and list(written[0]) == list(batch.SUMMARY_COLUMNS)
    assert batch.batch_exit_code(rows) == batch.EXIT_SOME_FAILED
    assert batch.batch_exit_code(rows[:1]) == batch.EXIT_OK
    assert not (tmp_path / "batch_results.csv.part").exists()


def test_the_batch_summary_carries_predicts_centiloid_columns(tmp_path):
    from AmyloidKDLib.commands.predict import CENTILOID_COLUMNS

    assert batch.CENTILOID_COLUMNS == CENTILOID_COLUMNS   # one set of names for both tables
    row = ["a", "a.nii", "0.7", "1", "0.5", "ok", "", "1", "1", "1", "3"]
    _write_csv(tmp_path / "results.csv", list(runner.RESULT_COLUMNS) + list(CENTILOID_COLUMNS),
               [row + ["31.25", "-4.50", "66.00"]])
    cells = batch.centiloid_cells(tmp_path)
    assert cells == {"centiloid_pred": "31.25", "centiloid_lo": "-4.50", "centiloid_hi": "66.00"}
    path = batch.write_batch_summary([batch.BatchRow("a", "a.nii", "ok", 0.7, 1, 0.5, **cells)],
                                     tmp_path / "batch_results.csv")
    with open(path, newline="") as handle:
        assert next(csv.DictReader(handle))["centiloid_lo"] == "-4.50"
    _write_csv(tmp_path / "results.csv", list(runner.RESULT_COLUMNS), [row])   # an older library
    assert batch.centiloid_cells(tmp_path) == dict.fromkeys(CENTILOID_COLUMNS, "")


# --- dependencies -------------------------------------------------------------------------


@pytest.mark.parametrize("requirement, name", [("numpy>=1.24,<2.4", "numpy"), ("open_clip_torch>=2.24", "open-clip-torch"),
                                               ("grad-cam>=1.5", "grad-cam"), ("PyYAML", "pyyaml"),
                                               ("Scikit_Learn [extra] >=1", "scikit-learn")])
def test_requirement_names_are_canonical(requirement, name):
    assert dependencies.requirement_name(requirement) == name


def test_installed_packages_are_never_reinstalled_and_are_pinned(tmp_path):
    installed = {"NumPy": "1.26.4", "SimpleITK": "2.3.1"}
    assert dependencies.missing_requirements(["numpy>=2.0", "nibabel>=5", "SimpleITK"], installed) == ["nibabel>=5"]
    assert dependencies.constraints_text({"simpleitk": "2.3.1", "numpy": "1.26.4"}) == "numpy==1.26.4\nsimpleitk==2.3.1\n"
    assert dependencies.pip_install_arguments(["nibabel>=5"], tmp_path / "c.txt") == [
        "--constraint", str(tmp_path / "c.txt"), "nibabel>=5"]
    with pytest.raises(ValueError, match="PyTorch extension"):
        dependencies.missing_requirements(["torch>=2"], installed)


def test_installed_distributions_sees_this_environment():
    import numpy

    found = dependencies.installed_distributions()
    assert found["numpy"] == numpy.__version__ and "pytest" in found


@pytest.mark.parametrize("version, minimum, ok", [("2.4.1+cu121", "2.1", True), ("2.1", "2.1.0", True),
                                                  ("2.0.1", "2.1", False), ("10.0", "9.9", True), ("1.13.1", "2.1", False)])
def test_torch_version_check(version, minimum, ok):
    assert dependencies.satisfies_minimum(version, minimum) is ok


def test_slicer_requirements_follow_pyproject():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pyproject = {dependencies.requirement_name(r): r.replace(" ", "") for r in project["dependencies"]}
    slicer_side = {dependencies.requirement_name(r): r for r in
                   dependencies.read_requirements(REPO / "AmyloidKD" / "Resources" / "requirements.txt")}
    on_demand = {dependencies.requirement_name(r): r for reqs in dependencies.SKULL_STRIP_REQUIREMENTS.values()
                 for r in reqs}
    # the module installs the core (prediction) set only; HD-BET v2 is the [hd-bet] extra
    expected = set(pyproject) - set(dependencies.PROVIDED_ELSEWHERE) - set(on_demand)
    assert set(slicer_side) == expected
    assert {n: slicer_side[n] for n in expected} == {n: pyproject[n] for n in expected}
    hd_bet_extra = {dependencies.requirement_name(r): r.replace(" ", "")
                    for r in project["optional-dependencies"]["hd-bet"]}
    assert on_demand == {n: {**pyproject, **hd_bet_extra}[n] for n in on_demand}


# --- the real prediction command, as the module and its self-test run it ------------------


@pytest.mark.slow  # phantom + registration + Grad-CAM: ~1-2 min on 2 shared cores
def test_real_predict_command_through_the_runner_on_the_self_test_case(tmp_path):
    """The self-test's inputs (phantom MRI, untrained tiny checkpoint) through the real CLI.

    This is what ``AmyloidKDTest`` does inside Slicer, minus the nodes: the same command
    line, environment, progress parsing and result reading, checked on the files written.
    """
    import nibabel as nib
    import numpy as np

    from AmyloidKDModuleLib.selftest import prepare_selftest_case

    case = prepare_selftest_case(tmp_path / "selftest", seed=0)
    request = runner.PredictRequest(case.mri_path, runner.resolve_checkpoint(case.checkpoint / "checkpoint.json"),
                                    tmp_path / "out", device="cpu", skull_strip=None)
    process = runner.BackgroundProcess.start(
        runner.build_predict_command(sys.executable, request),
        env=runner.library_environment(os.environ, runner.library_parent_directory()), cwd=tmp_path)
    fractions = []
    returncode = process.wait(timeout=300, on_event=lambda e: e.progress and fractions.append(e.progress.fraction))
    assert returncode == 0, process.tail()

    assert len(fractions) >= 3 and fractions == sorted(fractions) and fractions[-1] == 1.0
    (result,) = runner.read_results(request.out_dir)
    assert result.ok and result.case == runner.case_name(case.mri_path)
    assert 0.0 <= result.probability <= 1.0
    assert result.label == int(result.probability >= result.threshold)
    assert not result.outputs.missing()
    # the same voxels in world space (a file stored in another orientation is reoriented on load)
    mri = nib.as_closest_canonical(nib.load(case.mri_path))
    saliency = nib.as_closest_canonical(nib.load(result.outputs.saliency))
    top_regions = nib.as_closest_canonical(nib.load(result.outputs.top_regions))
    assert saliency.shape == top_regions.shape == mri.shape
    np.testing.assert_allclose(saliency.affine, mri.affine, atol=1e-3)
    np.testing.assert_allclose(top_regions.affine, mri.affine, atol=1e-3)
    values = saliency.get_fdata()
    assert values.min() >= 0.0 and values.max() <= 1.0 and values.max() > 0.0
    assert top_regions.get_data_dtype() == np.uint8 and (np.asarray(top_regions.dataobj) > 0).any()


# --- a failing pip gives the friendly message -----------------------------------------------


def test_a_failing_pip_gives_the_friendly_message_not_a_traceback(tmp_path):
    """A real pip that cannot find the package (offline index): CalledProcessError is not passed on."""
    import subprocess

    def pip_install(arguments):
        subprocess.check_call([sys.executable, "-m", "pip", "install", "--no-index", "--quiet",
                               "--target", str(tmp_path / "target"), *arguments],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    constraints = tmp_path / "constraints.txt"
    constraints.write_text("")
    with pytest.raises(ModuleError) as caught:
        dependencies.install_missing(["amyloidkd-no-such-package>=1"], constraints, pip_install)
    message = str(caught.value)
    assert message.startswith("installing amyloidkd-no-such-package>=1 failed (pip stopped:")
    assert "update Slicer" in message and "slicer.util.pip_install" in message
    # pip that "succeeds" but leaves the package missing says the same, without a pip error
    with pytest.raises(ModuleError, match=r"^installing amyloidkd-no-such-package>=1 failed; see"):
        dependencies.install_missing(["amyloidkd-no-such-package>=1"], constraints, lambda arguments: None)
    dependencies.install_missing(["pytest>=7"], constraints, lambda arguments: None)  # present: no error


# --- the batch script always ends Slicer ------------------------------------------------------


def _batch_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("AmyloidKDBatchScript", REPO / "AmyloidKD" / "Scripts" / "AmyloidKDBatch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_batch_script_exits_non_zero_whatever_escapes(tmp_path, capsys):
    """Outside a running Slicer ``run_batch`` cannot even find the module: the script still ends
    with a non-zero code through the exit function, and says why on stderr."""
    script = _batch_script()
    codes = []
    status = script.main(["--", "--input", str(tmp_path), "--out", str(tmp_path / "out")], exit_function=codes.append)
    assert codes == [status] == [script.EXIT_BATCH_ERROR]
    assert "AmyloidKDBatch: error:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as ended:  # the default exit of a Slicer-less Python: sys.exit
        script.main(["--input", "x"])
    assert ended.value.code == script.EXIT_BATCH_ERROR


@pytest.mark.parametrize("outcome, code", [(0, 0), (1, 1), (None, 3), (KeyboardInterrupt(), 130),
                                           (SystemExit(2), 2), (OSError("disk full"), 3)])
def test_batch_exit_code_for_each_way_run_batch_ends(outcome, code):
    script = _batch_script()

    def run_batch(argv):
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    script.run_batch = run_batch  # the Slicer-bound part; main's own logic is what is tested
    codes = []
    assert script.main([], exit_function=codes.append) == code and codes == [code]


def test_the_panel_knows_every_exit_code_the_command_documents():
    """The panel explains each exit code AmyloidKDLib's CLI can return (no 'unexpected' for 3)."""
    from AmyloidKDLib import cli

    documented = {value for name, value in vars(cli).items() if name.startswith("EXIT_")}
    assert documented == set(runner.EXIT_CODE_MEANINGS)
