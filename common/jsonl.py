"""JSON Lines files (``metrics.jsonl``, ``timings.jsonl``): one JSON object per line, blank lines ignored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.files import replace_text


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every record in ``path``, in order; an empty list when the file does not exist yet."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """Replace ``path`` with ``records``, one per line, atomically and never through a hard link (``replace_text``)."""
    replace_text(path, "".join(json.dumps(r) + "\n" for r in records))
