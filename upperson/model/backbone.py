"""The frozen open_clip backbone: creation, weight loading and position-embedding resizing.

Weights come from an open_clip pretrained tag (downloaded by open_clip when a network is
there), or a local file: safetensors, an open_clip state dict, or OpenAI's TorchScript
``ViT-B-16.pt``. Nothing is unpickled: a pickled state dict (``torch.save``, ``.bin``) is
refused by name, with how to convert it; TorchScript archives are read with
``torch.jit.load``, which builds no arbitrary Python objects. Every tensor must be fp16,
bf16 or fp32 and finite in float32 (``upperson.model.weights``).

The square 224-pixel position grid is resized to the configured image grid **bilinearly,
without antialiasing** (``align_corners=False``), in float32, keeping the CLS row: what the
paper's code does. open_clip's own ``force_image_size`` resize is bicubic with antialias,
which does not reproduce the paper.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import warnings
import zipfile
from pathlib import Path
from typing import Optional

import open_clip
import torch
from torch import nn
from torch.nn import functional as F

from upperson.assets import verified_backbone_file
from upperson.config import ModelConfig
from upperson.model.weights import UnsafeWeightsError, check_weights

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
UNUSED_KEYS = ("logit_scale", "logit_bias")  # CLIP's logit scale and bias: may be missing, not fingerprinted, not exported
RANDOM_INIT = "random"  # model.pretrained value of an explicitly random backbone
EMBEDDED = "embedded"  # model.pretrained value of the shipped upp-tiny backbone (assets/embedded/)
RANDOM_INIT_SEED = 0  # backbones without pretrained weights are initialised reproducibly
#: set to 1 to let an open_clip tag (e.g. ``openai``) download weights missing from the cache
ALLOW_DOWNLOAD_ENV = "UPPERSON_ALLOW_DOWNLOAD"


class BackboneError(RuntimeError):
    """Backbone weights that cannot be found, read or matched to the model."""


class _DropMessage(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def register_model_configs() -> None:
    """Make the project's own open_clip configs (e.g. ``upp-tiny``) known to open_clip."""
    if MODEL_CONFIG_DIR.is_dir() and not getattr(register_model_configs, "_done", False):
        open_clip.add_model_config(MODEL_CONFIG_DIR)
        register_model_configs._done = True  # type: ignore[attr-defined]


#: families of timm vision towers, by a part of the timm model name
TIMM_FAMILIES = (("siglip", "SigLIP"), ("eva", "EVA-CLIP"), ("convnext", "ConvNeXt"), ("fastvit", "MobileCLIP"))


def unsupported_tower(name: str) -> Optional[str]:
    """Why open_clip model ``name`` cannot carry UP-Person's components (None when it can).

    UP-Person's prefix and LoRA enter open_clip's own transformer blocks (``ResidualAttentionBlock``
    with its ``nn.MultiheadAttention`` in-projection); a timm vision tower or a ResNet has none,
    and an HF text tower is not open_clip's transformer (docs/training.md#other-backbones).
    """
    spec = open_clip.get_model_config(name) or {}
    vision, text = spec.get("vision_cfg", {}), spec.get("text_cfg", {})
    timm_name = vision.get("timm_model_name")
    if timm_name:
        family = next((f for key, f in TIMM_FAMILIES if key in timm_name), "timm")
        return (f"{name} is a {family} model: its vision tower is timm's {timm_name}, whose attention blocks are "
                "timm's, not open_clip's, so the prefix and LoRA have nowhere to enter; UP-Person supports open_clip "
                "ViT towers (ViT-B-16, ViT-L-14, ...): see docs/training.md#other-backbones")
    if isinstance(vision.get("layers"), (list, tuple)):
        return (f"{name} is a ResNet (ModifiedResNet) model: its vision tower has no transformer blocks for the prefix, "
                "LoRA and adapters; UP-Person supports open_clip ViT towers (ViT-B-16, ViT-L-14, ...)")
    if text.get("hf_model_name"):
        return (f"{name} has a Hugging Face text tower ({text['hf_model_name']}), not open_clip's transformer; "
                "UP-Person needs a CLIP-style open_clip model")
    return None


def create_clip(cfg: ModelConfig) -> nn.Module:
    """Create the open_clip CLIP for ``cfg`` and load its weights (random if none)."""
    register_model_configs()
    if cfg.name not in open_clip.list_models():
        raise BackboneError(f"unknown open_clip model {cfg.name!r}; see open_clip.list_models()")
    why = unsupported_tower(cfg.name)
    if why:
        raise BackboneError(why)
    quiet = _DropMessage("No pretrained weights loaded")  # we load them ourselves, below
    logging.getLogger().addFilter(quiet)
    try:
        with torch.random.fork_rng(devices=[]):
            # random init is seeded, so a run "from scratch" can be rebuilt to load its checkpoints
            torch.manual_seed(RANDOM_INIT_SEED)
            clip = open_clip.create_model(
                cfg.name,
                pretrained=None,
                force_quick_gelu=cfg.quick_gelu,
                force_image_size=tuple(cfg.image_size),
            )
    finally:
        logging.getLogger().removeFilter(quiet)
    if not hasattr(clip, "transformer") or not hasattr(clip, "token_embedding"):
        raise BackboneError(
            f"{cfg.name} has no built-in CLIP text transformer (e.g. an HF text tower); "
            "UP-Person needs a CLIP-style open_clip model"
        )
    if is_random_init(cfg.pretrained):
        log.warning("the %s backbone is RANDOMLY initialised (model.pretrained: %s)", cfg.name,
                    cfg.pretrained or "null")
    else:
        state = read_state_dict(cfg.pretrained, cfg.name)
        load_backbone_state(clip, state, source=cfg.pretrained)
    return clip


def is_random_init(pretrained: Optional[str]) -> bool:
    """Whether ``model.pretrained`` asks for a randomly initialised backbone ("random", or None in code)."""
    return not pretrained or pretrained == RANDOM_INIT


def resolve_pretrained(pretrained: str, model_name: str) -> Path:
    """A local file path for ``pretrained``: an existing file, or an open_clip tag."""
    if pretrained == EMBEDDED:  # the shipped backbone file, checked against the model card
        return verified_backbone_file()
    path = Path(pretrained).expanduser()
    if path.exists():
        return path
    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not tag_cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise BackboneError(
            f"pretrained={pretrained!r} is neither a file nor an open_clip tag of {model_name} "
            f"(tags: {', '.join(tags) or 'none'})"
        )
    local = cached_pretrained(tag_cfg)
    if local is not None:
        return local
    how = ("download them elsewhere (for OpenAI's: ViT-B-16.pt) and pass their path: "
           "--set model.pretrained=/path/to/ViT-B-16.pt (or --pretrained with a checkpoint)")
    if os.environ.get(ALLOW_DOWNLOAD_ENV, "") != "1":
        # no network retries (about 47 s of them) before the one useful message
        raise BackboneError(
            f"the {model_name} '{pretrained}' weights are not in the local open_clip/Hugging Face cache, "
            f"and nothing is downloaded unless {ALLOW_DOWNLOAD_ENV}=1: {how}"
        )
    try:
        return Path(open_clip.download_pretrained(tag_cfg))
    except Exception as exc:  # network errors come in many types
        raise BackboneError(
            f"could not fetch the {model_name} '{pretrained}' weights ({type(exc).__name__}: {exc}); {how}"
        ) from exc


def cached_pretrained(tag_cfg: dict) -> Optional[Path]:
    """The file of an open_clip pretrained tag if it is already on this machine, without any
    network access: the Hugging Face cache (``HF_HUB_CACHE``) for ``hf_hub`` tags, open_clip's
    ``~/.cache/clip`` for URL tags; None if it is not there."""
    if tag_cfg.get("file"):
        path = Path(tag_cfg["file"]).expanduser()
        return path if path.is_file() else None
    hub = tag_cfg.get("hf_hub", "")
    if hub:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            pass
        else:
            from open_clip import pretrained as oc_pretrained

            repo_id, filename = os.path.split(hub)
            filename = filename or getattr(oc_pretrained, "HF_WEIGHTS_NAME", "open_clip_pytorch_model.bin")
            alternatives = getattr(oc_pretrained, "_get_safe_alternatives", lambda name: [])
            for name in [*alternatives(filename), filename]:
                found = try_to_load_from_cache(repo_id, name)
                if isinstance(found, str) and Path(found).is_file():
                    return Path(found)
    url = tag_cfg.get("url", "")
    if url:
        target = Path("~/.cache/clip").expanduser() / os.path.basename(url)
        if target.is_file():
            return target
    return None


def read_state_dict(pretrained: str, model_name: str) -> dict[str, torch.Tensor]:
    """Read a backbone state dict from a tag or file, as float32 tensors, checked (dtype, finite)."""
    path = resolve_pretrained(pretrained, model_name)
    if _is_safetensors(path):
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as exc:  # SafetensorError, OSError
            raise BackboneError(f"{path}: cannot be read as safetensors ({type(exc).__name__}: {exc})") from exc
    elif zipfile.is_zipfile(path) and _is_torchscript(path):
        with warnings.catch_warnings():  # torch deprecates jit.load, but OpenAI ships TorchScript
            warnings.simplefilter("ignore", FutureWarning)
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        raise BackboneError(
            f"{path}: not a safetensors file or a TorchScript archive (a pickled state dict, e.g. torch.save "
            "or open_clip's .bin, is never unpickled here); convert it to safetensors once, where you trust "
            "the file: safetensors.torch.save_file(torch.load(FILE, weights_only=True), 'weights.safetensors')"
        )
    if not isinstance(state, dict):
        raise BackboneError(f"{path}: does not hold a state dict")
    out = {}
    for k, v in state.items():
        if k in _OPENAI_EXTRA_KEYS or not isinstance(v, torch.Tensor):
            continue
        out[k[len("module."):] if k.startswith("module.") else k] = v
    try:  # a causal attn_mask (TorchScript keeps it) is -inf by design and rebuilt by the model
        check_weights({k: v for k, v in out.items() if not k.endswith("attn_mask")}, path, torch.float32)
    except UnsafeWeightsError as exc:
        raise BackboneError(str(exc)) from exc
    return {k: v.float() for k, v in out.items()}


def _is_safetensors(path: Path) -> bool:
    """Whether ``path`` starts like a safetensors file: an 8-byte header length, then a JSON object."""
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as fh:
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def _is_torchscript(path: Path) -> bool:
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())


def _source_grid(n: int, target: tuple[int, int]) -> tuple[int, int]:
    """The grid of a position table with ``n`` patch rows: square when it can be (CLIP's),
    else the factorisation whose aspect is nearest the target's (our own non-square models)."""
    side = math.isqrt(n)
    if side * side == n:
        return side, side
    pairs = [(h, n // h) for h in range(1, n + 1) if n % h == 0]
    want = target[0] / target[1]
    return min(pairs, key=lambda hw: abs(math.log(hw[0] / hw[1]) - math.log(want)))


def resize_pos_embed(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resize a ViT position table (1 + gh*gw, D) to ``grid``: bilinear, no antialias, CLS kept."""
    n, dim = pos.shape[-2], pos.shape[-1]
    if n == 1 + grid[0] * grid[1]:
        return pos
    src = _source_grid(n - 1, grid)
    cls_row, table = pos[:1].float(), pos[1:].float()
    table = table.reshape(1, src[0], src[1], dim).permute(0, 3, 1, 2)
    table = F.interpolate(table, size=grid, mode="bilinear", align_corners=False, antialias=False)
    table = table.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], dim)
    return torch.cat([cls_row, table], dim=0)


def load_backbone_state(clip: nn.Module, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
    """Load ``state`` into ``clip``, resizing the image position table; clear errors on mismatch."""
    state = dict(state)
    key = "visual.positional_embedding"
    if key in state:
        grid = tuple(clip.visual.grid_size)
        state[key] = resize_pos_embed(state[key], grid)
    own = clip.state_dict()
    # buffers the model rebuilds itself (e.g. the causal attn_mask) may be saved by TorchScript
    rebuilt = {name for name, _ in clip.named_buffers()} - set(own)
    state = {k: v for k, v in state.items() if k not in rebuilt}
    missing = [k for k in own if k not in state and k not in UNUSED_KEYS]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        lines = [f"the weights in {source} do not fit this backbone:"]
        if wrong:
            lines.append(f"  shape mismatches ({len(wrong)}): " + "; ".join(wrong[:5]))
        if missing:
            lines.append(f"  missing ({len(missing)}): " + ", ".join(missing[:5]))
        if unexpected:
            lines.append(f"  unexpected ({len(unexpected)}): " + ", ".join(unexpected[:5]))
        lines.append("  (is model.name the architecture these weights were trained with?)")
        raise BackboneError("\n".join(lines))
    clip.load_state_dict(state, strict=False)


def backbone_fingerprint(state: dict[str, torch.Tensor], samples: int = 2048) -> str:
    """A cheap hash of backbone weights: names, shapes and strided samples in float32.

    It is computed once, when the model is built, so that later casts (half precision on
    GPU) do not change it.
    """
    h = hashlib.sha256()
    for name in sorted(state):
        if name in UNUSED_KEYS:
            continue
        t = state[name]
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        flat = t.detach().reshape(-1)
        if flat.numel() == 0:
            continue
        step = max(1, flat.numel() // samples)
        h.update(flat[::step][:samples].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def describe_source(cfg: ModelConfig) -> Optional[str]:
    """A short, path-free name of where the weights came from (for checkpoints)."""
    if is_random_init(cfg.pretrained):
        return None
    if cfg.pretrained == EMBEDDED:
        return "backbone.safetensors"
    p = Path(cfg.pretrained)
    return p.name if p.exists() else cfg.pretrained
