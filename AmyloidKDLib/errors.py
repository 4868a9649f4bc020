"""The library's own error types.

Every failure a user can cause (bad input file, missing model weights, a config that makes
no sense) raises a subclass of :class:`AmyloidKDError` whose message says what was wrong and
what to do. The command-line tools print that message as one line and exit with code 2.
"""

from __future__ import annotations


class AmyloidKDError(Exception):
    """Base class for errors caused by input, configuration or environment (not bugs)."""


class InputError(AmyloidKDError):
    """An input file or array is missing, unreadable or not a usable image."""


class ConfigError(AmyloidKDError):
    """A configuration value is invalid or inconsistent."""


class DependencyError(AmyloidKDError):
    """An optional package or a weights file needed for the requested step is missing."""


class CheckpointError(AmyloidKDError):
    """A checkpoint is missing, truncated, tampered with or incompatible."""
