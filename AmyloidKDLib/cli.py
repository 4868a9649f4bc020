"""Command-line entry point of the library (``python -m AmyloidKDLib`` / ``amyloidkd``).

Each subcommand lives in ``AmyloidKDLib/commands/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (called with the parsed
arguments, returning an exit code). The training pipeline adds its own subcommands on top
(``Training/cli.py``), so the library never imports the pipeline.

Conventions shared by every subcommand (added here, so no command can forget them):
``--version``; ``-v``/``-q`` and ``--progress {bar,lines,none}`` before *or* after the
subcommand; help text on every option (checked by a test); and these exit codes:

====  ==========================================================================
0     success
1     some cases failed (batch commands only; the other cases were processed)
2     bad usage or input, or no room to write: one line on stderr saying what to change
3     internal error (a bug): one line on stderr and the file the traceback went to
130   interrupted (Ctrl-C)
====  ==========================================================================
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Iterable, Sequence
from pathlib import Path

from AmyloidKDLib.atomic import is_disk_full
from AmyloidKDLib.errors import AmyloidKDError, DependencyError
from AmyloidKDLib.progress import STYLE_ENV as PROGRESS_STYLE_ENV

#: Library subcommand modules, in the order `amyloidkd --help` lists them.
LIBRARY_COMMANDS = ("info", "predict", "preprocess", "phantom", "centiloid")

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130
#: Top-level modules of the ``[train]`` extra (accelerate, scikit-learn, pyyaml): without them
#: the pipeline's subcommands are listed but say how to install them.
TRAIN_EXTRA = ("accelerate", "sklearn", "yaml")

#: ``--progress`` choices: tqdm bars on stderr; machine-readable ``AMYLOIDKD_PROGRESS
#: <fraction> <text>`` lines on stdout (``predict``; elsewhere no bars); nothing. Not given:
#: bars where stderr is a terminal, plain throttled lines where it is a file or pipe.
PROGRESS_CHOICES = ("bar", "lines", "none")


def _add_shared_options(parser: argparse.ArgumentParser, top_level: bool) -> None:
    """``-v``/``-q``/``--progress``. On subcommands they default to "not given", so the value
    given before the subcommand stays in force unless repeated after it."""
    default = (lambda value: value) if top_level else (lambda value: argparse.SUPPRESS)
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", dest="log_level", action="store_const",
                           const=logging.INFO, default=default(logging.WARNING),
                           help="log progress details (INFO)")
    verbosity.add_argument("-q", "--quiet", dest="log_level", action="store_const",
                           const=logging.ERROR, default=default(logging.WARNING),
                           help="log errors only")
    parser.add_argument("--progress", choices=PROGRESS_CHOICES, default=default(None),
                        help="progress display: 'bar' tqdm bars on stderr (default on a terminal; "
                             "where stderr is a file or pipe the default is plain throttled "
                             "'[progress] ...' lines), 'lines' "
                             "'AMYLOIDKD_PROGRESS <fraction> <text>' lines on stdout (predict; "
                             "other commands show no bars), 'none' nothing")


def version_text() -> str:
    """What ``--version`` prints: the package version and the Python it runs on."""
    from AmyloidKDLib import __version__

    return f"amyloidkd {__version__} (Python {sys.version.split()[0]})"


def build_parser(command_modules: Iterable[str] = ()) -> argparse.ArgumentParser:
    """The ``amyloidkd`` parser with the library's subcommands plus ``command_modules``."""
    parser = argparse.ArgumentParser(
        prog="amyloidkd",
        description="PET-free amyloid-beta positivity from structural MRI (AmyloidKD).",
        epilog="Exit codes: 0 ok, 1 some cases failed, 2 bad usage or input, 3 internal error, "
               "130 interrupted.")
    parser.add_argument("--version", action="version", version=version_text(),
                        help="print the version and exit")
    _add_shared_options(parser, top_level=True)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules = [f"AmyloidKDLib.commands.{name}" for name in LIBRARY_COMMANDS] + list(command_modules)
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            missing = (exc.name or "").split(".")[0]
            if module_name.startswith("AmyloidKDLib.") or missing not in TRAIN_EXTRA:
                raise
            _register_unavailable(subparsers, module_name.rsplit(".", 1)[-1], missing)
            continue
        module.register(subparsers)
    for subparser in subparsers.choices.values():
        if subparser.prefix_chars == "-":  # not the placeholders of uninstalled commands
            _add_shared_options(subparser, top_level=False)
    return parser


def _register_unavailable(subparsers, name: str, missing: str) -> None:
    """List pipeline command ``name`` whose module needs ``missing`` (not installed): running
    it says which extra to install instead of failing at start-up for every command."""
    message = (f"'amyloidkd {name}' needs the training extra (the '{missing}' module is not "
               "installed): pip install 'amyloidkd[train]'")
    # no option prefix: every argument is taken as is, so any command line reaches the message
    command = subparsers.add_parser(name, help="(not installed: pip install 'amyloidkd[train]')",
                                    prefix_chars="\x00", add_help=False)
    command.add_argument("arguments", nargs="*", help=argparse.SUPPRESS)

    def unavailable(args: argparse.Namespace) -> int:
        raise DependencyError(message)

    command.set_defaults(func=unavailable)


def _log_internal_error(command: str) -> Path | None:
    """Write the current exception's traceback to a log file; its path (None if unwritable)."""
    try:
        handle, name = tempfile.mkstemp(prefix=f"amyloidkd-{command}-error-", suffix=".log")
        with os.fdopen(handle, "w", encoding="utf-8") as log:
            log.write(f"{version_text()}\n{time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                      f"argv: {sys.argv}\n\n{traceback.format_exc()}")
        return Path(name)
    except OSError:
        return None


def _line_buffered_stdout() -> None:
    """Flush stdout at each line, as on a terminal, also where it is a file or pipe: otherwise
    its block buffer would reach a shared log file after later progress lines on stderr, or
    split a table between them."""
    try:
        if not sys.stdout.isatty():
            sys.stdout.reconfigure(line_buffering=True)
    except (AttributeError, ValueError, OSError):  # replaced by a stream without them, or closed
        pass


def run(argv: Sequence[str] | None, command_modules: Iterable[str] = ()) -> int:
    """Parse ``argv``, run the chosen subcommand and return its exit code (see the table above)."""
    parser = build_parser(command_modules)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    _line_buffered_stdout()  # a log file (`> log 2>&1`) gets stdout and stderr in order
    logging.getLogger().setLevel(args.log_level)
    previous = os.environ.get("TQDM_DISABLE")
    previous_style = os.environ.get(PROGRESS_STYLE_ENV)
    if previous_style is None:  # (a run inside another, e.g. demo's predict, keeps its style)
        # --progress bar: bars wherever stderr goes; not given: bars on a terminal, else lines
        os.environ[PROGRESS_STYLE_ENV] = "bar" if args.progress == "bar" else "auto"
    args.progress = args.progress or "bar"
    if args.progress != "bar":
        os.environ["TQDM_DISABLE"] = "1"  # every tqdm bar, here and in worker processes
    try:
        return int(args.func(args) or EXIT_OK)
    except AmyloidKDError as exc:
        print(f"amyloidkd {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"amyloidkd {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug: say so in one line, keep the traceback for the report
        if is_disk_full(exc):  # not a bug: the user frees space and runs the command again
            filename = getattr(exc, "filename", None)
            reason = getattr(exc, "strerror", None) or exc
            where = f" while writing {filename}" if filename else ""
            print(f"amyloidkd {args.command}: error: no room to write{where} ({reason}: the disk "
                  "is full or a file-size limit was reached); nothing half-written was kept - "
                  "free space and run the same command again", file=sys.stderr)
            return EXIT_USAGE
        where = _log_internal_error(args.command)
        logged = f"traceback in {where}" if where else "no traceback log could be written"
        print(f"amyloidkd {args.command}: internal error: {type(exc).__name__}: {exc} ({logged}; "
              f"please report it)", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        if previous is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = previous
        if previous_style is None:
            os.environ.pop(PROGRESS_STYLE_ENV, None)


def main(argv: Sequence[str] | None = None) -> None:
    """Library-only entry point (used inside Slicer, where Training is not installed)."""
    sys.exit(run(argv))
