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
from AmyloidKDLib.volume import Volume, load_volume, save_volume  # noqa: F401

__version__ = "0.1.0"
