"""``python -m AmyloidKDLib``: the library's command line (see AmyloidKDLib.cli)."""

from AmyloidKDLib.cli import main

main()
