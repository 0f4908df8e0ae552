"""Configuration dataclasses and YAML presets.

Every experiment is one :class:`ExperimentConfig`: a model, a data, a training and a loss
section. Presets live in ``upperson/presets/*.yaml``; a YAML file may name a preset in
``base:`` and override any field. Command lines override fields with ``--set a.b=value``.
Every ablation in the paper is a change here, never a change of code.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional, Type, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from upperson.petl import components as petl_components
from upperson.petl.config import ComponentConfigError
from upperson.petl.registry import find_component, get_component

PRESET_DIR = Path(__file__).parent / "presets"
#: the largest config file read (a config is a few hundred bytes; this bounds a hostile one)
MAX_CONFIG_BYTES = 1024 * 1024

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or override that cannot be understood."""


@dataclass(init=False, eq=False)
class ModelConfig:
    """The backbone and the PETL components on it.

    One section per registered component (upperson/petl/registry.py), read and set as an
    attribute (``cfg.prefix``, ``cfg.lora``, ``cfg.adapter``, ``cfg.ln_tuning``, ...) and passed
    by name (``ModelConfig(prefix=PrefixConfig(length=2))``); a section not given has the
    component's defaults. ``components`` holds them, in registry order.
    """

    name: str = "ViT-B-16"  # any open_clip model name
    quick_gelu: bool = True  # OpenAI weights need QuickGELU
    # an open_clip tag, a local file, "embedded" (the shipped upp-tiny backbone) or "random"
    # (an explicit, randomly initialised backbone; ``None`` means the same in code, never in YAML)
    pretrained: Optional[str] = "openai"
    image_size: tuple[int, int] = (384, 128)  # (H, W)
    freeze_backbone: bool = True  # False = full fine-tune
    components: dict[str, Any] = field(default_factory=dict)  # component name -> its config

    def __init__(self, *, components: Optional[dict[str, Any]] = None, **kwargs: Any) -> None:
        for f in fields(self):
            if f.name != "components":
                default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                object.__setattr__(self, f.name, kwargs.pop(f.name, default))
        given = {**(components or {}), **kwargs}
        unknown = sorted(k for k in given if find_component(k) is None)
        if unknown:
            raise TypeError(f"ModelConfig got unknown argument(s) {unknown}; fields: {sorted(_MODEL_FIELDS)}, "
                            f"components: {[c.name for c in petl_components()]}")
        object.__setattr__(self, "components", {})
        for c in petl_components():
            setattr(self, c.name, given[c.name] if c.name in given else c.default())

    def section(self, name: str) -> Any:
        """The config of component ``name`` (its defaults if it was registered after this config was built)."""
        sections = self.__dict__["components"]
        if name not in sections:
            sections[name] = get_component(name).default()
        return sections[name]

    def without_components(self) -> "ModelConfig":
        """A copy with every registered component off: the frozen backbone alone (the zero-shot counterpart)."""
        return dataclasses.replace(self, **{c.name: dataclasses.replace(self.section(c.name), enabled=False)
                                            for c in petl_components()})

    def __getattr__(self, name: str) -> Any:  # only for names that are not attributes: the sections
        if not name.startswith("__") and "components" in self.__dict__ and find_component(name) is not None:
            return self.section(name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        component = find_component(name) if name not in _MODEL_FIELDS else None
        if component is None:
            object.__setattr__(self, name, value)
            return
        if not isinstance(value, component.config):
            raise TypeError(f"ModelConfig.{name} must be a {component.config.__name__}, got {type(value).__name__}")
        self.__dict__["components"][name] = value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ModelConfig):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in _MODEL_FIELDS if n != "components") and \
            all(self.section(c.name) == other.section(c.name) for c in petl_components())


_MODEL_FIELDS = frozenset(f.name for f in fields(ModelConfig))


@dataclass
class DataConfig:
    """Where the data is and how it is fed."""

    dataset: str = "cuhk-pedes"
    root: Optional[str] = None
    batch_size: int = 128
    eval_batch_size: int = 512
    num_workers: int = 4
    caption_mask_prob: float = 0.0  # BERT-style caption augmentation (docs/method.md), 0 = off
    skip_bad_images: bool = False
    augment: bool = True
    cache_images: bool = False  # keep decoded training images in memory (small datasets)
    # a dataset without a val split (ICFG-PEDES): hold out this many whole train identities as
    # val (upperson/data/holdout.py); null = none. Refused for a dataset that has a val split.
    val_from_train: Optional[int] = field(default=None, metadata={"omit_default": True})
    # which identities: recorded whenever val_from_train is set (the default 0 too), left out otherwise
    val_from_train_seed: int = field(default=0, metadata={"omit_with": "val_from_train"})


@dataclass
class LossConfig:
    """The retrieval loss (docs/method.md)."""

    name: str = "sdm"  # "sdm" or "itc"
    temperature: float = 0.02
    learnable_temperature: bool = False  # CLIP-style pretraining learns it


@dataclass
class TrainConfig:
    """Optimiser, schedule, precision and model selection (docs/method.md)."""

    epochs: int = 60
    lr: float = 1e-3
    prefix_lr: Optional[float] = None  # the first code release used 5e-5
    backbone_lr: Optional[float] = None  # full fine-tune: lr of backbone weights
    weight_decay: float = 4e-5
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-3
    warmup_epochs: int = 5
    warmup_factor: float = 0.1
    seed: int = 0
    precision: str = "bf16"  # on GPU: "bf16", "fp16" (with grad scaler) or "fp32"; CPU is fp32
    backbone_half: bool = True  # on GPU, keep the frozen backbone in half precision
    amp_on_cpu: bool = False  # also use `precision` on CPU (autocast, half backbone, fp16 grad scaler): CI runs the GPU paths
    grad_checkpointing: bool = False  # recompute each block's activations in backward: less memory, ~1.3x step time
    select_on: str = "val"  # "val" (falls back to test with a warning) or "test"
    eval_every: int = 1
    early_stop_patience: int = 0  # stop once `select_on` R@1 has not improved for this many evaluations (0 = off)
    max_steps_per_epoch: Optional[int] = None  # for smoke runs
    log_every: int = 50
    tensorboard: bool = False  # also write TensorBoard event files to RUN/tensorboard/ (upperson/train/tensorboard.py)


@dataclass
class ExperimentConfig:
    """One whole experiment."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ----------------------------------------------------------------------------- conversion


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type ``tp``, strictly."""
    origin = get_origin(tp)
    if is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin is Union:
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(value, args[0], where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = get_args(tp)
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {list(value)!r}")
        return tuple(_convert(v, a, where) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _schema(cls: type) -> dict[str, Any]:
    """The keys of dataclass ``cls`` and their types; a model config's sections come from the component registry."""
    hints = get_type_hints(cls)
    schema = {f.name: hints[f.name] for f in fields(cls)}
    if cls is ModelConfig:
        del schema["components"]  # written as one section per component, never as a key of its own
        schema.update({c.name: c.config for c in petl_components()})
    return schema


def from_dict(cls: Type[T], data: dict, where: str = "config") -> T:
    """Build dataclass ``cls`` from a nested dict; unknown keys are an error."""
    schema = _schema(cls)
    unknown = sorted(set(data) - set(schema))
    if unknown:
        hint = " (a PETL component's section? import the module that registers it)" if cls is ModelConfig else ""
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(schema)}{hint}")
    kwargs = {k: _convert(v, schema[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ComponentConfigError as exc:  # a component config validates itself in __post_init__
        raise ConfigError(f"{where}.{exc}") from None


def to_dict(cfg: Any) -> dict:
    """A plain, JSON- and YAML-safe dict of a config dataclass.

    A model config lists its backbone fields, then one section per component, in registry
    order; a component that is off by default and left at its defaults is left out (reading
    the dict back gives the same config), so the files of a model without it stay as they were.
    So is a field marked ``omit_default`` left at its default (``data.val_from_train``), and one
    marked ``omit_with`` while the field it names is left out (``data.val_from_train_seed``: the
    seed, even the default, is recorded whenever a hold-out uses it): the configs and results of
    runs that do not use them stay byte for byte as before they existed.
    """
    def omitted(v: Any, f: Any) -> bool:
        if f.metadata.get("omit_default"):
            return getattr(v, f.name) == f.default
        other = f.metadata.get("omit_with")
        return bool(other) and getattr(v, other) == next(g.default for g in fields(v) if g.name == other)

    def clean(v: Any) -> Any:
        if isinstance(v, ModelConfig):
            out = {f.name: clean(getattr(v, f.name)) for f in fields(v) if f.name != "components"}
            for c in petl_components():
                section = v.section(c.name)
                if not c.is_default_off(section):
                    out[c.name] = clean(section)
            return out
        if is_dataclass(v) and not isinstance(v, type):
            return {f.name: clean(getattr(v, f.name)) for f in fields(v) if not omitted(v, f)}
        if isinstance(v, (tuple, list)):
            return [clean(x) for x in v]
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return copy.deepcopy(v)

    return clean(cfg)


def _deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def list_presets() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


class _DuplicateKey(Exception):
    pass


class _AliasRefused(Exception):
    pass


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key given twice in one mapping is an error (not: the last one
    wins), and anchors and aliases are refused: an alias bomb ("billion laughs") cannot expand."""

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _AliasRefused(f"alias *{event.anchor} (line {event.start_mark.line + 1})")
        event = self.peek_event()
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise _AliasRefused(f"anchor &{anchor} (line {event.start_mark.line + 1})")
        return super().compose_node(parent, index)


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise _DuplicateKey(f"key {key!r} is given twice (line {key_node.start_mark.line + 1})")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def _read_config_text(path: Path) -> str:
    """The text of a config file, refused unread when it is larger than :data:`MAX_CONFIG_BYTES`."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        data = fh.read(MAX_CONFIG_BYTES + 1)
    if max(size, len(data)) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {size / 1e6:.1f} MB, larger than a config may be ({MAX_CONFIG_BYTES} bytes, "
                          f"{MAX_CONFIG_BYTES / 1e6:.1f} MB); a config holds a few hundred bytes of settings")
    return data.decode("utf-8")


def _load_yaml_tree(name_or_path: str, seen: tuple[str, ...] = ()) -> dict:
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        preset = PRESET_DIR / f"{name_or_path}.yaml"
        if not preset.exists():
            if path.suffix in (".yaml", ".yml"):
                raise ConfigError(f"config file not found: {path}")
            raise ConfigError(
                f"unknown preset {name_or_path!r}; presets: {', '.join(list_presets())}"
            )
        path = preset
    key = str(path.resolve())
    if key in seen:
        raise ConfigError(f"{path}: circular 'base:' chain")
    try:
        data = yaml.load(_read_config_text(path), Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
    except _DuplicateKey as exc:
        raise ConfigError(f"{path}: {exc}; each key may appear once") from None
    except _AliasRefused as exc:
        raise ConfigError(f"{path}: YAML anchors and aliases are not allowed in a config ({exc}); "
                          "write the value out where it is used") from None
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply to read; a config is a few levels deep") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc})") from exc
    if data is None:
        raise ConfigError(f"{path}: the file is empty; write a config (e.g. 'base: cuhk-pedes') or name a preset")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    base = data.pop("base", None)
    if base is not None:
        data = _deep_merge(_load_yaml_tree(str(base), seen + (key,)), data)
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value`` (value read as YAML) into a key path and a value."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.load(raw, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
    except (_AliasRefused, _DuplicateKey) as exc:
        raise ConfigError(f"override {item!r}: {exc} is not allowed; write the value out") from None
    except RecursionError:
        raise ConfigError(f"override {key!r}: the value is nested too deeply to read") from None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def load_config(name_or_path: str = "cuhk-pedes", overrides: Optional[list[str]] = None) -> ExperimentConfig:
    """Load a preset name or a YAML path, apply ``key=value`` overrides, and validate."""
    return _build(_load_yaml_tree(name_or_path), overrides)


def load_run_config(path: Union[str, Path], overrides: Optional[list[str]] = None) -> ExperimentConfig:
    """A run's own ``config.yaml`` (as :func:`load_config`); a run written before ``random`` existed
    recorded a random backbone as ``pretrained: null``, which is read as ``random``, with a warning."""
    tree = _load_yaml_tree(str(path))
    model = tree.get("model")
    if isinstance(model, dict) and "pretrained" in model and model["pretrained"] is None:
        logging.getLogger(__name__).warning("%s: model.pretrained is null (an older run): read as 'random', "
                                            "a randomly initialised backbone", path)
        model["pretrained"] = "random"
    return _build(tree, overrides)


def _build(tree: dict, overrides: Optional[list[str]]) -> ExperimentConfig:
    for item in overrides or []:
        keys, value = parse_override(item)
        node = tree
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {k} is not a section")
        node[keys[-1]] = value
    cfg = from_dict(ExperimentConfig, tree)
    validate(cfg)
    return cfg


def _check(ok: bool, key: str, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {rule}, got {value!r}")


def _validate_numbers(cfg: ExperimentConfig) -> None:
    """Ranges of the numeric fields, checked where the config is read (not deep in the trainer)."""
    d, t, loss = cfg.data, cfg.train, cfg.loss
    _check(d.batch_size >= 1, "data.batch_size", ">= 1", d.batch_size)
    _check(d.eval_batch_size >= 1, "data.eval_batch_size", ">= 1", d.eval_batch_size)
    _check(d.num_workers >= 0, "data.num_workers", ">= 0", d.num_workers)
    _check(0.0 <= d.caption_mask_prob < 1.0, "data.caption_mask_prob", "in [0, 1)", d.caption_mask_prob)
    if d.val_from_train is not None:
        _check(d.val_from_train >= 1, "data.val_from_train", ">= 1 identities (or null for no hold-out)",
               d.val_from_train)
    _check(loss.temperature > 0 and math.isfinite(loss.temperature), "loss.temperature", "> 0", loss.temperature)
    _check(t.epochs >= 0, "train.epochs", ">= 0", t.epochs)
    for key in ("lr", "prefix_lr", "backbone_lr"):
        value = getattr(t, key)
        if value is not None:
            _check(value > 0 and math.isfinite(value), f"train.{key}", "> 0", value)
    _check(t.weight_decay >= 0 and math.isfinite(t.weight_decay), "train.weight_decay", ">= 0", t.weight_decay)
    _check(all(0.0 <= b < 1.0 for b in t.betas), "train.betas", "two numbers in [0, 1)", list(t.betas))
    _check(t.eps > 0 and math.isfinite(t.eps), "train.eps", "> 0", t.eps)
    _check(t.warmup_epochs >= 0, "train.warmup_epochs", ">= 0", t.warmup_epochs)
    _check(0.0 < t.warmup_factor <= 1.0, "train.warmup_factor", "in (0, 1]", t.warmup_factor)
    _check(t.eval_every >= 0, "train.eval_every", ">= 0 (0 = never evaluate)", t.eval_every)
    _check(t.early_stop_patience >= 0, "train.early_stop_patience", ">= 0 (0 = train every epoch)", t.early_stop_patience)
    _check(t.log_every >= 0, "train.log_every", ">= 0 (0 = no step lines)", t.log_every)
    if t.max_steps_per_epoch is not None:
        _check(t.max_steps_per_epoch >= 1, "train.max_steps_per_epoch", ">= 1 (or null for no limit)",
               t.max_steps_per_epoch)


def validate(cfg: ExperimentConfig) -> None:
    """Reject values that would fail later, deep inside the model or the trainer."""
    m = cfg.model
    if m.pretrained is None or (isinstance(m.pretrained, str) and not m.pretrained.strip()):
        raise ConfigError(
            "model.pretrained is empty: name the backbone weights (an open_clip tag, a file, or 'embedded'), "
            "or write 'random' to train on a randomly initialised backbone on purpose"
        )
    _validate_numbers(cfg)
    for c in petl_components():
        try:  # checked again here: a field may have been changed after the config was built
            m.section(c.name).validate()
        except ComponentConfigError as exc:
            raise ConfigError(f"model.{c.name}.{exc}") from None
    if any(s <= 0 for s in m.image_size):
        raise ConfigError("model.image_size must be positive")
    if cfg.loss.name not in ("sdm", "itc"):
        raise ConfigError(f"loss.name must be 'sdm' or 'itc', got {cfg.loss.name!r}")
    if cfg.train.precision not in ("bf16", "fp16", "fp32"):
        raise ConfigError(f"train.precision must be bf16, fp16 or fp32, got {cfg.train.precision!r}")
    if cfg.train.select_on not in ("val", "test"):
        raise ConfigError(f"train.select_on must be 'val' or 'test', got {cfg.train.select_on!r}")


def save_config(cfg: ExperimentConfig, path: Union[str, Path]) -> None:
    """Write the resolved config as YAML (atomically)."""
    from upperson.io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))

