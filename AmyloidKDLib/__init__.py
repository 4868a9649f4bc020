"""AmyloidKDLib: the computing library behind AmyloidKD.

Loads and validates volumes, preprocesses and registers them to MNI152, slices them,
builds the teacher and student models, runs inference and saliency. It imports nothing
from 3D Slicer, so it works the same in Slicer, in the training pipeline and in scripts.
"""

from AmyloidKDLib.errors import (  # noqa: F401
    AmyloidKDError,
    CheckpointError,
    ConfigError,
    DependencyError,
    InputError,
)

__version__ = "0.1.0"

# Volume I/O needs numpy and nibabel; it is imported on first use so that the standard-library
# parts (errors, layouts, atomic) import without them, e.g. in the Slicer module before its
# first package install.
_LAZY = {"Volume", "load_volume", "save_volume"}


def __getattr__(name: str):
    if name in _LAZY:
        from AmyloidKDLib import volume

        return getattr(volume, name)
    raise AttributeError(f"module 'AmyloidKDLib' has no attribute {name!r}")
