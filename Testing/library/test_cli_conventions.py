"""Conventions of the ``amyloidkd`` command line: --version, -q/-v on either side of the
subcommand, --progress, and the exit-code table (0 ok, 1 some cases failed, 2 bad input,
3 internal error with the traceback in a log file)."""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

import pytest

from AmyloidKDLib import __version__
from AmyloidKDLib.cli import (EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, build_parser, run)


def register(subparsers: argparse._SubParsersAction) -> None:
    """A plug-in command with a bug, the way a command module registers (used as ``__name__``)."""
    parser = subparsers.add_parser("divide", help="divide by zero")
    parser.set_defaults(func=lambda args: 1 / 0)


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exited:
        run(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith(f"amyloidkd {__version__} ")


@pytest.mark.parametrize("argv, level", [
    (["info", "x.nii"], logging.WARNING),
    (["-v", "info", "x.nii"], logging.INFO),
    (["info", "x.nii", "-v"], logging.INFO),
    (["info", "x.nii", "--quiet"], logging.ERROR),
    (["-q", "info", "x.nii"], logging.ERROR),
    (["-q", "info", "x.nii", "-v"], logging.INFO),  # the one after the subcommand wins
])
def test_verbosity_is_accepted_before_and_after_the_subcommand(argv, level):
    assert build_parser().parse_args(argv).log_level == level


@pytest.mark.parametrize("argv, progress", [
    (["info", "x.nii"], None),  # not given: bars on a terminal, lines elsewhere
    (["--progress", "none", "info", "x.nii"], "none"),
    (["info", "x.nii", "--progress", "lines"], "lines"),
])
def test_progress_is_accepted_before_and_after_the_subcommand(argv, progress):
    assert build_parser().parse_args(argv).progress == progress


def test_progress_none_turns_the_bars_off(tmp_path, capfd):
    common = ["phantom", "--subjects", "1", "--mri-spacing", "2"]
    assert run([*common, "--out", str(tmp_path / "bars")]) == EXIT_OK
    assert "phantom scans" in capfd.readouterr().err  # tqdm's bar on stderr
    assert run([*common, "--out", str(tmp_path / "quiet"), "--progress", "none"]) == EXIT_OK
    assert "phantom scans" not in capfd.readouterr().err
    assert (tmp_path / "quiet" / "manifest.csv").is_file()


def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys):
    assert run(["info", str(tmp_path / "missing.nii.gz")]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.startswith("amyloidkd info: error:") and "\n" not in err and "Traceback" not in err


def test_an_internal_error_is_one_line_exit_code_3_and_a_logged_traceback(capsys):
    assert run(["divide"], [__name__]) == EXIT_INTERNAL
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith("amyloidkd divide: internal error: ZeroDivisionError")
    log = Path(re.search(r"traceback in (\S+);", err).group(1))
    try:
        text = log.read_text()
        assert "Traceback" in text and "1 / 0" in text and f"amyloidkd {__version__}" in text
    finally:
        log.unlink()
