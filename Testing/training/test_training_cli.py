"""The full ``amyloidkd`` command line (library + training): every option explains itself,
``--progress`` reaches the training engine, and ``python -m Training.cli`` starts (the form
``accelerate launch -m Training.cli`` needs)."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from AmyloidKDLib import __version__
from AmyloidKDLib.cli import build_parser
from Training.cli import TRAINING_COMMANDS
from Training.commands.common import config_from_args


def _parsers(parser: argparse.ArgumentParser, name: str = "amyloidkd"):
    """``(name, parser)`` for the parser and every subcommand parser under it."""
    yield name, parser
    for action in parser._actions:  # argparse offers no public walk over subparsers
        if isinstance(action, argparse._SubParsersAction):
            for command, subparser in action.choices.items():
                yield from _parsers(subparser, f"{name} {command}")


def test_every_option_and_argument_of_every_command_has_help():
    parser = build_parser(TRAINING_COMMANDS)
    commands = dict(_parsers(parser))
    assert {"amyloidkd predict", "amyloidkd train", "amyloidkd cv", "amyloidkd demo"} <= set(commands)
    missing = [f"{name}: {'/'.join(action.option_strings) or action.dest}"
               for name, sub in commands.items() for action in sub._actions
               if not isinstance(action, argparse._SubParsersAction)
               and (not action.help or action.help == argparse.SUPPRESS)]
    assert not missing, "options without help text: " + ", ".join(missing)


@pytest.mark.parametrize("progress, bars", [("bar", True), ("lines", False), ("none", False)])
def test_progress_reaches_the_training_engine(progress, bars):
    args = build_parser(TRAINING_COMMANDS).parse_args(
        ["train", "teacher", "--manifest", "m.csv", "--out", "run", "--progress", progress])
    assert config_from_args(args).engine.progress is bars


def test_training_cli_runs_as_a_module():
    done = subprocess.run([sys.executable, "-m", "Training.cli", "--version"], capture_output=True,
                          text=True, check=True)
    assert done.stdout.startswith(f"amyloidkd {__version__}")
