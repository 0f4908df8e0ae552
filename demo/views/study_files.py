"""Where the Studies views (Transfer, Budget, Probe) read their folders: an allow-list of roots.

A study folder is what ``python -m analysis transfer|budget|binding --out DIR`` writes. The
views read one only below a *known* root: the shipped folder of its kind (``assets/transfer``,
``assets/budget``, ``assets/binding``) or a folder the person who starts the demo named with
``python -m demo --studies DIR`` (repeatable). A root is never derived from the data (a path
in a table, a visitor's text): a visitor's folder is resolved (symlinks followed) and must lie
inside one of these roots, and every file is opened through :func:`demo.thumbs.open_inside`,
which checks the real path again on the opened file, so a link swapped in meanwhile is refused.
A path written in a study's own table (a per-query file) must also stay inside that study.

What the app serves of a study is only what it draws from these files (figures, into its own
allow-listed image folder); the study's files themselves are never served.

An empty folder means the default: the first ``--studies`` folder that holds the kind's table
(the folder itself, or its sub-folder named as the shipped one: ``DIR/transfer``), else the
shipped folder. When that has no table either, :class:`StudyMissing` says how to make it.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from demo.gallery import GalleryError, resolve_under
from demo.search import QueryError
from demo.tabs import view_label
from demo.thumbs import OutsideRoots, open_inside, real, within

MAX_TABLE_BYTES = 16 * 2**20
MAX_PER_QUERY_BYTES = 64 * 2**20


@dataclass(frozen=True)
class StudyKind:
    """One kind of study: its table (what marks a folder as one), its shipped folder and its command."""

    key: str
    table: str
    shipped: str  # the folder under assets/
    command: str  # how to make one (shown when none is there)


KINDS: dict[str, StudyKind] = {k.key: k for k in (
    StudyKind("transfer", "transfer.csv", "transfer",
              "python -m analysis transfer --source cuhk --source icfg --source rstp --target cuhk --target icfg "
              "--target rstp --data-root cuhk=DATA/cuhk ... --out DIR"),
    StudyKind("budget", "budget.csv", "budget",
              "python -m analysis budget --data-root DATA/cuhk --target icfg=DATA/icfg --out DIR"),
    StudyKind("probe", "binding.csv", "binding",
              "python -m analysis binding --run RUN --compare FULL_FINETUNE_RUN --out DIR"),
)}


class StudyMissing(QueryError):
    """No study of a kind where the views look by default: not shipped yet, and none given."""


def shipped_root() -> Path:
    """``assets/`` of this repository (the shipped studies' parent)."""
    from upperson.embedded import REPO_ROOT  # (the embedded model's module: only once a study is read)

    return REPO_ROOT / "assets"


class StudyFiles:
    """The study roots of one app: the shipped folders and the ``--studies`` folders (resolved once)."""

    def __init__(self, extra: Sequence[Path] = (), shipped: Optional[Path] = None) -> None:
        self.extra = [real(p) for p in extra]
        self.shipped = real(shipped if shipped is not None else shipped_root())

    def kind(self, key: str) -> StudyKind:
        return KINDS[key]

    def shipped_folder(self, key: str) -> Path:
        return self.shipped / KINDS[key].shipped

    def roots(self, key: str) -> list[Path]:
        """The folders a study of kind ``key`` may be read from: its shipped folder, then every ``--studies``."""
        return [self.shipped_folder(key), *self.extra]

    def candidates(self, key: str) -> list[Path]:
        """Where a default study of kind ``key`` may be: each ``--studies`` folder and its sub-folder of the
        kind's name, then the shipped folder."""
        name = KINDS[key].shipped
        return [p for r in self.extra for p in (r, r / name)] + [self.shipped_folder(key)]

    def default(self, key: str) -> Path:
        """The first candidate holding the kind's table; StudyMissing (with the command) when none does."""
        kind = KINDS[key]
        for folder in self.candidates(key):
            table = folder / kind.table
            if table.is_file() and within(real(table), self.roots(key)):
                return real(folder)
        given = (f" none of the --studies folders ({', '.join(map(str, self.extra))}) holds one either;"
                 if self.extra else "")
        raise StudyMissing(f"The {key} study is not shipped yet (no assets/{kind.shipped}/{kind.table});{given} "
                           f"run: {kind.command}, then start the demo with --studies DIR (or make DIR "
                           f"assets/{kind.shipped}: the default, no option needed).")

    def folder(self, key: str, value: object) -> Path:
        """The study folder to read: the default for an empty ``value``, else ``value`` (relative to the first
        ``--studies`` folder) resolved inside the kind's roots; QueryError otherwise."""
        if value is not None and not isinstance(value, str):
            raise QueryError(f"The folder must be text; got {type(value).__name__}.")
        if value is None or not value.strip():
            return self.default(key)
        roots = [*self.extra, self.shipped_folder(key)]  # a relative folder: below the first --studies folder
        try:
            path = resolve_under(value, roots)
        except GalleryError as exc:
            raise QueryError(f"{exc}. Studies are read only from the shipped folder and the --studies folders; "
                             "leave the folder empty for the default.") from None
        command = KINDS[key].command.split(" --")[0]  # `python -m analysis binding` for the probe
        if not path.is_dir():
            where = f" (a relative folder is read below {roots[0]})" if not os.path.isabs(value.strip()) else ""
            raise QueryError(f"{value}: not a folder{where}; give the --out folder of `{command}`.")
        if not (path / KINDS[key].table).is_file():
            other = next((k for k in KINDS.values() if k.key != key and (path / k.table).is_file()), None)
            hint = f" it holds {other.table}: a study of the {view_label(other.key)} view;" if other else ""
            raise QueryError(f"{value}: no {KINDS[key].table} in this folder;{hint} give the --out folder of "
                             f"`{command}` (or leave it empty for the default).")
        return path

    def read_bytes(self, key: str, folder: Path, relative: str, limit: int) -> bytes:
        """The file ``folder/relative`` of a study (checked: inside the study folder and the kind's roots, when
        opened, at most ``limit`` bytes); QueryError naming the file otherwise."""
        rel = str(relative).strip()
        if not rel or "\x00" in rel or os.path.isabs(rel):
            raise QueryError(f"{rel[:80]!r}: not a file of the study (a path inside its folder is expected).")
        path = Path(folder) / rel
        if not within(real(path), [real(folder)]):
            raise QueryError(f"{rel[:80]}: resolves outside the study folder; not read.")
        try:
            with open_inside(path, self.roots(key)) as fh:
                data = fh.read(limit + 1)
        except OutsideRoots:
            raise QueryError(f"{rel[:80]}: resolves outside the study folders; not read.") from None
        except FileNotFoundError:
            raise QueryError(f"{rel[:80]}: no such file in the study folder {Path(folder).name}.") from None
        except OSError as exc:
            raise QueryError(f"{rel[:80]}: cannot be read ({exc.strerror or type(exc).__name__}).") from None
        if len(data) > limit:
            raise QueryError(f"{rel[:80]}: larger than {limit // 2**20} MB; not read.")
        return data

    def read_csv(self, key: str, folder: Path, relative: str, limit: int = MAX_TABLE_BYTES,
                 remade_by: Optional[str] = None) -> pd.DataFrame:
        """A CSV file of the study, read with pandas; QueryError when it is not a table, or (``remade_by``: the
        command that writes it, always with a final line break) when it ends in the middle of a line."""
        data = self.read_bytes(key, folder, relative, limit)
        if remade_by:
            refuse_cut_short(data, relative, remade_by)
        try:
            return pd.read_csv(io.BytesIO(data))
        except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise QueryError(f"{relative}: cannot be read as a table ({exc}).") from None

    def stamp(self, folder: Path, names: Sequence[str]) -> tuple:
        """What a cached reading of ``folder`` depends on: where it resolves and its files' mtimes and sizes."""
        out = [str(real(folder))]
        for n in names:
            try:
                st = os.stat(Path(folder) / n)
                out.append((n, st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((n, None))
        return tuple(out)


def refuse_cut_short(data: bytes, relative: str, command: str) -> None:
    """QueryError when ``data`` (a file the CLI writes, always ending in a line break) ends in the middle of a line:
    an interrupted run or copy; ``command`` makes it again."""
    if data and not data.endswith(b"\n"):
        line = data.count(b"\n") + 1
        raise QueryError(f"{str(relative)[:80]} ends in the middle of line {line}: the file was cut short (an "
                         f"interrupted run or copy?): run `{command}` again, or give another folder.")


def require_filled(df: pd.DataFrame, table: str, command: str, numbers: Sequence[str],
                   texts: Sequence[str] = ()) -> None:
    """QueryError naming the first line of ``table`` where a column of ``numbers`` is not a finite number or one of
    ``texts`` is empty: what a table cut short (an interrupted or edited run) looks like; ``command`` remakes it.

    Line numbers count the header as line 1 (one line per row: the CLI's tables hold no line breaks)."""
    bad: list[tuple[int, str, object]] = []
    for col in numbers:
        vals = pd.to_numeric(df[col], errors="coerce").astype(float)
        where = (~vals.map(math.isfinite)).to_numpy().nonzero()[0]
        if len(where):
            value = df[col].iloc[where[0]]
            shown = "" if pd.isna(value) else f" ({str(value)[:40]!r})"
            bad.append((int(where[0]), col, f"is empty or not a number{shown}"))
    for col in texts:
        where = df[col].isna().to_numpy().nonzero()[0]
        if len(where):
            bad.append((int(where[0]), col, "is empty"))
    if bad:
        row, col, what = min(bad, key=lambda b: (b[0], list(df.columns).index(b[1])))
        raise QueryError(f"{table} line {row + 2}: column {col!r} {what}; the table looks "
                         f"cut short or edited (an interrupted run?): run `{command}` again, or give another folder.")
