"""Run ``python -m AmyloidKDLib predict`` in a background process and read what it writes.

This is the part of the Slicer module that does not need Slicer: building the exact command
line, starting it in its own process group, turning its ``AMYLOIDKD_PROGRESS`` lines into
progress events, stopping the whole process tree on cancel, and reading ``results.csv``.
The contract it follows is the "Prediction CLI" section of docs/INTERFACES.md.

Slicer stays responsive because nothing here blocks: two reader threads move output lines
into a queue, and the GUI drains that queue from a timer (:meth:`BackgroundProcess.poll`).
"""

from __future__ import annotations

import csv
import importlib.util
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from AmyloidKDLib.layouts import case_name  # noqa: F401  (standard library only)
from AmyloidKDModuleLib.errors import ModuleError

PROGRESS_PREFIX = "AMYLOIDKD_PROGRESS"
DEVICE_CHOICES = ("auto", "cpu", "cuda")
SKULL_STRIP_CHOICES = ("hd-bet-v1", "hd-bet", "none")
RESULT_COLUMNS = (
    "case", "input", "probability", "label", "threshold", "status", "error",
    "seconds_prepare", "seconds_model", "seconds_saliency", "seconds_total",
)
#: What the predict command's exit codes mean (docs/INTERFACES.md).
EXIT_CODE_MEANINGS = {
    0: "all cases were processed",
    1: "some cases failed (the others were processed)",
    2: "bad usage or input",
    3: "internal error (the command printed where its traceback was logged)",
    130: "interrupted",
}
NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: Seconds to keep reading output after the child exited (a lingering grandchild may hold the pipe).
OUTPUT_GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class PredictRequest:
    """One call of the prediction CLI: what to read, which model, where to write, how.

    Attributes:
        input_path: a NIfTI file, a folder of NIfTI files, or a manifest CSV.
        checkpoint: the student checkpoint folder (``model.safetensors`` + ``checkpoint.json``).
        out_dir: folder that receives ``results.csv`` and the per-case files.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        skull_strip: ``hd-bet-v1``, ``hd-bet`` or ``none`` (input already skull-stripped);
            None leaves the choice to the preparation settings stored in the checkpoint.
    """

    input_path: Path
    checkpoint: Path
    out_dir: Path
    device: str = "auto"
    skull_strip: str | None = None

    def __post_init__(self) -> None:
        if self.device not in DEVICE_CHOICES:
            raise ModuleError(f"unknown device {self.device!r}; choose one of {', '.join(DEVICE_CHOICES)}.")
        if self.skull_strip is not None and self.skull_strip not in SKULL_STRIP_CHOICES:
            raise ModuleError(f"unknown skull-stripping backend {self.skull_strip!r}; choose one of "
                              f"{', '.join(SKULL_STRIP_CHOICES)}.")


def build_predict_command(python_executable: str | os.PathLike, request: PredictRequest) -> list[str]:
    """The exact argument list that runs the prediction CLI with machine-readable progress."""
    command = [
        str(python_executable), "-m", "AmyloidKDLib", "predict", str(request.input_path),
        "--checkpoint", str(request.checkpoint),
        "--out", str(request.out_dir),
        "--device", request.device,
    ]
    if request.skull_strip is not None:
        command += ["--skull-strip", request.skull_strip]
    return command + ["--progress", "lines"]


#: Tracers the PET quantification knows (``AmyloidKDLib.centiloid.TRACER_EQUATIONS``; a test keeps
#: the two lists equal), in the order the panel offers them.
TRACER_CHOICES = ("PiB", "florbetapir", "florbetaben", "flutemetamol", "NAV4694")
#: Columns of ``centiloid.csv`` the module reads (docs/INTERFACES.md, ``amyloidkd centiloid``).
CENTILOID_COLUMNS = ("case", "tracer", "suvr", "centiloid", "voi_set", "status", "error")
#: The MRI-side Centiloid read-out's columns in ``results.csv`` (present only with a library that
#: writes them; empty when the checkpoint has no Centiloid read-out).
MRI_CENTILOID_COLUMNS = ("centiloid_pred", "centiloid_lo", "centiloid_hi")


def build_centiloid_command(python_executable: str | os.PathLike, pet_path: str | os.PathLike,
                            mri_path: str | os.PathLike, tracer: str, out_dir: str | os.PathLike) -> list[str]:
    """The argument list that quantifies one PET with its MRI (``amyloidkd centiloid``) and writes the
    VOIs on the MRI's grid for display (``<case>_vois.nii.gz``)."""
    return [str(python_executable), "-m", "AmyloidKDLib", "centiloid", str(pet_path), "--mri", str(mri_path),
            "--tracer", tracer, "--out", str(out_dir), "--write-vois", "--no-qc", "--progress", "none"]


def read_checked_csv(path: Path, columns: Sequence[str], what: str) -> list[dict[str, str]]:
    """The rows of a CSV the library wrote, after checking it exists and has ``columns``."""
    if not path.is_file():
        raise ModuleError(f"{path} was not written; {what} did not finish. See the log above for why.")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise ModuleError(f"{path} lacks the columns {', '.join(missing)}; the installed AmyloidKDLib "
                              "does not match this module. Update the extension.")
        return list(reader)


def read_centiloid(out_dir: str | os.PathLike) -> dict[str, str]:
    """The one row of ``out_dir/centiloid.csv`` (a single-PET run), checked for the columns the module uses."""
    path = Path(out_dir) / "centiloid.csv"
    rows = read_checked_csv(path, CENTILOID_COLUMNS, "the PET quantification")
    if len(rows) != 1:
        raise ModuleError(f"{path} has {len(rows)} rows; one PET gives one.")
    return {k: (v or "") for k, v in rows[0].items() if k}


def mri_centiloid(row: "CaseResult") -> tuple[str, str, str] | None:
    """(pred, lo, hi) of the MRI-predicted Centiloid as text; None when results.csv has no such
    columns (a library without the read-out); empty strings when the checkpoint has none."""
    if not all(column in row.extra for column in MRI_CENTILOID_COLUMNS):
        return None
    return tuple(row.extra[column].strip() for column in MRI_CENTILOID_COLUMNS)


def format_centiloid(value: str, digits: int = 0) -> str:
    """A Centiloid cell as the panel writes it: rounded, with a true minus sign; "—" when empty."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "\u2014"
    return f"{round(number, digits) + 0.0:.{digits}f}".replace("-", "\u2212")  # + 0.0: no "-0"


def mri_centiloid_text(values: tuple[str, str, str] | None) -> str:
    """"34 [\u221220, 88], 90 % interval" for the MRI-predicted Centiloid, or "\u2014" when there is none."""
    if not values or not values[0]:
        return "\u2014"
    prediction, low, high = values
    if not low or not high:
        return format_centiloid(prediction)
    return f"{format_centiloid(prediction)} [{format_centiloid(low)}, {format_centiloid(high)}], 90 % interval"


#: The two files every checkpoint folder holds (docs/INTERFACES.md, "Models").
CHECKPOINT_FILES = ("model.safetensors", "checkpoint.json")


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint folder for ``path``: the folder itself, or the folder of a file in it.

    Users pick ``checkpoint.json`` in a file dialog as often as the folder; both work.
    """
    folder = Path(path).expanduser()
    if folder.is_file() and folder.name in CHECKPOINT_FILES:
        folder = folder.parent
    if not folder.is_dir():
        raise ModuleError(f"checkpoint {folder} does not exist; choose the folder that holds "
                          f"{' and '.join(CHECKPOINT_FILES)} (for example demo_output/checkpoints/student "
                          "after `amyloidkd demo`).")
    missing = [name for name in CHECKPOINT_FILES if not (folder / name).is_file()]
    if missing:
        raise ModuleError(f"{folder} is not an AmyloidKD checkpoint: {', '.join(missing)} missing. Choose "
                          "the folder written by `amyloidkd train student` or `amyloidkd demo`.")
    return folder.resolve()


def library_parent_directory() -> Path:
    """The folder that contains the ``AmyloidKDLib`` package, found without importing it.

    (Importing it would pull in nibabel, which may not be installed yet inside Slicer.)
    """
    spec = importlib.util.find_spec("AmyloidKDLib")
    if spec is None or spec.origin is None:
        raise ModuleError("the AmyloidKDLib package is not on the Python path; reinstall the "
                          "AmyloidKD extension (or add the folder that holds AmyloidKDLib to PYTHONPATH).")
    return Path(spec.origin).resolve().parent.parent


def library_environment(base_env: Mapping[str, str], library_parent: str | os.PathLike) -> dict[str, str]:
    """``base_env`` plus what the child needs: the library on PYTHONPATH, unbuffered output."""
    env = dict(base_env)
    parts = [str(library_parent)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"  # Windows consoles default to a code page; we read UTF-8
    return env


@dataclass(frozen=True)
class Progress:
    """One progress report: ``fraction`` of the whole run done (0..1) and what is happening."""

    fraction: float
    text: str


def parse_progress_line(line: str) -> Progress | None:
    """``AMYLOIDKD_PROGRESS <fraction> <text>`` -> Progress; any other line -> None.

    A fraction outside [0, 1] or not a number makes the line an ordinary log line, so a
    malformed report can never move the progress bar backwards or past the end.
    """
    parts = line.strip().split(maxsplit=2)
    if len(parts) < 2 or parts[0] != PROGRESS_PREFIX:
        return None
    try:
        fraction = float(parts[1])
    except ValueError:
        return None
    if not 0.0 <= fraction <= 1.0:
        return None
    return Progress(fraction, parts[2] if len(parts) == 3 else "")


@dataclass(frozen=True)
class ProcessEvent:
    """A line the child wrote: from ``stream`` ("stdout"/"stderr"), parsed as progress if it is one."""

    stream: str
    line: str
    progress: Progress | None = None


#: subprocess.CREATE_NO_WINDOW (Windows only): no console window pops up for each run.
CREATE_NO_WINDOW = getattr(subprocess, "CREATE_NO_WINDOW", 0x08000000)
CREATE_NEW_PROCESS_GROUP = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x00000200)


def popen_options(platform: str = sys.platform) -> dict:
    """How a background process is started: its own process group (so Cancel reaches its whole
    tree) and, on Windows, no console window."""
    if platform == "win32":
        return {"creationflags": CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW}
    return {"start_new_session": True}


def kill_process_tree(pid: int, timeout: float = 5.0, process_group: int | None = None,
                      reap: Callable[[], object] | None = None) -> list[int]:
    """Stop ``pid`` and every process it started; return the pids that were signalled.

    POSIX: the child was started as the leader of its own session, so one ``killpg`` on
    ``process_group`` reaches its whole group even after the leader has exited; descendants
    that left the group (their own ``setsid``) are found with psutil when it is installed.
    Windows: ``taskkill /T`` walks the tree. Politely first (SIGTERM), SIGKILL after ``timeout`` s.
    ``reap`` (``Popen.poll`` of the leader) collects the leader once it exits, so an exited
    child is never mistaken for a live one (on macOS there is no /proc to tell a zombie).
    """
    if sys.platform == "win32":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True, check=False)
        return [pid]
    targets = {pid} | set(_descendant_pids(pid))
    groups = {process_group} if process_group is not None else set()
    for target in targets:
        try:
            groups.add(os.getpgid(target))
        except ProcessLookupError:
            pass
    groups.discard(os.getpgrp())  # never signal the caller's own group (Slicer itself)
    _signal_all(groups, targets, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if reap is not None:
            reap()
        if not any(_alive(t) for t in targets):
            break
        time.sleep(0.05)
    _signal_all(groups, targets, signal.SIGKILL)
    return sorted(targets)


def _descendant_pids(pid: int) -> list[int]:
    try:
        import psutil
    except ImportError:  # the process group still covers every child that did not setsid
        return []
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _signal_all(groups: set[int], pids: set[int], sig: int) -> None:
    for group in groups:
        try:
            os.killpg(group, sig)
        except (ProcessLookupError, PermissionError):
            pass
    for target in pids:
        try:
            os.kill(target, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """True for an exited process not yet collected by its parent: psutil where installed (Linux,
    macOS, Windows), else Linux's /proc; elsewhere False (``reap`` covers our own child)."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


@dataclass
class BackgroundProcess:
    """A command running in its own process group, its output collected without blocking.

    Start it with :meth:`start`; call :meth:`poll` from a GUI timer (or :meth:`wait` in
    scripts) to receive :class:`ProcessEvent` objects; :meth:`cancel` stops the whole tree.

    Attributes:
        command: the argument list that was started.
        progress: the latest progress report, or None before the first one.
        log: every output line so far, stdout and stderr interleaved as they arrived.
        cancelled: True once :meth:`cancel` was called.
    """

    command: list[str]
    progress: Progress | None = None
    log: list[str] = field(default_factory=list)
    cancelled: bool = False
    _popen: subprocess.Popen | None = field(default=None, repr=False)
    _events: queue.Queue = field(default_factory=queue.Queue, repr=False)
    _readers: list[threading.Thread] = field(default_factory=list, repr=False)
    _exited_at: float | None = field(default=None, repr=False)

    @classmethod
    def start(cls, command: Sequence[str], env: Mapping[str, str] | None = None,
              cwd: str | os.PathLike | None = None) -> BackgroundProcess:
        """Launch ``command`` in a new process group and start collecting its output."""
        process = cls(command=[str(c) for c in command])
        options = popen_options()
        try:
            process._popen = subprocess.Popen(
                process.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
                bufsize=1, env=dict(env) if env is not None else None,
                cwd=str(cwd) if cwd is not None else None, **options)
        except OSError as exc:
            raise ModuleError(f"could not start {process.command[0]!r}: {exc}. Check that this "
                              "Python executable exists and can be run.") from exc
        for name, stream in (("stdout", process._popen.stdout), ("stderr", process._popen.stderr)):
            reader = threading.Thread(target=_read_lines, args=(stream, name, process._events),
                                      name=f"AmyloidKD-{name}", daemon=True)
            reader.start()
            process._readers.append(reader)
        return process

    @property
    def pid(self) -> int:
        """Process id of the child (the leader of its process group)."""
        assert self._popen is not None
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit code once the child has ended, else None."""
        assert self._popen is not None
        return self._popen.poll()

    @property
    def finished(self) -> bool:
        """True once the child has exited and all of its output has been read.

        A grandchild that outlives the child keeps the pipes open; its output is not
        waited for longer than ``OUTPUT_GRACE_SECONDS`` after the child's exit.
        """
        if self.returncode is None or not self._events.empty():
            return False
        if self._exited_at is None:
            self._exited_at = time.monotonic()
        readers_done = not any(r.is_alive() for r in self._readers)
        return readers_done or time.monotonic() - self._exited_at > OUTPUT_GRACE_SECONDS

    def poll(self) -> list[ProcessEvent]:
        """Everything written since the last call; never blocks."""
        events = []
        while True:
            try:
                stream, line = self._events.get_nowait()
            except queue.Empty:
                break
            event = ProcessEvent(stream, line, parse_progress_line(line) if stream == "stdout" else None)
            if event.progress is not None:
                self.progress = event.progress
            self.log.append(line)
            events.append(event)
        return events

    def wait(self, timeout: float | None = None, on_event: Callable[[ProcessEvent], None] | None = None,
             interval: float = 0.1) -> int:
        """Block until the child ends (scripts, tests, headless batch); return its exit code.

        ``on_event`` sees every event as it arrives. On timeout the tree is cancelled and
        a ModuleError is raised.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for event in self.poll():
                if on_event is not None:
                    on_event(event)
            if self.finished:
                return int(self.returncode)  # type: ignore[arg-type]
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise ModuleError(f"{' '.join(self.command[:4])} ran longer than {timeout:g} s and was stopped.")
            time.sleep(interval)

    def cancel(self, timeout: float = 5.0) -> None:
        """Stop the child and every process it started (idempotent)."""
        self.cancelled = True
        if self._popen is None:
            return
        group = None if sys.platform == "win32" else self.pid  # start_new_session: pgid == pid
        kill_process_tree(self.pid, timeout, process_group=group, reap=self._popen.poll)
        self._popen.wait(timeout)

    def tail(self, n: int = 20) -> str:
        """The last ``n`` output lines, for error messages."""
        return "\n".join(self.log[-n:])


def _read_lines(stream, name: str, events: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        events.put((name, line.rstrip("\r\n")))
    stream.close()


@dataclass(frozen=True)
class CaseOutputs:
    """The files the CLI writes for one case (native-grid saliency, MNI saliency, labels, PNG)."""

    saliency: Path
    saliency_mni: Path
    top_regions: Path
    overview: Path

    @classmethod
    def for_case(cls, out_dir: str | os.PathLike, case: str) -> CaseOutputs:
        """The paths the contract promises for ``case`` inside ``out_dir``."""
        out = Path(out_dir)
        return cls(out / f"{case}_saliency.nii.gz", out / f"{case}_saliency_mni.nii.gz",
                   out / f"{case}_top_regions.nii.gz", out / f"{case}_overview.png")

    def missing(self) -> list[Path]:
        """Promised files that are not there."""
        return [p for p in (self.saliency, self.saliency_mni, self.top_regions, self.overview) if not p.is_file()]


@dataclass(frozen=True)
class CaseResult:
    """One row of ``results.csv``, typed. ``probability``/``label`` are None for a failed case."""

    case: str
    input: str
    probability: float | None
    label: int | None
    threshold: float | None
    status: str
    error: str
    seconds: dict[str, float | None]
    outputs: CaseOutputs
    #: Columns beyond the contract's (e.g. ``centiloid`` once the library writes it), as text.
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the case was processed."""
        return self.status == "ok"

    @property
    def label_text(self) -> str:
        """The label in words, as the panel shows it."""
        if self.label is None:
            return "no result"
        return "amyloid positive" if self.label == 1 else "amyloid negative"


def _optional_float(value: str, column: str, row: int) -> float | None:
    if value is None or value.strip() == "":
        return None
    try:
        return float(value)
    except ValueError as exc:
        raise ModuleError(f"results.csv row {row}: column {column!r} holds {value!r}, not a number.") from exc


def read_results(out_dir: str | os.PathLike) -> list[CaseResult]:
    """Read ``out_dir/results.csv`` into CaseResult rows, checking the contract's columns."""
    path = Path(out_dir) / "results.csv"
    results = []
    for row_number, row in enumerate(read_checked_csv(path, RESULT_COLUMNS, "the prediction"), start=2):
        status = row["status"].strip()
        if status not in ("ok", "failed"):
            raise ModuleError(f"{path} row {row_number}: status {status!r} is neither 'ok' nor 'failed'.")
        probability = _optional_float(row["probability"], "probability", row_number)
        label = _optional_float(row["label"], "label", row_number)
        seconds = {c[len("seconds_"):]: _optional_float(row[c], c, row_number)
                   for c in RESULT_COLUMNS if c.startswith("seconds_")}
        results.append(CaseResult(
            case=row["case"], input=row["input"], probability=probability,
            label=None if label is None else int(label),
            threshold=_optional_float(row["threshold"], "threshold", row_number),
            status=status, error=row["error"], seconds=seconds,
            outputs=CaseOutputs.for_case(out_dir, row["case"]),
            extra={k: (v or "") for k, v in row.items() if k and k not in RESULT_COLUMNS}))
    return results


def describe_exit(returncode: int, cancelled: bool = False) -> str:
    """A sentence for the panel: what the predict command's exit code means."""
    if cancelled:
        return "cancelled by the user"
    if returncode < 0:
        return f"stopped by signal {-returncode}"
    return EXIT_CODE_MEANINGS.get(returncode, f"ended with the unexpected exit code {returncode}")
