"""One switch for operational messages: ``run.log_level`` (or ``$SCORE_LOG_LEVEL``) sets the level of
every package's logger, in the driver and, through the environment, in the Ray workers it starts.

Messages at INFO and DEBUG go to stdout, warnings and errors to stderr. Progress bars and the final
tables are the commands' output, printed as they are; everything else goes through ``logging``.
"""

from __future__ import annotations

import logging
import os
import sys

PACKAGES = ("actors", "bench", "cluster", "common", "learner", "rewards", "weight_sync")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
ENV = "SCORE_LOG_LEVEL"


class _Below(logging.Filter):
    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


def setup_logging(level: str | None = None) -> str:
    """Configure the packages' loggers at ``level`` (default: ``$SCORE_LOG_LEVEL`` or INFO); returns the level."""
    level = (level or os.environ.get(ENV) or "INFO").upper()
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    detailed = logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s")
    plain = logging.Formatter("%(message)s")
    out = logging.StreamHandler(sys.stdout)
    out.addFilter(_Below(logging.WARNING))
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    for handler in (out, err):
        handler.setFormatter(detailed if level == "DEBUG" else plain)
    for name in PACKAGES:
        logger = logging.getLogger(name)
        logger.handlers[:] = [out, err]
        logger.setLevel(level)
        logger.propagate = False
    os.environ[ENV] = level  # Ray workers started from here on inherit it
    return level
