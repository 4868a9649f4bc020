"""Subcommands of the ``amyloidkd`` command line, one module each (see AmyloidKDLib.cli)."""
