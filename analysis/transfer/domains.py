"""The domains of a transfer study: a name, the dataset reader that reads it, and its data root.

ToyPEDES domains (``cuhk``, ``icfg``, ``rstp``: ``python -m upperson toypedes --domain``) are
read as ``toypedes``; the real datasets by their own readers (``cuhk-pedes``, ``icfg-pedes``,
``rstpreid``; ``rstp-pedes`` is accepted for ``rstpreid``). Each has its own data root.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

#: ToyPEDES domain -> its label in tables and figures
TOY_DOMAINS = {"cuhk": "CUHK", "icfg": "ICFG", "rstp": "RSTP"}
#: real dataset (reader name) -> label
REAL_DATASETS = {"cuhk-pedes": "CUHK", "icfg-pedes": "ICFG", "rstpreid": "RSTP"}
ALIASES = {"rstp-pedes": "rstpreid"}


@dataclass(frozen=True)
class Domain:
    """One source or target domain."""

    name: str  # as typed (after aliases): cuhk, icfg-pedes, ...
    dataset: str  # the reader: toypedes, cuhk-pedes, ...
    root: Path


def canonical(name: str) -> str:
    """The domain name ``name`` stands for; an error naming the known ones otherwise."""
    name = ALIASES.get(name, name)
    if name not in TOY_DOMAINS and name not in REAL_DATASETS:
        raise ValueError(f"unknown domain {name!r}: give a ToyPEDES domain ({', '.join(TOY_DOMAINS)}) or a dataset "
                         f"({', '.join(REAL_DATASETS)})")
    return name


def parse_roots(specs: Sequence[str]) -> dict[str, Path]:
    """``--data-root NAME=DIR`` items as ``{name: folder}``; each folder must exist."""
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise ValueError(f"--data-root {spec!r}: give NAME=DIR, e.g. --data-root cuhk=data/cuhk")
        name = canonical(name.strip())
        if name in out:
            raise ValueError(f"--data-root {name} is given twice")
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise ValueError(f"--data-root {name}={folder}: no such folder")
        out[name] = path
    return out


def resolve(names: Sequence[str], roots: Mapping[str, Path]) -> list[Domain]:
    """The domains ``names`` (in order, once each), each with its data root."""
    out: list[Domain] = []
    for n in names:
        n = canonical(n)
        if n in (d.name for d in out):
            continue
        if n not in roots:
            raise ValueError(f"domain {n} has no data root: add --data-root {n}=DIR")
        out.append(Domain(n, "toypedes" if n in TOY_DOMAINS else n, roots[n]))
    kinds = {d.dataset == "toypedes" for d in out}
    if len(kinds) > 1:
        raise ValueError("a study mixes ToyPEDES domains and real datasets: "
                         f"{', '.join(d.name for d in out)}; keep to one kind")
    return out


def cells(sources: Sequence[Domain], targets: Sequence[Domain]) -> list[tuple[Domain, Domain]]:
    """The study's (source, target) cells: each source on itself, then on every other target."""
    return [pair for s in sources for pair in [(s, s), *((s, t) for t in targets if t.name != s.name)]]
