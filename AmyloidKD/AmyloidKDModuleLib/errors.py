"""The error the Slicer module's helpers raise.

It is not :class:`AmyloidKDLib.AmyloidKDError` on purpose: importing ``AmyloidKDLib`` pulls in
nibabel, and these helpers must work inside Slicer before the library's dependencies are
installed (installing them is one of their jobs).
"""


class ModuleError(Exception):
    """Something the user can fix (a missing file, a dependency, a bad choice); the message says how."""
