"""CSV text of the phantom's tables (the layouts' CSVs and the ground truth), shared by every
layout writer."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence


def csv_text(header: Sequence[str], rows: list[dict]) -> str:
    """``rows`` under ``header`` as CSV text (``\\n`` line ends)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(header), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
