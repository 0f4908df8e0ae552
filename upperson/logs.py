"""Logging set-up shared by the three programs (upperson, demo, analysis)."""

from __future__ import annotations

import logging


def setup_logging(level: str | int = "INFO", packages: tuple[str, ...] = ("upperson",)) -> None:
    """Our packages' loggers at ``level``; everything else (open_clip logs on the root logger,
    gradio, httpx) at WARNING unless ``level`` is DEBUG."""
    level = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    logging.basicConfig(level=min(level, logging.WARNING), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for name in packages:
        logging.getLogger(name).setLevel(level)
