"""``python -m upperson benchmark``: training-step speed and memory, and embedding throughput.

Compares, on synthetic batches of the configured shapes:

- ``up-person``: fused SDPA attention, text trimmed to the longest caption, and on GPU the
  frozen backbone in half precision under autocast;
- ``naive``: the same model computed the way research code often does it: explicit softmax
  attention over concatenated prefix keys, the full 77-token text, fp32 weights, no autocast;
- ``full-finetune``: every backbone weight trains (no PETL), under autocast on GPU.

Numbers are printed, not asserted: speed belongs in a benchmark, not in a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import resource
import time
from typing import Any

log = logging.getLogger("upperson.benchmark")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("benchmark", help="time training steps and embedding throughput")
    p.add_argument("--config", default="cuhk-pedes", help="preset or YAML (default: cuhk-pedes)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--random-init", action="store_true", help="random backbone weights (speed does not depend on them)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the config's)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--caption-tokens", type=int, default=40, help="mean caption length in tokens (CUHK-PEDES: ~30-40)")
    p.add_argument("--variants", default="up-person,naive,full-finetune", help="comma-separated subset")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--json", dest="json_out", help="also write the results as JSON")
    p.set_defaults(func=run)


def _synthetic_batch(batch: int, image_size: tuple[int, int], caption_tokens: int, device, seed: int = 0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, *image_size, generator=gen)
    tokens = torch.zeros(batch, 77, dtype=torch.long)
    lengths = torch.clamp(torch.normal(float(caption_tokens), caption_tokens / 4, (batch,), generator=gen), 8, 75).long()
    for i, n in enumerate(lengths.tolist()):
        tokens[i, 0] = 49406
        tokens[i, 1:n] = torch.randint(1, 49000, (n - 1,), generator=gen)
        tokens[i, n] = 49407
    pids = torch.arange(batch) // 2
    return images.to(device), tokens.to(device), pids.to(device)


def _variant_model(name: str, base, device, precision: str):
    from upperson.embedded import zero_shot_config
    from upperson.model import build_model
    from upperson.runtime import half_dtype

    if name == "full-finetune":
        cfg = dataclasses.replace(zero_shot_config(base), freeze_backbone=False)
    else:
        cfg = base
    model = build_model(cfg).to(device)
    if name == "naive":
        model.set_explicit_attention(True)
        model.trim_text = False
    elif name == "up-person" and device.type == "cuda" and precision != "fp32":
        for p in model.parameters():
            if not p.requires_grad:
                p.data = p.data.to(half_dtype(precision))
    return model


def _time_training(model, batch, steps: int, warmup: int, device, use_autocast: bool, precision: str) -> dict[str, Any]:
    import torch

    from upperson.losses import sdm_loss
    from upperson.runtime import autocast

    images, tokens, pids = batch
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5, eps=1e-3)
    model.train()

    def step() -> None:
        with autocast(device, precision) if use_autocast else _null():
            f, g = model(images, tokens)
        loss = sdm_loss(f, g, pids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    out = {"samples_per_s": round(len(images) * steps / elapsed, 1), "step_ms": round(1000 * elapsed / steps, 1)}
    if device.type == "cuda":
        out["peak_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    else:
        out["process_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def _time_embedding(model, batch, device, precision: str, repeats: int = 3) -> dict[str, float]:
    import torch

    from upperson.runtime import autocast

    images, tokens, _ = batch
    model.eval()
    with torch.no_grad(), autocast(device, precision):
        model.encode_image(images), model.encode_text(tokens)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeats):
            model.encode_image(images)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        for _ in range(repeats):
            model.encode_text(tokens)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
    n = len(images) * repeats
    return {"images_per_s": round(n / (t1 - t0), 1), "texts_per_s": round(n / (t2 - t1), 1)}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def run(args: argparse.Namespace) -> int:
    import torch

    from upperson.config import load_config
    from upperson.runtime import resolve_device

    cfg = load_config(args.config, args.overrides)
    base = dataclasses.replace(cfg.model, pretrained=None) if args.random_init else cfg.model
    device = resolve_device(args.device)
    precision = cfg.train.precision if device.type == "cuda" else "fp32"
    batch_size = args.batch or cfg.data.batch_size
    batch = _synthetic_batch(batch_size, tuple(base.image_size), args.caption_tokens, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    results: dict[str, Any] = {"device": name, "model": base.name, "image_size": list(base.image_size),
                               "batch": batch_size, "precision": precision, "variants": {}}
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        if variant not in ("up-person", "naive", "full-finetune"):
            raise ValueError(f"unknown variant {variant!r}")
        log.info("benchmarking %s ...", variant)
        model = _variant_model(variant, base, device, precision)
        row = _time_training(model, batch, args.steps, args.warmup, device, variant != "naive", precision)
        row.update(_time_embedding(model, batch, device, precision if variant != "naive" else "fp32"))
        results["variants"][variant] = row
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    v = results["variants"]
    if "up-person" in v and "naive" in v:
        results["speedup_vs_naive"] = round(v["up-person"]["samples_per_s"] / v["naive"]["samples_per_s"], 2)
    print(f"{base.name} {base.image_size[0]}x{base.image_size[1]}, batch {batch_size}, {name}, {precision}")
    mem_key = "peak_mem_mb" if device.type == "cuda" else "process_peak_rss_mb"
    print(f"{'variant':<14} {'train samples/s':>16} {'step ms':>9} {mem_key:>20} {'images/s':>10} {'texts/s':>10}")
    for k, r in v.items():
        print(f"{k:<14} {r['samples_per_s']:>16} {r['step_ms']:>9} {r[mem_key]:>20} {r['images_per_s']:>10} {r['texts_per_s']:>10}")
    if "speedup_vs_naive" in results:
        print(f"UP-Person training step vs naive: {results['speedup_vs_naive']}x")
    if args.json_out:
        from pathlib import Path

        from upperson.io import atomic_write_json

        atomic_write_json(Path(args.json_out), results)
    return 0
