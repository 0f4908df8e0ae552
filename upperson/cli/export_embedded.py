"""``python -m upperson export-embedded``: package trained runs as the embedded default.

Copies the pretrained backbone and UP-Person's PETL checkpoint into ``assets/embedded/``,
evaluates zero-shot, UP-Person (from the copied files) and the full fine-tune on the ToyPEDES
test split, and writes the model card (JSON and markdown) with the recipe, the times, the
metrics and the files' SHA-256 checksums, which loading verifies.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

RECIPE = [
    "python -m upperson toypedes --out DATA --preset default --seed 0",
    "python -m upperson toypedes --out DATA --preset default --seed 0 --captions weak",
    "python -m upperson pretrain --data-root DATA --output RUNS/pretrain",
    "python -m upperson train --config toypedes --data-root DATA --output RUNS/upperson "
    "--set model.pretrained=RUNS/pretrain/backbone.safetensors",
    "python -m upperson train --config toypedes-full-finetune --data-root DATA --output RUNS/full-finetune "
    "--set model.pretrained=RUNS/pretrain/backbone.safetensors",
    "python -m upperson export-embedded --pretrain-run RUNS/pretrain --upperson-run RUNS/upperson "
    "--full-finetune-run RUNS/full-finetune --data-root DATA",
]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-embedded", help="package trained runs as the embedded default model (assets/embedded)")
    p.add_argument("--pretrain-run", required=True, help="run folder of `pretrain` (holds backbone.safetensors)")
    p.add_argument("--upperson-run", required=True, help="run folder of the toypedes UP-Person training")
    p.add_argument("--full-finetune-run", required=True, help="run folder of the full fine-tune baseline")
    p.add_argument("--data-root", required=True, help="ToyPEDES data root the runs used")
    p.add_argument("--out", default=None, help="assets folder (default: assets/embedded)")
    p.add_argument("--machine", default=f"{platform.machine()}, 2 CPU cores", help="where the runs were timed")
    p.set_defaults(func=run)


def _load(path: Path) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: did the run finish?")
    return json.loads(path.read_text())


def _metrics(m: dict) -> dict:
    return {k: round(float(m[k]), 2) for k in ("R1", "R5", "R10", "mAP", "mINP")} | {
        "queries": m["queries"], "gallery": m["gallery"]}


#: the card's bootstrap: resamples and seed (tests/test_embedded.py reproduces the intervals with them)
CI_RESAMPLES = 2000
CI_SEED = 0


def card_intervals(values: dict, *, resamples: int = CI_RESAMPLES, seed: int = CI_SEED) -> dict:
    """The card's ``intervals``: 95 % percentile-bootstrap intervals over the test queries of each
    evaluated model (``values``: name -> per-query values, ``upperson.stats.values_of``) and the
    paired difference UP-Person - zero-shot, rounded to 0.01 like the metrics."""
    from upperson import stats

    def r2(x: float) -> float:
        return round(float(x), 2)

    out = {"method": "percentile bootstrap over test queries (docs/statistics.md)", "level": 0.95,
           "resamples": resamples, "seed": seed, "models": {}}
    for name, v in values.items():
        ci = stats.bootstrap_ci(v, resamples=resamples, seed=seed)["metrics"]
        out["models"][name] = {k: [r2(c["low"]), r2(c["high"])] for k, c in ci.items()}
    if "upperson" in values and "zero-shot" in values:
        p = stats.paired_bootstrap(values["upperson"], values["zero-shot"], resamples=resamples, seed=seed)
        out["upperson_minus_zero_shot"] = {k: {"diff": r2(c["diff"]), "ci": [r2(c["low"]), r2(c["high"])]}
                                           for k, c in p["metrics"].items()}
    out["not_recomputable"] = {"full-finetune": "its weights are not shipped, so its per-query results and "
                                                "interval cannot be recomputed from this folder"}
    return out


def shipped_intervals(data_root, assets=None, *, resamples: int = CI_RESAMPLES, seed: int = CI_SEED) -> dict:
    """:func:`card_intervals` of the shipped zero-shot backbone and UP-Person, re-evaluated (fp32,
    as the card) on the ToyPEDES test split under ``data_root``."""
    from upperson.data import build_tokenizer, load_dataset
    from upperson.embedded import load_embedded_model
    from upperson.evaluation import evaluate_per_query
    from upperson.stats import values_of

    test = load_dataset("toypedes", data_root).split("test")
    values = {}
    for name in ("zero-shot", "upperson"):
        model = load_embedded_model(name, assets=assets)
        res = evaluate_per_query(model, test, build_tokenizer(model.config.name), precision="fp32", progress=False)
        values[name] = values_of(res.per_query)
    return card_intervals(values, resamples=resamples, seed=seed)


def update_card_intervals(data_root, assets=None) -> dict:
    """Add (or refresh) the shipped card's intervals, JSON and markdown, without retraining."""
    from upperson.embedded import CARD_NAME, EMBEDDED_DIR
    from upperson.io import atomic_write_json, atomic_write_text

    out = Path(assets) if assets else EMBEDDED_DIR
    card = json.loads((out / CARD_NAME).read_text())
    card["intervals"] = shipped_intervals(data_root, assets)
    atomic_write_json(out / CARD_NAME, card)
    atomic_write_text(out / "model_card.md", render_card(card))
    return card


def run(args: argparse.Namespace) -> int:
    """Export into a staging folder beside ``--out``, swapped in only when everything succeeded
    (a failure leaves the shipped assets as they were)."""
    import shutil

    from upperson.embedded import EMBEDDED_DIR
    from upperson.io import replace_dir

    out = Path(args.out) if args.out else EMBEDDED_DIR
    stage = out.with_name(out.name + ".tmp")
    shutil.rmtree(stage, ignore_errors=True)
    try:
        metrics = _export(args, stage)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    replace_dir(stage, out)
    print(json.dumps(metrics, indent=2))
    return 0


def _export(args: argparse.Namespace, out: Path) -> dict:
    """Write the embedded assets into folder ``out``; returns the card's metrics."""
    from upperson.config import load_run_config
    from upperson.data import build_tokenizer, load_dataset
    from upperson.embedded import CARD_NAME, load_embedded_model, sha256_file
    from upperson.evaluation import evaluate_per_query
    from upperson.io import atomic_copy, atomic_write_json, atomic_write_text
    from upperson.model.checkpoint import load_model, read_verified_tensors
    from upperson.model.params import count_parameters
    from upperson.stats import values_of

    pre, up, ft = Path(args.pretrain_run), Path(args.upperson_run), Path(args.full_finetune_run)
    up_results, ft_results = _load(up / "results.json"), _load(ft / "results.json")
    pre_results = _load(pre / "results.json")
    toy_meta = _load(Path(args.data_root) / "ToyPEDES" / "meta.json")

    petl_meta = _load(up / "best" / "petl.json")
    # a damaged source is refused here, not shipped under a fresh checksum
    read_verified_tensors(up / "best" / "petl.safetensors", petl_meta.get("sha256"), recorded_in=up / "best" / "petl.json",
                          require_checksum=petl_meta.get("version", 1) >= 2)
    read_verified_tensors(pre / "backbone.safetensors", None, recorded_in=pre / "results.json",
                          require_checksum=False, warn_unverified=False)
    out.mkdir(parents=True, exist_ok=True)
    atomic_copy(pre / "backbone.safetensors", out / "backbone.safetensors")
    (out / "upperson").mkdir(exist_ok=True)
    atomic_copy(up / "best" / "petl.safetensors", out / "upperson" / "petl.safetensors")
    petl_meta["model"]["pretrained"] = "../backbone.safetensors"  # not the path on the training machine
    petl_meta.get("backbone", {}).pop("path", None)  # nor its absolute form
    atomic_write_json(out / "upperson" / "petl.json", petl_meta)
    atomic_copy(up / "metrics.jsonl", out / "upperson" / "metrics.jsonl")
    (out / "full-finetune").mkdir(exist_ok=True)
    atomic_copy(ft / "metrics.jsonl", out / "full-finetune" / "metrics.jsonl")
    files = {rel: {"sha256": sha256_file(out / rel), "bytes": (out / rel).stat().st_size}
             for rel in ("backbone.safetensors", "upperson/petl.safetensors", "upperson/petl.json")}
    # a provisional card, so that the shipped files load (checksums verified) for evaluation
    atomic_write_json(out / CARD_NAME, {"files": files})

    data = load_dataset("toypedes", args.data_root)
    test = data.split("test")
    tok = build_tokenizer("upp-tiny")
    t0 = time.time()
    models = {
        "zero-shot": load_embedded_model("zero-shot", assets=out),
        "upperson": load_embedded_model("upperson", assets=out),
        "full-finetune": load_model(ft / "best"),
    }
    # evaluated once: the metrics and (for the shipped two) the per-query values of the intervals
    results = {name: evaluate_per_query(m, test, tok, precision="fp32", progress=False) for name, m in models.items()}
    metrics = {name: _metrics(r.metrics()) for name, r in results.items()}
    intervals = card_intervals({name: values_of(results[name].per_query) for name in ("zero-shot", "upperson")})
    params = {name: count_parameters(m).to_json() for name, m in models.items()}
    up_cfg = load_run_config(up / "config.yaml")
    card = {
        "name": "UP-Person on upp-tiny, ToyPEDES (the embedded default)",
        "backbone": {"open_clip_config": "upp-tiny", "image_size": list(up_cfg.model.image_size),
                     "file": "backbone.safetensors", "dtype": "float16",
                     "pretraining": "CLIP-style, symmetric InfoNCE with a learnable temperature, "
                                    "on the ToyPEDES weak-caption corpus (identities disjoint from the benchmark)"},
        "toypedes": {"preset": toy_meta["preset"], "seed": toy_meta["seed"], "counts": toy_meta.get("counts")},
        "evaluation": {"split": "test", "protocol": "text-to-image, every test caption queries every test image",
                       "precision": "fp32", "device": "cpu"},
        "metrics": metrics,
        "intervals": intervals,
        "parameters": params,
        "training": {
            "machine": args.machine,
            "pretrain_s": pre_results["train_time_s"],
            "upperson_s": up_results["train_time_s"],
            "full_finetune_s": ft_results["train_time_s"],
            "upperson_best_epoch": up_results["best_epoch"],
            "full_finetune_best_epoch": ft_results["best_epoch"],
            "selected_on": up_results["selected_on"],
            "seeds": {"toypedes": toy_meta["seed"], "pretrain": pre_results["config"]["train"]["seed"],
                      "upperson": up_results["config"]["train"]["seed"],
                      "full_finetune": ft_results["config"]["train"]["seed"]},
            "configs": {"pretrain": pre_results["config"], "upperson": up_results["config"],
                        "full_finetune": ft_results["config"]},
        },
        "recipe": RECIPE,
        "evaluation_time_s": round(time.time() - t0, 1),
        "files": files,
    }
    atomic_write_json(out / CARD_NAME, card)
    atomic_write_text(out / "model_card.md", render_card(card))
    return metrics


def render_card(card: dict) -> str:
    """The model card as markdown."""
    m, t = card["metrics"], card["training"]
    ci = card.get("intervals", {}).get("models", {})

    def cell(name: str, k: str) -> str:
        lo_hi = ci.get(name, {}).get(k)
        return f"{m[name][k]:.2f} [{lo_hi[0]:.2f}, {lo_hi[1]:.2f}]" if lo_hi else f"{m[name][k]:.2f}"

    rows = "\n".join(
        f"| {name} | {p['trainable']:,} ({p['percent']:.2f} %) | "
        + " | ".join(cell(name, k) for k in ("R1", "R5", "R10", "mAP", "mINP")) + " |"
        for name, p in ((n, card["parameters"][n]) for n in ("zero-shot", "upperson", "full-finetune")))
    intervals_note = ""
    if ci:
        iv = card["intervals"]
        d = iv.get("upperson_minus_zero_shot", {}).get("R1")
        intervals_note = (
            f"\nIn brackets: 95 % {iv['method']}, {iv['resamples']} resamples, seed {iv['seed']} "
            f"({m['upperson']['queries']} queries; `upperson.cli.export_embedded.card_intervals`). "
            + (f"Paired (same resampled queries), UP-Person - zero-shot is {d['diff']:+.2f} R@1 "
               f"[{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}]. " if d else "")
            + "The full fine-tune's weights are not shipped, so its per-query results, and hence its interval "
              "and its paired difference to UP-Person, cannot be recomputed here: its numbers carry no interval. "
              f"For scale, UP-Person's R@1 interval on this split is +-{(ci['upperson']['R1'][1] - ci['upperson']['R1'][0]) / 2:.1f} "
              "points.\n")
    files = "\n".join(f"| `{rel}` | {f['bytes']:,} | `{f['sha256']}` |" for rel, f in card["files"].items())
    recipe = "\n".join(card["recipe"])
    gain = m["upperson"]["R1"] - m["zero-shot"]["R1"]
    gap = m["upperson"]["R1"] - m["full-finetune"]["R1"]
    verdict = (f"UP-Person is {gain:+.2f} R@1 over zero-shot and {gap:+.2f} R@1 against the full fine-tune, "
               f"training {card['parameters']['upperson']['percent']:.2f} % of the parameters.")
    toy = card["toypedes"]
    counts = toy.get("counts") or {}
    test = counts.get("test", {})
    return f"""# Model card: {card['name']}

The product's embedded default: a tiny CLIP-style backbone (`upp-tiny`, open_clip config in
`upperson/model_configs/`), pretrained here from scratch, and UP-Person's Prefix, LoRA and
Adapter trained on top of it, frozen, on ToyPEDES. It lets the demo, the analysis and the
tests run for real on a CPU. It is not a person re-identification model for real photos.

- Backbone: `{card['backbone']['file']}` ({card['backbone']['dtype']}), image {card['backbone']['image_size'][0]}x{card['backbone']['image_size'][1]}.
  {card['backbone']['pretraining']}.
- UP-Person: `upperson/petl.safetensors` + `petl.json` (preset `toypedes`), checkpoint of epoch
  {t['upperson_best_epoch']}, selected on the {t['selected_on']} split.
- Data: ToyPEDES preset `{toy['preset']}`, seed {toy['seed']}; test split {test.get('ids', '?')} identities,
  {test.get('images', '?')} images, {test.get('captions', '?')} captions.

## Test metrics (text to image, percent)

| model | trainable parameters | R@1 | R@5 | R@10 | mAP | mINP |
|---|---|---|---|---|---|---|
{rows}

{verdict}
{intervals_note}
`zero-shot` is the frozen pretrained backbone; `full-finetune` trains every backbone weight
with SDM (preset `toypedes-full-finetune`, weights not shipped, its log is in
`full-finetune/metrics.jsonl`). `pytest tests/test_embedded.py` re-evaluates the shipped files
and checks these numbers to within 0.5 point, and the intervals from its own bootstrap of the
per-query results (same resamples and seed) to the printed 0.01.

## How it was made

Seeds: {json.dumps(t['seeds'])}. Time on {t['machine']}: pretraining {t['pretrain_s'] / 60:.1f} min,
UP-Person {t['upperson_s'] / 60:.1f} min, full fine-tune {t['full_finetune_s'] / 60:.1f} min
(training epochs only; the machine was shared with other work).

```bash
{recipe}
```

The full resolved configs are in `model_card.json` (`training.configs`).

## Files

| file | bytes | sha256 |
|---|---|---|
{files}

Loading (`upperson.embedded.load_embedded_model`) verifies these checksums first and names a
corrupted file.
"""
