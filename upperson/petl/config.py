"""What every PETL component's config shares: ``enabled``, ``depth`` and validation in ``__post_init__``.

A component's config is a dataclass that declares its own fields (``enabled`` and ``depth``
first among them, in the order it wants them written) and inherits these methods. A bad
value is refused where the config is built, in YAML or in Python, with
:class:`ComponentConfigError` naming the field (``upperson.config`` adds the section path).
"""

from __future__ import annotations

from typing import Any, Optional


class ComponentConfigError(ValueError):
    """A component config value that cannot be used; the message starts with the field's name."""


def require(ok: bool, key: str, rule: str, value: Any) -> None:
    """Raise :class:`ComponentConfigError` ``"<key> must be <rule>, got <value>"`` unless ``ok``."""
    if not ok:
        raise ComponentConfigError(f"{key} must be {rule}, got {value!r}")


class ComponentConfig:
    """Mixin for a component's config dataclass (no fields of its own, so the subclass's field order is kept)."""

    enabled: bool
    depth: Optional[int]

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field (also called by ``upperson.config.validate``, after any later change)."""
        require(isinstance(self.enabled, bool), "enabled", "true or false", self.enabled)
        depth = self.depth
        require(depth is None or (isinstance(depth, int) and not isinstance(depth, bool) and depth >= 0),
                "depth", ">= 0, or null for every block", depth)
        self.check()

    def check(self) -> None:
        """The component's own rules; raise with :func:`require`."""

    def applies_to(self, index: int) -> bool:
        """Whether block ``index`` (0-based, per tower) gets this component."""
        return bool(self.enabled) and (self.depth is None or index < self.depth)
