"""Logging set-up shared by the three programs (upperson, demo, analysis)."""

from __future__ import annotations

import logging
import os

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str | int = "INFO", packages: tuple[str, ...] = ("upperson",)) -> None:
    """Our packages' loggers at ``level``; everything else at WARNING (open_clip logs INFO
    lines on the root logger, gradio and httpx on their own), unless ``level`` is DEBUG
    (``-v``), which brings every logger's INFO and DEBUG lines back.

    In a ``torchrun`` job, the processes other than rank 0 log only WARNING and above, each line
    marked ``[rank N]``: rank 0 says the INFO lines once (with ``-v``, every rank says everything)."""
    if isinstance(level, str):
        name = level.strip().upper()
        level = logging.getLevelName(name)
        if not isinstance(level, int):
            raise ValueError(f"unknown log level {name!r}; use DEBUG, INFO, WARNING or ERROR")
    rank = os.environ.get("RANK", "0").strip() or "0"
    fmt = FORMAT if rank == "0" else f"[rank {rank}] {FORMAT}"
    if rank != "0" and level > logging.DEBUG:
        level = max(level, logging.WARNING)
    third_party = logging.DEBUG if level <= logging.DEBUG else max(level, logging.WARNING)
    logging.basicConfig(level=third_party, format=fmt, datefmt="%H:%M:%S")
    # basicConfig does nothing when the root logger already has a handler: set the level anyway
    logging.getLogger().setLevel(third_party)
    for name in packages:
        logging.getLogger(name).setLevel(level)
