"""The app's tabs as data: three groups (Search, Explore, Studies) holding the seven views.

Seven tab labels do not fit a 390 px tab bar (Gradio moves the rest behind a "⋯" menu), so the
views are grouped: the top bar has three tabs and each group its own bar. Every view keeps its
tab's ``id`` (the key) and ``elem_id`` (``tab-<key>``; its button ``#tab-<key>-button``); a
group's tab is ``tab-<group>``. :func:`tab_path` is how the tests and ``demo.screenshot`` find a
view: the tabs to click, top bar first. Only the standard library here: imported by
``demo.screenshot`` and the tests without Gradio.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TabGroup:
    """A top-bar tab: its key and label, and the views it holds as (key, label); none for a view of its own."""

    key: str
    label: str
    views: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        keys = [k for k, _ in self.views]
        if len(set(keys)) != len(keys):
            raise ValueError(f"tab group {self.key!r}: a view is listed twice ({keys})")


TAB_GROUPS: tuple[TabGroup, ...] = (
    TabGroup("search", "Search"),
    TabGroup("explore", "Explore", (("attention", "Attention"), ("embeddings", "Embeddings"))),
    TabGroup("studies", "Studies", (("ablation", "Ablation"), ("transfer", "Transfer"), ("budget", "Budget"),
                                    ("probe", "Probe"))),
)


def view_keys() -> list[str]:
    """Every view's key, in the order of the tabs (Search first)."""
    return [k for g in TAB_GROUPS for k in ([g.key] if not g.views else [v for v, _ in g.views])]


def view_label(key: str) -> str:
    """The tab label of the view ``key``."""
    for g in TAB_GROUPS:
        if g.key == key and not g.views:
            return g.label
        for k, label in g.views:
            if k == key:
                return label
    raise KeyError(f"no view {key!r}; views: {', '.join(view_keys())}")


def tab_path(key: str) -> tuple[str, ...]:
    """The tab keys to click to show the view ``key``: ``("search",)`` or ``("studies", "transfer")``."""
    for g in TAB_GROUPS:
        if g.key == key and not g.views:
            return (g.key,)
        if any(k == key for k, _ in g.views):
            return (g.key, key)
    raise KeyError(f"no view {key!r}; views: {', '.join(view_keys())}")
