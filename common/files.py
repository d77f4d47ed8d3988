"""Writing a file whole: beside it, then renamed over it.

Invariant: a reader (or a crash) sees the old file or the new one, never half of one; a hard link at the path
(a file shared with another run's folder, ``cluster.experiment.branch``) is replaced, never written through.
"""

from __future__ import annotations

import os
from pathlib import Path


def replace_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (see the module's invariant)."""
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    os.replace(tmp, path)
