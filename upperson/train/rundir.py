"""The run folder's rules: who may write it, when it comes into being, what a resume may change.

* A run folder exists only once training has really started: :class:`RunFolder` creates the
  folder (and its missing parents) and a lock first, and when the start fails it removes the
  lock and every folder it created, so a failed or refused command changes no byte of it.
* One process writes a run at a time: ``RUN/.lock`` holds the writer's pid and host and an
  ``flock`` for as long as it writes; a lock whose ``flock`` is free and whose process is gone
  (same host) is stale and is taken over.
* ``--resume`` reads the run's own ``config.yaml``; ``--set`` may change only
  :data:`SAFE_RESUME_KEYS`, anything else is refused with the differing keys named.

This module imports no torch, so the command line checks a run folder before heavy imports.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Optional, Sequence

log = logging.getLogger(__name__)

CONFIG_NAME = "config.yaml"
LOCK_NAME = ".lock"

# what --resume may change with --set: how long to train, how to log, how to feed and where the
# data lives, and memory-only switches; never what the model, the data or the optimiser is
SAFE_RESUME_KEYS = frozenset({
    "train.epochs",
    "train.log_every",
    "train.tensorboard",
    "train.grad_checkpointing",
    "data.root",
    "data.num_workers",
    "data.eval_batch_size",
    "data.cache_images",
})


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked (exists, missing, in use, not writable)."""


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """``{key: (old, new)}`` for every dotted key whose value differs between two config dicts."""
    a, b = _flatten(old), _flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def is_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run (its ``config.yaml``)."""
    return (Path(run_dir) / CONFIG_NAME).is_file()


def resume_config(run_dir: Path, overrides: Sequence[str], config: Optional[str] = None):
    """The config to resume ``run_dir`` with: its ``config.yaml`` plus the (safe) ``overrides``.

    With ``config`` (a preset or YAML named again on the command line) the config it gives
    with ``overrides`` must agree with the run's on every key but the safe ones.
    """
    from upperson.config import load_config, load_run_config

    run_dir = Path(run_dir)
    if not is_run(run_dir):
        what = "does not exist" if not run_dir.exists() else f"holds no run (no {CONFIG_NAME})"
        raise RunFolderError(f"--resume: {run_dir} {what}; start the run without --resume")
    check_writable(run_dir)
    saved = load_run_config(run_dir / CONFIG_NAME)
    wanted = load_config(config, list(overrides)) if config else load_run_config(run_dir / CONFIG_NAME, list(overrides))
    refuse_unsafe_changes(run_dir, saved, wanted)
    return wanted


def refuse_unsafe_changes(run_dir: Path, saved, wanted) -> dict[str, tuple[Any, Any]]:
    """Raise :class:`RunFolderError` naming every key outside :data:`SAFE_RESUME_KEYS` on which two
    configs differ; returns the (safe) differences."""
    from upperson.config import to_dict

    diff = config_differences(to_dict(saved), to_dict(wanted))
    unsafe = {k: v for k, v in diff.items() if k not in SAFE_RESUME_KEYS}
    if unsafe:
        shown = "; ".join(f"{k}: run {json.dumps(a)}, now {json.dumps(b)}" for k, (a, b) in unsafe.items())
        raise RunFolderError(
            f"--resume refused: {run_dir} was trained with a different config ({shown}). On resume only "
            f"{', '.join(sorted(SAFE_RESUME_KEYS))} may change; start a new run (another --output) to change the rest"
        )
    return diff


def log_config_changes(run_dir: Path, cfg) -> None:
    """On resume: refuse a ``cfg`` that differs from the run's config.yaml on an unsafe key, and log
    (into train.log) each safe change."""
    from upperson.config import load_run_config

    saved = load_run_config(Path(run_dir) / CONFIG_NAME)
    for k, (a, b) in refuse_unsafe_changes(run_dir, saved, cfg).items():
        log.info("resume: %s changed from %s to %s", k, json.dumps(a), json.dumps(b))


def check_writable(run_dir: Path) -> None:
    """Refuse a run folder that could not be written: try a (removed at once) file in it, or in
    the nearest folder above it that exists."""
    from upperson.io import nearest_existing, probe_write

    try:
        probe_write(nearest_existing(run_dir))
    except OSError as exc:
        raise RunFolderError(f"cannot write the run folder {run_dir}: {exc.strerror or exc}; "
                             "choose a writable --output") from None


def check_new_run(run_dir: Path) -> None:
    """Refuse to start a new run in ``run_dir`` when it holds a run, or other files, or cannot be written."""
    run_dir = Path(run_dir)
    if is_run(run_dir):
        raise RunFolderError(f"{run_dir} already holds a run: pass --resume to continue it, or choose another --output")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"--output {run_dir} is a file, not a folder; choose another --output")
    if run_dir.is_dir():
        others = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_NAME)
        if others:
            raise RunFolderError(
                f"{run_dir} is not empty and holds no run (e.g. {others[0]!r}); choose a new or empty --output"
            )
    check_writable(run_dir)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """``RUN/.lock``: the writer's pid and host, and a ``flock`` held while it writes.

    The kernel drops the ``flock`` when the writer dies (kill -9 included), so whether a lock is
    held is never guessed from the file's content, which anyone could rewrite: a lock whose
    ``flock`` is held is refused, whatever its file says. A file without a live ``flock`` is
    taken over unless it names a live process on this host (a writer without ``flock``) or
    another host (whose processes cannot be seen from here).
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.held = False
        self._fd: Optional[int] = None

    def _holder(self) -> Optional[dict]:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else None
        except (OSError, ValueError):
            return None

    def _stale(self, holder: Optional[dict]) -> bool:
        """Whether a lock file whose ``flock`` nobody holds may be taken over."""
        if holder is None:  # empty or unreadable: left by a crash between creating and writing it
            return True
        if holder.get("host") != socket.gethostname():
            return False  # cannot tell whether a process on another machine is alive
        pid = holder.get("pid")
        return not isinstance(pid, int) or not _pid_alive(pid)

    def _refuse(self, holder: Optional[dict]) -> RunFolderError:
        who = f"pid {holder.get('pid')} on {holder.get('host')}" if holder else "a process starting up"
        return RunFolderError(f"{self.path.parent} is in use by another process ({who}); wait for it to finish, "
                              f"or delete {self.path} if that process is gone")

    def _open_locked(self) -> Optional[int]:
        """Open the lock file and take its ``flock``; None when the file was replaced meanwhile."""
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._refuse(self._holder()) from None
        except OSError:
            pass  # a file system without flock: the file's content is all there is
        try:
            same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            same = False  # removed by the writer that held it, as it released it
        if not same:
            os.close(fd)
            return None
        return fd

    def acquire(self) -> None:
        """Take the lock or raise :class:`RunFolderError` naming the process that holds it."""
        for _ in range(3):
            fd = self._open_locked()
            if fd is None:
                continue
            holder = self._holder()
            if holder is not None and not self._stale(holder):
                os.close(fd)
                raise self._refuse(holder)
            if holder is not None:
                log.warning("%s: taking over a stale lock (pid %s is gone)", self.path, holder.get("pid"))
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode())
            os.fsync(fd)
            self._fd, self.held = fd, True
            return
        raise RunFolderError(f"{self.path}: could not take the lock; try again")

    def release(self) -> None:
        """Remove the lock if this process holds it (the file first, then the ``flock``)."""
        if self.held:
            holder = self._holder()
            if holder is None or holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class RunFolder:
    """Open a run folder for writing: create what is missing, lock it, undo both when the start fails."""

    def __init__(self, run_dir: Path, resume: bool) -> None:
        self.path = Path(run_dir)
        self.resume = resume
        self.created: list[Path] = []  # folders this process made, deepest first
        self.lock = RunLock(self.path)
        self.started = False

    def open(self) -> None:
        """Create the folder (if new) and take the lock; check it may be used as asked."""
        p = self.path
        while not p.exists() and p != p.parent:
            self.created.append(p)
            p = p.parent
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self.lock.acquire()
        except RunFolderError:
            self.abandon()
            raise
        except OSError as exc:
            self.abandon()
            raise RunFolderError(
                f"cannot write the run folder {self.path}: {exc.strerror or exc}; choose a writable --output"
            ) from None
        try:
            if self.resume:
                if not is_run(self.path):
                    raise RunFolderError(f"--resume: {self.path} holds no run (no {CONFIG_NAME}); start it without --resume")
            else:
                check_new_run(self.path)
        except BaseException:
            self.abandon()
            raise

    def abandon(self) -> None:
        """A failed start: drop the lock and the (empty) folders this process created."""
        self.lock.release()
        for d in self.created:
            try:
                d.rmdir()
            except OSError:
                break
        self.created = []

    def close(self) -> None:
        """Training is over (or failed after it started): drop the lock, keep the folder."""
        self.lock.release()
