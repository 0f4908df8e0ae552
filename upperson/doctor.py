"""What this machine runs, checked on the embedded model in seconds (``python -m upperson doctor``).

Reports the torch/CUDA versions and the device with its memory; the scaled-dot-product
attention backends (which exist, which succeed on each tower, and the kernel that really
runs: image tower without a mask, text tower with the causal mask plus the prefix); how
close bf16 features are to fp32; and 10 training steps on the embedded model (the loss must
go down) with samples/s and peak memory.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from typing import Any, Callable, Optional

import open_clip
import torch
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from upperson.benchmarking import peak_rss_mb, synthetic_batch
from upperson.embedded import load_embedded_model
from upperson.losses import sdm_loss
from upperson.runtime import autocast, grad_scaler, half_dtype

log = logging.getLogger("upperson.doctor")


def versions() -> dict[str, Any]:
    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "open_clip": getattr(open_clip, "__version__", "?"), "platform": platform.platform()}


def device_info(device) -> dict[str, Any]:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"type": "cuda", "name": props.name, "memory_mb": round(props.total_memory / 2**20),
                "capability": f"{props.major}.{props.minor}", "bf16_supported": torch.cuda.is_bf16_supported()}
    memory = None
    try:
        with open("/proc/meminfo") as f:
            memory = round(int(f.readline().split()[1]) / 1024)
    except (OSError, ValueError, IndexError):
        pass
    return {"type": "cpu", "name": platform.processor() or platform.machine(), "memory_mb": memory,
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}


def kernel_chosen(fn: Callable[[], Any]) -> str:
    """The SDPA backend torch dispatches to for the attention calls made by ``fn()``.

    Records the real arguments of every ``scaled_dot_product_attention`` call and asks torch's
    own dispatcher (``torch._fused_sdp_choice``) which backend those arguments select.
    """
    seen: set[str] = set()
    real = F.scaled_dot_product_attention

    def recording(q, k, v, attn_mask=None, *args, **kwargs):
        try:
            choice = SDPBackend(int(torch._fused_sdp_choice(q, k, v, attn_mask)))
            name = choice.name.lower()
            seen.add(f"{name} (CPU kernel)" if q.device.type == "cpu" and name == "flash_attention" else name)
        except Exception as exc:  # a private API: report, do not fail
            seen.add(f"unknown ({type(exc).__name__})")
        return real(q, k, v, attn_mask, *args, **kwargs)

    F.scaled_dot_product_attention = recording
    try:
        fn()
    finally:
        F.scaled_dot_product_attention = real
    return ", ".join(sorted(seen)) or "none seen"


def sdpa_report(model, batch, device, precision: str) -> dict[str, Any]:
    """Which SDPA backends exist, which succeed on each tower, and which one runs by default."""
    images, tokens, _ = batch
    towers = {"image": ("no mask", lambda: model.encode_image(images[:4])),
              "text": ("causal mask + prefix", lambda: model.encode_text(tokens[:4]))}
    report: dict[str, Any] = {}
    if device.type == "cuda":
        report["enabled"] = {name: bool(getattr(torch.backends.cuda, f"{name}_sdp_enabled")())
                             for name in ("flash", "mem_efficient", "cudnn", "math")
                             if hasattr(torch.backends.cuda, f"{name}_sdp_enabled")}
    else:
        report["enabled"] = {"flash (CPU kernel)": True, "math": True}  # torch has no switches for the CPU kernels
    backends = [b for b in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH") if hasattr(SDPBackend, b)]
    model.eval()
    with torch.no_grad(), autocast(device, precision, cpu=True):
        for tower, (what, fn) in towers.items():
            row: dict[str, Any] = {"attention": what, "default_kernel": kernel_chosen(fn), "backends": {}}
            for b in backends:
                try:
                    with sdpa_kernel([getattr(SDPBackend, b)]):
                        fn()
                    row["backends"][b.lower()] = "ok"
                except RuntimeError as exc:
                    row["backends"][b.lower()] = "fails: " + " ".join(str(exc).split())[:160]
            report[tower] = row
    return report


def agreement(model, batch, device) -> dict[str, Any]:
    """bf16 autocast features against fp32 features of the same model (cosine and relative error)."""
    images, tokens, _ = batch
    out: dict[str, Any] = {}
    model.eval()
    with torch.no_grad():
        for name, fn in (("image", lambda: model.encode_image(images)), ("text", lambda: model.encode_text(tokens))):
            ref = fn().float()
            with autocast(device, "bf16", cpu=True):
                low = fn().float()
            cos = F.cosine_similarity(ref, low, dim=-1)
            out[name] = {"min_cosine": round(float(cos.min()), 6),
                         "relative_error": round(float((low - ref).norm() / ref.norm()), 6)}
    return out


def training_check(device, batch, steps: int) -> dict[str, Any]:
    """``steps`` training steps of the embedded model on one fixed batch, in the device's training precision."""
    model = load_embedded_model("upperson").to(device)
    precision = "bf16" if device.type == "cuda" else "fp32"
    if precision != "fp32":
        for p in model.parameters():
            if not p.requires_grad:
                p.data = p.data.to(half_dtype(precision))
    images, tokens, pids = batch
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3, eps=1e-3)
    scaler = grad_scaler(device, precision)
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses, t0 = [], 0.0
    for i in range(steps):
        if i == 1:  # the first step pays for allocations and kernel selection
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
        with autocast(device, precision):
            f, g = model(images, tokens)
        loss = sdm_loss(f.float(), g.float(), pids)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(float(loss.detach()))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    out = {"precision": precision, "batch": len(images), "steps": steps,
           "losses": [round(x, 5) for x in losses], "loss_decreased": losses[-1] < losses[0],
           "samples_per_s": round(len(images) * (steps - 1) / elapsed, 1)}
    if device.type == "cuda":
        out["peak_mem_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
    else:
        out["process_peak_rss_mb"] = round(peak_rss_mb())
    return out


def machine_report(device: torch.device, steps: int = 10, batch: Optional[int] = None) -> dict[str, Any]:
    """The whole check on ``device``: versions, device, SDPA kernels, bf16 against fp32, ``steps``
    training steps (``batch``: default 128 on GPU, 16 on CPU)."""
    report: dict[str, Any] = {"versions": versions(), "device": device_info(device)}
    model = load_embedded_model("upperson").to(device)
    precision = "bf16" if device.type == "cuda" else "fp32"
    size = batch or (128 if device.type == "cuda" else 16)
    fixed = synthetic_batch(size, tuple(model.image_size), 20, device)
    torch.manual_seed(0)
    report["sdpa"] = sdpa_report(model, fixed, device, precision)
    report["bf16_vs_fp32"] = agreement(model, fixed, device)
    del model
    report["training"] = training_check(device, fixed, steps)
    return report


def report_lines(r: dict[str, Any]) -> list[str]:
    """The report as the lines ``doctor`` prints."""
    lines = []
    v, d, t = r["versions"], r["device"], r["training"]
    lines.append(f"torch {v['torch']} (CUDA {v['cuda'] or '-'}, cuDNN {v['cudnn'] or '-'}), open_clip {v['open_clip']}, "
          f"Python {v['python']}")
    lines.append(f"device: {d['type']} {d['name']}, memory {d['memory_mb']} MiB")
    lines.append("SDPA enabled: " + ", ".join(f"{k}={'on' if on else 'off'}" for k, on in r["sdpa"]["enabled"].items()))
    for tower, row in r["sdpa"].items():
        if tower == "enabled":
            continue
        ok = [b for b, s in row["backends"].items() if s == "ok"]
        lines.append(f"  {tower} tower ({row['attention']}): runs {row['default_kernel']}; "
              f"backends that work: {', '.join(ok) or 'none'}")
    for name, a in r["bf16_vs_fp32"].items():
        lines.append(f"bf16 vs fp32 {name} features: min cosine {a['min_cosine']:.5f}, relative error {a['relative_error']:.2e}")
    mem = f"peak {t['peak_mem_mb']} MiB" if "peak_mem_mb" in t else f"process peak RSS {t['process_peak_rss_mb']} MiB"
    lines.append(f"training ({t['precision']}, batch {t['batch']}): loss {t['losses'][0]:.4f} -> {t['losses'][-1]:.4f} "
          f"({'down' if t['loss_decreased'] else 'NOT down'}) in {t['steps']} steps, {t['samples_per_s']} samples/s, {mem}")
    return lines
