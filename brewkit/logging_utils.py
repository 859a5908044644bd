"""The ``brewkit`` logger and its default console handler. (Training metrics: :mod:`brewkit.engine.step_logger`.)"""
from __future__ import annotations

import logging
import sys

logger = logging.getLogger("brewkit")


def ensure_default_handler() -> None:
    """Attach a console handler to the ``brewkit`` logger unless the application configured logging."""
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
