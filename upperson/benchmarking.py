"""The benchmark harness behind ``python -m upperson benchmark`` (and ``doctor``, ``scripts/ddp_check.py``).

Synthetic batches of a config's shapes, the three training variants (UP-Person, a naive
implementation, a full fine-tune), timing of training steps and of encoding, process memory,
and the sort-based metrics that the fast ones are compared with. Numbers are returned, not
asserted: speed belongs in a benchmark, not in a test.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from upperson.embedded import zero_shot_config
from upperson.io import atomic_write_json
from upperson.losses import sdm_loss
from upperson.metrics import retrieval_metrics, sorted_matches
from upperson.model import build_model
from upperson.model.backbone import create_clip
from upperson.runtime import autocast, half_dtype, return_freed_memory_to_os

log = logging.getLogger("upperson.benchmark")  # the name the benchmark command has always logged under

def synthetic_batch(batch: int, image_size: tuple[int, int], caption_tokens: int, device, seed: int = 0):

    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, *image_size, generator=gen)
    tokens = torch.zeros(batch, 77, dtype=torch.long)
    lengths = torch.clamp(torch.normal(float(caption_tokens), caption_tokens / 4, (batch,), generator=gen), 2, 75).long()
    for i, n in enumerate(lengths.tolist()):
        tokens[i, 0] = 49406
        tokens[i, 1:n] = torch.randint(1, 49000, (n - 1,), generator=gen)
        tokens[i, n] = 49407
    pids = torch.arange(batch) // 2
    return images.to(device), tokens.to(device), pids.to(device)

def variant_model(name: str, base, device, precision: str):

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

def current_rss_mb() -> float:
    """This process's resident set now (Linux), in MiB; 0 where unknown."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0

def peak_rss_mb() -> float:
    """This process's peak resident set so far, in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def device_label(device) -> str:
    """The GPU's name, or the CPU with its number of torch threads."""

    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"

def time_training(model, batch, steps: int, warmup: int, device, use_autocast: bool, precision: str) -> dict[str, Any]:

    images, tokens, pids = batch
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5, eps=1e-3)
    model.train()

    def step() -> None:
        with autocast(device, precision if use_autocast else "fp32"):
            f, g = model(images, tokens)
        loss = sdm_loss(f.float(), g.float(), pids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    rss_before = current_rss_mb()
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
        out["process_peak_rss_mb"] = round(peak_rss_mb())
        out["rss_before_training_mb"] = round(rss_before)
    return out

def time_embedding(model, batch, device, precision: str, repeats: int = 3) -> dict[str, float]:

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

def measure_variant(variant: str, base, device_name: str, precision: str, batch_size: int, caption_tokens: int,
                    steps: int, warmup: int, grad_checkpointing: bool) -> dict[str, Any]:
    """One variant's training and embedding numbers (run in a fresh process by default)."""

    device = torch.device(device_name)
    batch = synthetic_batch(batch_size, tuple(base.image_size), caption_tokens, device)
    model = variant_model(variant, base, device, precision)
    model.set_grad_checkpointing(grad_checkpointing)
    if grad_checkpointing and device.type == "cpu":

        return_freed_memory_to_os()  # as training does: freed activations leave the resident set
    row = time_training(model, batch, steps, warmup, device, variant != "naive", precision)
    row["grad_checkpointing"] = grad_checkpointing
    # embeddings as evaluation computes them: the merged copy (the naive baseline stays unmerged)
    model.set_grad_checkpointing(False)
    encoder = model if variant == "naive" else model.merged()
    row.update(time_embedding(encoder, batch, device, precision if variant != "naive" else "fp32"))
    return row

def measure_isolated(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``measure_variant`` in a fresh spawned process, so that peak memory is the variant's own."""

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(measure_variant, **kwargs).result()

def sort_based_metrics(similarity, query_pids, gallery_pids, ranks: Sequence[int] = (1, 5, 10),
                       chunk: int = 1024) -> dict[str, float]:
    """The previous implementation (a full stable sort of every row), kept as the baseline to time."""

    hits = {k: 0.0 for k in ranks}
    ap_sum = inp_sum = 0.0
    valid = 0
    positions = torch.arange(1, similarity.shape[1] + 1, dtype=torch.float64)
    for start in range(0, similarity.shape[0], chunk):
        matches = sorted_matches(similarity[start:start + chunk], query_pids[start:start + chunk], gallery_pids)
        num_rel = matches.sum(dim=1)
        keep = num_rel > 0
        m, num_rel = matches[keep].double(), num_rel[keep].double()
        valid += int(keep.sum())
        cum = m.cumsum(dim=1)
        for k in ranks:
            hits[k] += float((cum[:, min(k, m.shape[1]) - 1] > 0).sum())
        ap_sum += float(((cum / positions) * m).sum(dim=1).div(num_rel).sum())
        inp_sum += float((num_rel / (m * positions).max(dim=1).values).sum())
    out = {f"R{k}": 100.0 * hits[k] / valid for k in ranks}
    out["mAP"] = 100.0 * ap_sum / valid
    out["mINP"] = 100.0 * inp_sum / valid
    return out


def training_benchmark(variants: Sequence[str], base, device, precision: str, batch_size: int, *,
                       caption_tokens: int, steps: Optional[int], warmup: int, grad_checkpointing: bool,
                       isolate: bool = True, json_out: Optional[Path] = None) -> dict[str, Any]:
    """Each training variant's speed and memory on synthetic batches (each in a fresh process when
    ``isolate``); the table is printed, and with ``json_out`` the numbers so far after each variant."""
    name = device_label(device)
    results: dict[str, Any] = {"device": name, "model": base.name, "image_size": list(base.image_size),
                               "batch": batch_size, "precision": precision,
                               "grad_checkpointing": grad_checkpointing,
                               "isolated": isolate, "variants": {}}
    for variant in variants:
        log.info("benchmarking %s%s ...", variant, " (checkpointing)" if grad_checkpointing else "")
        kwargs = dict(variant=variant, base=base, device_name=str(device), precision=precision,
                      batch_size=batch_size, caption_tokens=caption_tokens, steps=steps or 10,
                      warmup=warmup, grad_checkpointing=grad_checkpointing)
        results["variants"][variant] = measure_isolated(kwargs) if isolate else measure_variant(**kwargs)
        if json_out:  # what is measured so far survives a time limit
            atomic_write_json(Path(json_out), results)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    v = results["variants"]
    if "up-person" in v and "naive" in v:
        results["speedup_vs_naive"] = round(v["up-person"]["samples_per_s"] / v["naive"]["samples_per_s"], 2)
    ckpt = ", activation checkpointing" if grad_checkpointing else ""
    print(f"{base.name} {base.image_size[0]}x{base.image_size[1]}, batch {batch_size}, {name}, {precision}{ckpt}")
    mem_key = "peak_mem_mb" if device.type == "cuda" else "process_peak_rss_mb"
    print(f"{'variant':<14} {'train samples/s':>16} {'step ms':>9} {mem_key:>20} {'images/s':>10} {'texts/s':>10}")
    for k, r in v.items():
        print(f"{k:<14} {r['samples_per_s']:>16} {r['step_ms']:>9} {r[mem_key]:>20} {r['images_per_s']:>10} {r['texts_per_s']:>10}")
    if "speedup_vs_naive" in results:
        print(f"UP-Person training step vs naive: {results['speedup_vs_naive']}x")
    return results


def inference_benchmark(base, device, precision: str, batch_size: int, *, caption_tokens: int,
                        repeats: Optional[int]) -> dict[str, Any]:
    """Image encoding by plain open_clip, UP-Person and UP-Person merged, interleaved, best of N
    (``repeats``, default 3); the table is printed."""
    images = synthetic_batch(batch_size, tuple(base.image_size), caption_tokens, device)[0]
    plain = create_clip(base).to(device).eval()
    model = build_model(base).to(device).eval()
    merged = model.merged()
    encoders = {"open_clip": plain.encode_image, "up-person": model.encode_image, "up-person-merged": merged.encode_image}
    best = {k: float("inf") for k in encoders}
    with torch.inference_mode(), autocast(device, precision):
        for f in encoders.values():  # warm-up
            f(images)
        for _ in range(repeats or 3):
            for k, f in encoders.items():
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                f(images)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                best[k] = min(best[k], time.perf_counter() - t0)
    name = device_label(device)
    rows = {k: {"ms_per_batch": round(1000 * t, 1), "images_per_s": round(batch_size / t, 1),
                "time_vs_open_clip": round(t / best["open_clip"], 3)} for k, t in best.items()}
    print(f"image encoding, {base.name} {base.image_size[0]}x{base.image_size[1]}, batch {batch_size}, {name}, "
          f"{precision}, best of {repeats or 3}")
    print(f"{'encoder':<18} {'ms/batch':>10} {'images/s':>10} {'time vs open_clip':>18}")
    for k, r in rows.items():
        print(f"{k:<18} {r['ms_per_batch']:>10} {r['images_per_s']:>10} {r['time_vs_open_clip']:>17}x")
    return {"benchmark": "inference", "device": name, "model": base.name, "image_size": list(base.image_size),
            "batch": batch_size, "precision": precision, "encoders": rows}


def metrics_benchmark(size: str, shape: tuple[int, int, int], repeats: Optional[int]) -> dict[str, Any]:
    """Random similarities with a test split's ``shape`` (queries, gallery images, identities; ``size``
    names it) and pid structure; the previous (full sort) against the current metrics, best of
    ``repeats`` (default 3)."""
    queries, gallery, ids = shape
    gen = torch.Generator().manual_seed(0)
    gallery_pids = torch.arange(gallery) * ids // gallery  # about gallery/ids images per identity
    query_pids = gallery_pids[torch.arange(queries) * gallery // queries]  # captions spread over the images
    sim = torch.randn(queries, gallery, generator=gen)
    repeats = repeats or 3
    times: dict[str, float] = {}
    values: dict[str, dict] = {}
    for name, fn in (("sort_based", sort_based_metrics), ("current", retrieval_metrics)):
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            values[name] = fn(sim, query_pids, gallery_pids)
            best = min(best, time.perf_counter() - t0)
        times[name] = best
    same = all(abs(values["current"][k] - v) <= 1e-9 * max(1.0, abs(v)) for k, v in values["sort_based"].items())
    out = {"benchmark": "metrics", "size": size, "queries": queries, "gallery": gallery, "identities": ids,
           "threads": torch.get_num_threads(), "repeats": repeats,
           "sort_based_s": round(times["sort_based"], 4), "current_s": round(times["current"], 4),
           "speedup": round(times["sort_based"] / times["current"], 1), "same_values": same,
           "process_peak_rss_mb": round(peak_rss_mb())}
    print(f"metrics on a random {queries} x {gallery} similarity ({ids} identities), {torch.get_num_threads()} threads, "
          f"best of {repeats}")
    print(f"previous (full sort): {out['sort_based_s']:.3f} s   current: {out['current_s']:.3f} s   "
          f"speedup {out['speedup']}x   same values: {same}   process peak RSS {out['process_peak_rss_mb']} MiB")
    return out
