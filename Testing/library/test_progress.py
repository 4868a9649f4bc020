"""Progress that fits where it goes (AmyloidKDLib/progress.py): bars on a terminal, plain
throttled lines in a file or pipe, nothing with TQDM_DISABLE."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from AmyloidKDLib import progress
from AmyloidKDLib.progress import LineProgress, progress_bar

ROOT = Path(__file__).resolve().parents[2]


class FakeClock:
    """time.monotonic for the progress module: the test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(progress.time, "monotonic", fake)
    monkeypatch.setattr(progress, "_CLOCK", progress._Clock())
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.delenv(progress.STYLE_ENV, raising=False)
    return fake


def test_a_file_gets_one_throttled_line_per_few_cases_and_the_last_one(clock):
    out = io.StringIO()
    bar = progress_bar(range(100), desc="predict", unit="case", file=out)
    assert isinstance(bar, LineProgress)  # StringIO is no terminal
    for _ in bar:
        clock.now += 1.0  # one case a second
    lines = out.getvalue().splitlines()
    # 100 s: a line every 5 s, the last of them the completion
    assert len(lines) == 20 and "\r" not in out.getvalue()
    assert lines[0] == "[progress] predict: 5/100 cases (5%), 5.0 s, ~1 min 35 s left"
    assert lines[-1] == "[progress] predict: 100/100 cases (100%), 1 min 40 s"


def test_epochs_write_one_line_each_at_most_every_few_seconds(clock):
    out = io.StringIO()
    for epoch in range(1, 41):  # 40 epochs of 4 batches, 0.5 s each: 20 s
        bar = progress_bar(range(4), desc=f"student epoch {epoch}/40", unit="batch", leave=False,
                           file=out)
        for batch in bar:
            clock.now += 0.125
            bar.set_postfix(loss=f"{1 / (epoch + batch):.4f}")
    lines = out.getvalue().splitlines()
    assert len(lines) == 4  # epochs 10, 20, 30 and 40: 5 s apart
    assert lines[0] == "[progress] student epoch 10/40: 4/4 batches (100%), 0.5 s, loss=0.0769"
    assert lines[-1].startswith("[progress] student epoch 40/40: ")


def test_an_hour_of_progress_stays_about_a_hundred_lines(clock):
    out = io.StringIO()
    bar = progress_bar(total=3600, desc="train", unit="step", file=out)
    for _ in range(3600):
        clock.now += 1.0
        bar.update()
    # every 5 s for 100 s (20 lines), then every twentieth of the time so far (20 ln 12 ~ 50
    # more by 20 min), then one a minute (40 more): 106 lines; one a second would be 3600
    assert len(out.getvalue().splitlines()) == 106
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 107 and lines[-1] == "[progress] train: 3600/3600 steps (100%), 1 h 00 min"
    gaps = [float(line.split(", ")[1].split()[0]) for line in lines[:21] if " s," in line]
    assert gaps[:3] == [5.0, 10.0, 15.0]


def test_a_bar_left_by_an_error_claims_nothing_and_tqdm_disable_silences(clock, monkeypatch):
    out = io.StringIO()
    with pytest.raises(ValueError):
        with progress_bar(total=3, desc="cases", file=out) as bar:
            bar.update()
            raise ValueError("a case failed")
    assert out.getvalue() == ""
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert list(progress_bar(range(3), desc="quiet", file=out)) == [0, 1, 2]
    assert out.getvalue() == ""


def test_the_cli_writes_plain_lines_in_order_when_its_output_is_a_file(tmp_path):
    """``--progress`` not given and ``amyloidkd phantom ... > log 2>&1``: plain progress lines
    without a carriage return, and stdout's result after them, where it was printed."""
    log = tmp_path / "phantom.log"
    env = {key: value for key, value in os.environ.items()
           if key not in ("TQDM_DISABLE", progress.STYLE_ENV, "PYTHONUNBUFFERED")}
    with log.open("w") as output:
        done = subprocess.run([sys.executable, "-m", "AmyloidKDLib", "phantom", "--subjects", "1",
                               "--mri-spacing", "2", "--out", str(tmp_path / "cohort")], cwd=ROOT,
                              env=env, stdout=output, stderr=output, timeout=300)
    text = log.read_text()
    assert done.returncode == 0, text
    assert "\r" not in text
    *shown, result = text.splitlines()
    assert result == str(tmp_path / "cohort" / "manifest.csv")
    assert 1 <= len(shown) <= 3 and all(line.startswith("[progress] phantom scans: ")
                                        for line in shown), shown
    assert shown[-1].startswith("[progress] phantom scans: 2/2 scans (100%)")


BARS = """
from AmyloidKDLib.progress import progress_bar
for _ in progress_bar(range(3), desc="cases", unit="case"):
    pass
"""


def test_a_terminal_gets_a_tqdm_bar():
    pty = pytest.importorskip("pty")  # POSIX only, as are fcntl and termios
    fcntl, termios = pytest.importorskip("fcntl"), pytest.importorskip("termios")
    leader, follower = pty.openpty()  # stderr of the child is a (pseudo-)terminal
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns
    try:
        env = {key: value for key, value in os.environ.items()
               if key not in ("TQDM_DISABLE", progress.STYLE_ENV)}
        child = subprocess.Popen([sys.executable, "-c", BARS], cwd=ROOT, env=env,
                                 stdout=subprocess.DEVNULL, stderr=follower)
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert child.wait(timeout=60) == 0
    finally:
        os.close(leader)
    shown = b"".join(chunks).decode(errors="replace")
    assert "\r" in shown and "cases: 100%|" in shown and "3/3" in shown
    assert "[progress]" not in shown


PLUGIN = '''
import sys

def register(subparsers):
    parser = subparsers.add_parser("table", help="print a table, then a progress line")
    parser.set_defaults(func=lambda args: show())

def show():
    print("| model | AUC |")
    print("| student | 0.61 |")
    print("[progress] next step: 1/2 steps", file=sys.stderr, flush=True)
    print("done")
'''


def test_stdout_and_stderr_reach_a_shared_log_file_in_the_order_they_were_written(tmp_path):
    """Block-buffered stdout would land after the progress line (at exit) in ``> log 2>&1``."""
    (tmp_path / "table_plugin.py").write_text(PLUGIN)
    code = (f"import sys; sys.path.insert(0, {str(tmp_path)!r}); from AmyloidKDLib.cli import run; "
            "sys.exit(run(['table'], ['table_plugin']))")
    log = tmp_path / "log"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    with log.open("w") as output:
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=output,
                              stderr=output, timeout=120)
    assert done.returncode == 0, log.read_text()
    assert log.read_text().splitlines() == ["| model | AUC |", "| student | 0.61 |",
                                            "[progress] next step: 1/2 steps", "done"]
