"""Where a study folder came from: the commit of the code that wrote it and when (its README says)."""

from __future__ import annotations

import datetime
import subprocess
from pathlib import Path


def git_commit() -> str:
    """The short commit of this checkout, or ``unknown`` (not a git checkout, or git missing)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def made_on() -> str:
    """Now, as a study's README writes it (UTC, to the minute)."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
