"""Run ``python -m upperson ...`` (or another module) as a subprocess and check its failure.

Shared by the command-line error batteries (``tests/test_cli_errors.py`` and others)::

    from tests.cli_battery import run_cli, assert_one_error

    proc = run_cli(["train", "--config", "toypedes", "--output", str(out), "--set", "data.batch_size=0"])
    assert_one_error(proc, must_contain="batch_size")

Every command-line failure must be exactly one line starting with ``error:`` on stderr,
exit status 2, and no ``Traceback``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence, Union

REPO = Path(__file__).resolve().parent.parent


def cli_env(extra: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """The environment for a subprocess: the repo importable, one thread, offline, no colour."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TQDM_DISABLE", "1")
    env.setdefault("PYTHONWARNINGS", "ignore")
    env.setdefault("NO_COLOR", "1")
    if extra:
        env.update(extra)
    return env


def run_cli(args: Sequence[Union[str, os.PathLike]], cwd: Optional[Union[str, os.PathLike]] = None,
            timeout: float = 180, module: str = "upperson",
            env: Optional[Mapping[str, str]] = None, input: Optional[str] = None) -> subprocess.CompletedProcess:
    """Run ``python -m <module> *args`` in ``cwd`` (default: the repo) and capture text output."""
    cmd = [sys.executable, "-m", module, *[str(a) for a in args]]
    return subprocess.run(cmd, cwd=str(cwd or REPO), env=cli_env(env), capture_output=True, text=True,
                          timeout=timeout, input=input)


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """The lines of stderr that start with ``error:``."""
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def assert_one_error(proc: subprocess.CompletedProcess, must_contain: Union[str, Iterable[str], None] = None,
                     code: int = 2) -> str:
    """Assert exit ``code``, exactly one ``error:`` line on stderr, no traceback; return that line.

    ``must_contain``: text (or several) that the error line must contain, case-insensitively.
    """
    detail = f"\n--- cmd: {proc.args}\n--- rc: {proc.returncode}\n--- stdout:\n{proc.stdout[-3000:]}" \
             f"\n--- stderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == code, f"exit status {proc.returncode}, expected {code}{detail}"
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, f"a traceback{detail}"
    lines = error_lines(proc)
    assert len(lines) == 1, f"{len(lines)} 'error:' lines, expected exactly one{detail}"
    line = lines[0]
    if must_contain is not None:
        wanted = [must_contain] if isinstance(must_contain, str) else list(must_contain)
        for text in wanted:
            assert text.lower() in line.lower(), f"{text!r} not in the error line {line!r}{detail}"
    return line
