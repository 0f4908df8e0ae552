"""Trainable and total parameters, by component."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from upperson.petl.registry import component_of, components

_UNUSED = ("logit_scale", "logit_bias")


@dataclass
class ParamReport:
    """Parameter counts; ``by_component[name] = {"trainable": n, "total": n}``."""

    by_component: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def trainable(self) -> int:
        return sum(c["trainable"] for c in self.by_component.values())

    @property
    def total(self) -> int:
        return sum(c["total"] for c in self.by_component.values())

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / max(1, self.total)

    def to_json(self) -> dict:
        """``{"trainable", "total", "percent", "by_component"}``, as the CLI prints it."""
        return {
            "trainable": self.trainable,
            "total": self.total,
            "percent": round(self.percent, 4),
            "by_component": self.by_component,
        }

    def table(self) -> str:
        """A plain-text table for logs and the terminal."""
        rows = [f"{'component':<10} {'trainable':>13} {'total':>13}"]
        for name, c in self.by_component.items():
            rows.append(f"{name:<10} {c['trainable']:>13,} {c['total']:>13,}")
        rows.append(f"{'all':<10} {self.trainable:>13,} {self.total:>13,}   ({self.percent:.2f} % trainable)")
        return "\n".join(rows)


def count_parameters(model: nn.Module) -> ParamReport:
    """Count parameters by component, one row per registered component and one for the backbone. A
    component that is off by default has a row only where the model has it (as its config section).
    CLIP's ``logit_scale``/``logit_bias`` are left out: UP-Person's losses use a fixed temperature,
    so they are not part of the model."""
    counts = {c.name: {"trainable": 0, "total": 0} for c in components()}
    counts["backbone"] = {"trainable": 0, "total": 0}
    for name, p in model.named_parameters():
        if name.split(".")[-1] in _UNUSED:
            continue
        c = counts[component_of(name)]
        c["total"] += p.numel()
        if p.requires_grad:
            c["trainable"] += p.numel()
    shown = {c.name for c in components() if c.on_by_default or counts[c.name]["total"]} | {"backbone"}
    return ParamReport({name: n for name, n in counts.items() if name in shown})
