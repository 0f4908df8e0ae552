"""The budget grid as data: points of config overrides on a base preset (``grid.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import yaml

from analysis.ablation.study import Variant

GRID_FILE = Path(__file__).resolve().parent / "grid.yaml"
KINDS = ("petl", "full", "zero-shot")


@dataclass(frozen=True)
class BudgetPoint:
    """One configuration of the sweep."""

    name: str
    label: str
    kind: str  # petl | full | zero-shot
    overrides: tuple[str, ...] = ()
    default: bool = False  # the paper's default configuration (highlighted)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"budget point name {self.name!r}: give a plain folder name")
        if self.kind not in KINDS:
            raise ValueError(f"budget point {self.name}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        bad = [o for o in self.overrides if "=" not in o]
        if bad:
            raise ValueError(f"budget point {self.name}: override {bad[0]!r} is not KEY=VALUE")

    @property
    def trains(self) -> bool:
        return self.kind != "zero-shot"

    def variant(self) -> Variant:
        """The point as an ablation :class:`Variant` (the sweep machinery's unit)."""
        return Variant(self.name, self.overrides, self.label, self.kind, self.label, train=self.trains)


@dataclass(frozen=True)
class BudgetGrid:
    base: str
    seeds: int
    points: tuple[BudgetPoint, ...]

    def __post_init__(self) -> None:
        names = [p.name for p in self.points]
        if not names:
            raise ValueError("the budget grid has no points")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"the budget grid names point {dup[0]!r} twice")
        if self.seeds < 1:
            raise ValueError(f"the budget grid's seeds must be at least 1, got {self.seeds}")

    def select(self, names: Optional[Sequence[str]]) -> "BudgetGrid":
        """The grid restricted to ``names`` (all when None), in grid order; unknown names are an error."""
        if not names:
            return self
        known = [p.name for p in self.points]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"--points: unknown point {unknown[0]!r}; the grid has {', '.join(known)}")
        return BudgetGrid(self.base, self.seeds, tuple(p for p in self.points if p.name in set(names)))


def load_grid(path: Union[str, Path, None] = None) -> BudgetGrid:
    """Read and check a grid file (default: the shipped ``grid.yaml``)."""
    path = Path(path) if path else GRID_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"--grid {path}: no such file") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"--grid {path}: not a readable YAML file ({type(exc).__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get("points"), list):
        raise ValueError(f"--grid {path}: expected a mapping with a 'points' list (see analysis/budget/grid.yaml)")
    points = []
    for i, p in enumerate(data["points"]):
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            raise ValueError(f"--grid {path}: point {i} needs a name")
        extra = set(p) - {"name", "label", "kind", "overrides", "default"}
        if extra:
            raise ValueError(f"--grid {path}: point {p['name']} has unknown field(s) {', '.join(sorted(extra))}")
        overrides = p.get("overrides") or []
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise ValueError(f"--grid {path}: point {p['name']}: overrides must be a list of KEY=VALUE strings")
        points.append(BudgetPoint(p["name"], str(p.get("label", p["name"])), str(p.get("kind", "petl")),
                                  tuple(overrides), bool(p.get("default", False))))
    seeds = data.get("seeds", 2)
    if not isinstance(seeds, int):
        raise ValueError(f"--grid {path}: seeds must be an integer")
    return BudgetGrid(str(data.get("base", "toypedes-regime")), seeds, tuple(points))
