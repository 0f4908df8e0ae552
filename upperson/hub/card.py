"""The Hub model card (``README.md``) of a Hub-style folder: YAML front matter plus a short body.

The front matter is written with huggingface_hub's own ``ModelCardData``/``EvalResult``
(``library_name``, ``license``, ``tags``, ``base_model``, ``datasets``, ``metrics`` and a
``model-index`` whose results carry each metric's value and, where known, its bootstrap
interval in ``args``). The card is a checksummed sidecar of the checkpoint (see
``upperson.hub``), so it is written once, before the weights.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from huggingface_hub import EvalResult, ModelCard, ModelCardData

LIBRARY_NAME = "upperson"
DEFAULT_TAGS = ("upperson", "open_clip", "text-based-person-retrieval", "person-reid", "peft")
TASK_TYPE = "text-to-image-retrieval"
UNKNOWN_LICENSE = "unknown"
# metric key in results.json -> (model-index metric type, display name)
METRIC_TYPES = {"R1": ("recall@1", "R@1"), "R5": ("recall@5", "R@5"), "R10": ("recall@10", "R@10"),
                "mAP": ("map", "mAP"), "mINP": ("minp", "mINP")}


@dataclass(frozen=True)
class MetricResult:
    """One metric of one evaluation, in percent, with its interval when one was computed."""

    metric: str  # a key of METRIC_TYPES
    value: float
    dataset: str
    split: str = "test"
    config: Optional[str] = None  # the dataset's configuration (e.g. a ToyPEDES preset)
    low: Optional[float] = None
    high: Optional[float] = None

    def __post_init__(self) -> None:
        if self.metric not in METRIC_TYPES:
            raise ValueError(f"card metric {self.metric!r}: choose from {', '.join(METRIC_TYPES)}")
        if not self.dataset:
            raise ValueError(f"card metric {self.metric}: name the dataset it was measured on")
        numbers = [self.value] + [v for v in (self.low, self.high) if v is not None]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) and 0 <= v <= 100 for v in numbers):
            raise ValueError(f"card metric {self.metric}: {numbers} are not all percentages in [0, 100]")
        if (self.low is None) != (self.high is None):
            raise ValueError(f"card metric {self.metric}: give both ends of the interval, or neither")
        if self.low is not None and not self.low <= self.value <= self.high:
            raise ValueError(f"card metric {self.metric}: {self.value} is outside its interval "
                             f"[{self.low}, {self.high}]")


@dataclass(frozen=True)
class HubCard:
    """What the model card says beyond what the checkpoint itself records."""

    name: str = "UP-Person"
    repo_id: Optional[str] = None  # ORG/NAME, for the loading example
    license: str = UNKNOWN_LICENSE
    datasets: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    base_model: Optional[str] = None  # a Hub model id; None: derived from the open_clip tag where there is one
    metrics: tuple[MetricResult, ...] = ()
    interval: dict = field(default_factory=dict)  # method, level, resamples, seed, queries of the intervals
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("card name: give a non-empty name")
        if not self.license.strip() or any(c.isspace() for c in self.license):
            raise ValueError(f"card license {self.license!r}: give a Hub license id such as apache-2.0 or mit")
        for m in self.metrics:
            if not isinstance(m, MetricResult):
                raise ValueError(f"card metrics: {m!r} is not a MetricResult")
        if any(m.low is not None for m in self.metrics) and not self.interval.get("level"):
            raise ValueError("card metrics have intervals: say how they were made (interval: method, level, ...)")


def render_card(card: HubCard, *, model_name: str, backbone: str, fingerprint: str, parameters: int,
                base_model: Optional[str]) -> str:
    """The ``README.md`` text: YAML front matter (huggingface_hub's format) and a Markdown body."""
    results = [EvalResult(task_type=TASK_TYPE, task_name="Text-based person retrieval",
                          dataset_type=m.dataset.lower(), dataset_name=m.dataset, dataset_split=m.split,
                          dataset_config=m.config,
                          metric_type=METRIC_TYPES[m.metric][0], metric_name=METRIC_TYPES[m.metric][1],
                          metric_value=round(float(m.value), 4),
                          metric_args=_interval_args(m, card.interval) if m.low is not None else None)
               for m in card.metrics]
    data = ModelCardData(
        library_name=LIBRARY_NAME, license=card.license, tags=list(dict.fromkeys((*DEFAULT_TAGS, *card.tags))),
        base_model=base_model, datasets=list(card.datasets) or None,
        metrics=list(dict.fromkeys(METRIC_TYPES[m.metric][0] for m in card.metrics)) or None,
        eval_results=results or None, model_name=(card.repo_id or card.name) if results else None,
    )
    return f"---\n{data.to_yaml()}\n---\n\n{_body(card, model_name, backbone, fingerprint, parameters)}"


def _interval_args(m: MetricResult, interval: dict) -> dict:
    return {"interval": [round(float(m.low), 4), round(float(m.high), 4)],
            **{k: interval[k] for k in ("method", "level", "resamples", "seed", "queries") if k in interval}}


def _body(card: HubCard, model_name: str, backbone: str, fingerprint: str, parameters: int) -> str:
    e = html.escape  # every string a user chose is escaped: the Hub renders HTML in Markdown
    spec = f"hf-hub:{card.repo_id}" if card.repo_id else "FOLDER"
    lines = [f"# {e(card.name)}", ""]
    if card.description:
        lines += [e(card.description), ""]
    lines += [
        f"UP-Person PETL weights ({parameters:,} trained parameters: the prefix, LoRA and adapters only) for the "
        f"open_clip backbone `{e(model_name)}` with the `{e(backbone)}` weights (fingerprint `{e(fingerprint)}`, "
        "checked on loading).",
        "",
        "This folder is an UP-Person checkpoint (format 3): `petl.safetensors`, `petl.json` and this card, whose "
        "SHA-256 is bound into the weights. An edited card (on the Hub too) is refused on loading, as edited "
        "weights are: to change it, push again.",
        "",
        "## Loading",
        "",
        "```python",
        "from upperson.hub import from_pretrained",
        f'model = from_pretrained("{e(spec)}")',
        "```",
        "",
        f"or `--checkpoint {e(spec)}` with `python -m upperson index` / `search` and `python -m analysis`. It is "
        "read from the local Hugging Face cache; "
        "UP-Person downloads only with `UPPERSON_ALLOW_DOWNLOAD=1`.",
    ]
    if card.metrics:
        level = card.interval.get("level")
        head = f"{round(100 * level)} % interval" if level else "interval"
        lines += ["", "## Results", "", f"| dataset | split | metric | value | {head} |", "|---|---|---|---:|---|"]
        for m in card.metrics:
            ci = f"[{m.low:.2f}, {m.high:.2f}]" if m.low is not None else "not computed"
            lines.append(f"| {e(m.dataset)} | {e(m.split)} | {METRIC_TYPES[m.metric][1]} | {m.value:.2f} | {ci} |")
        if card.interval:
            lines += ["", "Intervals: " + e(", ".join(f"{k} {v}" for k, v in card.interval.items())) + "."]
    return "\n".join(lines) + "\n"


def read_card_metadata(path: Union[str, Path]) -> dict:
    """The YAML front matter of a ``README.md`` model card, as a dict (huggingface_hub's parser)."""
    return ModelCard.load(Path(path)).data.to_dict()
