"""``python -m upperson export-embedded``: package tuned runs as the embedded default.

Takes every tuning run of UP-Person and of the full fine-tune (the same number of
configurations each), ships the one of each with the best R@1 on **val** (never test), and
writes ``assets/embedded/``: the backbone, UP-Person's PETL checkpoint, each tuning run's log
and per-query val results, the full fine-tune's per-query test results (its weights are too
large to ship), and the model card (JSON and markdown) with the test metrics of zero-shot,
UP-Person and the full fine-tune, their bootstrap intervals, the paired differences, the
tuning log and the files' SHA-256 checksums, which loading verifies.
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
    "python -m upperson toypedes --out TEST --preset test-large --seed 0",
    "python -m upperson pretrain --data-root DATA --output RUNS/pretrain",
    "# one per configuration of the tuning table (its lr and sizes), for each method:",
    "python -m upperson train --config toypedes --data-root DATA --output RUNS/up_<cfg> "
    "--set train.epochs=8 --set train.early_stop_patience=2 --set train.lr=LR",
    "python -m upperson train --config toypedes-full-finetune --data-root DATA --output RUNS/ft_<cfg> "
    "--set train.epochs=8 --set train.early_stop_patience=2 --set train.lr=LR",
    "python -m upperson export-embedded --pretrain-run RUNS/pretrain --upperson-run RUNS/up_* "
    "--full-finetune-run RUNS/ft_* --data-root DATA --test-root TEST",
]

#: the card's bootstrap: resamples and seed (tests/test_embedded.py reproduces the intervals with them)
CI_RESAMPLES = 2000
CI_SEED = 0
#: the ordered pairs whose paired difference the card reports (name in the card, a, b)
PAIRS = (("upperson_minus_zero_shot", "upperson", "zero-shot"),
         ("upperson_minus_full_finetune", "upperson", "full-finetune"))
FT_PER_QUERY = "full-finetune/per_query_test.csv"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-embedded", help="package tuned runs as the embedded default model (assets/embedded)")
    p.add_argument("--pretrain-run", default=None,
                   help="run folder of `pretrain` (holds backbone.safetensors); default: keep the backbone in --out")
    p.add_argument("--upperson-run", required=True, nargs="+", metavar="RUN",
                   help="UP-Person's tuning runs; the best on val is shipped")
    p.add_argument("--full-finetune-run", required=True, nargs="+", metavar="RUN",
                   help="the full fine-tune's tuning runs (as many as UP-Person's); the best on val is reported")
    p.add_argument("--data-root", required=True, help="ToyPEDES data root the runs trained on (its val split)")
    p.add_argument("--test-root", default=None,
                   help="ToyPEDES data root whose test split the card reports (default: --data-root)")
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


def _r2(x: float) -> float:
    return round(float(x), 2)


def metric_intervals(values: dict, *, resamples: int = CI_RESAMPLES, seed: int = CI_SEED) -> dict:
    """Each metric's 95 % bootstrap interval ``[low, high]`` over one model's per-query values, rounded to 0.01."""
    from upperson import stats

    ci = stats.bootstrap_ci(values, resamples=resamples, seed=seed)["metrics"]
    return {k: [_r2(c["low"]), _r2(c["high"])] for k, c in ci.items()}


def _toypedes_meta(root: Path, option: str) -> dict:
    """``meta.json`` of the ToyPEDES under ``root``; a clear error naming the option otherwise."""
    path = root / "ToyPEDES" / "meta.json"
    if not path.exists():
        raise FileNotFoundError(f"{option} {root}: no generated ToyPEDES there ({path} is missing); "
                                "make it with `python -m upperson toypedes --out DIR`")
    return json.loads(path.read_text())


def card_intervals(values: dict, *, resamples: int = CI_RESAMPLES, seed: int = CI_SEED) -> dict:
    """The card's ``intervals``: 95 % percentile-bootstrap intervals over the test queries of each
    evaluated model (``values``: name -> per-query values, ``upperson.stats.values_of``) and the
    paired differences of :data:`PAIRS`, rounded to 0.01 like the metrics."""
    from upperson import stats

    out = {"method": "percentile bootstrap over test queries (docs/statistics.md)", "level": 0.95,
           "resamples": resamples, "seed": seed, "models": {}}
    for name, v in values.items():
        out["models"][name] = metric_intervals(v, resamples=resamples, seed=seed)
    for key, a, b in PAIRS:
        if a in values and b in values:
            p = stats.paired_bootstrap(values[a], values[b], resamples=resamples, seed=seed)
            out[key] = {k: {"diff": _r2(c["diff"]), "ci": [_r2(c["low"]), _r2(c["high"])]}
                        for k, c in p["metrics"].items()}
    return out


def _val_r1(results: dict, run: Path) -> float:
    """The run's selected checkpoint's val R@1; refuses a run that selected on test."""
    if results.get("selected_on") != "val" or "val" not in results.get("metrics", {}):
        raise ValueError(f"{run}: its checkpoint was not selected on val (selected_on: "
                         f"{results.get('selected_on')!r}); the card selects on val only")
    return float(results["metrics"]["val"]["R1"])


def tuning_entry(run: Path, method: str, results: dict, history: list[dict]) -> dict:
    """One row of the card's tuning log: what was tried, how long it trained, and its val result."""
    cfg = results["config"]
    m, t = cfg["model"], cfg["train"]
    petl = {"prefix_length": m["prefix"]["length"] if m["prefix"]["enabled"] else None,
            "lora_rank": m["lora"]["rank"] if m["lora"]["enabled"] else None,
            "adapter_ratio": m["adapter"]["ratio"] if m["adapter"]["enabled"] else None}
    epochs_run = len(history)
    return {
        "method": method, "run": run.name, "lr": t["lr"], **petl,
        "trainable": results["parameters"]["trainable"], "percent": results["parameters"]["percent"],
        "epochs_max": t["epochs"], "early_stop_patience": t.get("early_stop_patience", 0),
        "epochs_run": epochs_run, "stopped_early": epochs_run < t["epochs"], "best_epoch": results["best_epoch"],
        "val": _metrics(results["metrics"]["val"]), "train_time_s": results["train_time_s"],
        "val_curve": [round(float(r["R1"]), 2) for r in history if "R1" in r],
    }


def _read_history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def run(args: argparse.Namespace) -> int:
    """Export into a staging folder beside ``--out``, swapped in only when everything succeeded
    (a failure leaves the shipped assets as they were)."""
    import shutil

    from upperson.embedded import EMBEDDED_DIR
    from upperson.io import replace_dir

    out = Path(args.out) if args.out else EMBEDDED_DIR
    if len(args.upperson_run) != len(args.full_finetune_run):
        raise ValueError(f"{len(args.upperson_run)} UP-Person run(s) but {len(args.full_finetune_run)} full fine-tune "
                         "run(s): the tuning budget must be equal (the same number of configurations for each)")
    stage = out.with_name(out.name + ".tmp")
    shutil.rmtree(stage, ignore_errors=True)
    try:
        metrics = _export(args, out, stage)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    replace_dir(stage, out)
    print(json.dumps(metrics, indent=2))
    return 0


def _select(runs: list[str], method: str) -> tuple[Path, dict, list[dict]]:
    """The run with the best val R@1 (the first one on a tie), its results, and every run's tuning entry."""
    entries, best = [], None
    names = [Path(r).name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"{method} runs must have different folder names (they name the tuning log's rows): {names}")
    for r in map(Path, runs):
        results = _load(r / "results.json")
        score = _val_r1(results, r)
        entries.append(tuning_entry(r, method, results, _read_history(r)))
        if best is None or score > best[1]:
            best = (r, score, results)
    for e in entries:
        e["selected"] = e["run"] == best[0].name
    return best[0], best[2], entries


def _export(args: argparse.Namespace, old: Path, out: Path) -> dict:
    """Write the embedded assets into folder ``out`` (``old``: the assets being replaced); returns the card's metrics."""
    from upperson.data import build_tokenizer, load_dataset
    from upperson.embedded import CARD_NAME, load_embedded_model, sha256_file, verify_assets
    from upperson.evaluation import evaluate_per_query
    from upperson.io import atomic_copy, atomic_write_json, atomic_write_text
    from upperson.model.checkpoint import load_model, read_verified_tensors
    from upperson.model.params import count_parameters
    from upperson.stats import values_of, write_per_query_csv

    up, up_results, up_tuning = _select(args.upperson_run, "upperson")
    ft, ft_results, ft_tuning = _select(args.full_finetune_run, "full-finetune")
    toy_meta = _toypedes_meta(Path(args.data_root), "--data-root")
    test_root = Path(args.test_root or args.data_root)
    test_meta = _toypedes_meta(test_root, "--test-root" if args.test_root else "--data-root")

    petl_meta = _load(up / "best" / "petl.json")
    # a damaged source is refused here, not shipped under a fresh checksum
    read_verified_tensors(up / "best" / "petl.safetensors", petl_meta.get("sha256"), recorded_in=up / "best" / "petl.json",
                          require_checksum=petl_meta.get("version", 1) >= 2)
    out.mkdir(parents=True, exist_ok=True)
    if args.pretrain_run:
        pre = Path(args.pretrain_run)
        pre_results = _load(pre / "results.json")
        pretrain = {"pretrain_s": pre_results["train_time_s"], "seed": pre_results["config"]["train"]["seed"],
                    "config": pre_results["config"]}
        read_verified_tensors(pre / "backbone.safetensors", None, recorded_in=pre / "results.json",
                              require_checksum=False, warn_unverified=False)
        atomic_copy(pre / "backbone.safetensors", out / "backbone.safetensors")
    else:  # the runs trained on the shipped backbone: keep it (checked) and its card's pretraining record
        if not (old / "backbone.safetensors").exists() or not (old / CARD_NAME).exists():
            raise FileNotFoundError(f"{old} holds no backbone and model card to keep: pass --pretrain-run RUN "
                                    "(the pretraining run whose backbone the runs trained on)")
        verify_assets(old)
        t_old = json.loads((old / CARD_NAME).read_text())["training"]
        pretrain = {"pretrain_s": t_old["pretrain_s"], "seed": t_old["seeds"]["pretrain"],
                    "config": t_old["configs"]["pretrain"]}
        atomic_copy(old / "backbone.safetensors", out / "backbone.safetensors")
    (out / "upperson").mkdir(exist_ok=True)
    atomic_copy(up / "best" / "petl.safetensors", out / "upperson" / "petl.safetensors")
    petl_meta["model"]["pretrained"] = "../backbone.safetensors"  # not the path on the training machine
    petl_meta.get("backbone", {}).pop("path", None)  # nor its absolute form
    atomic_write_json(out / "upperson" / "petl.json", petl_meta)
    atomic_copy(up / "metrics.jsonl", out / "upperson" / "metrics.jsonl")
    sidecars = [f"upperson/{name}" for name in petl_meta.get("files") or {}]  # vocab.json: checked on load
    for rel in sidecars:
        atomic_copy(up / "best" / Path(rel).name, out / rel)
    (out / "full-finetune").mkdir(exist_ok=True)
    atomic_copy(ft / "metrics.jsonl", out / "full-finetune" / "metrics.jsonl")
    files = {rel: {"sha256": sha256_file(out / rel), "bytes": (out / rel).stat().st_size}
             for rel in ("backbone.safetensors", "upperson/petl.safetensors", "upperson/petl.json", *sidecars)}
    # a provisional card, so that the shipped files load (checksums verified) for evaluation
    atomic_write_json(out / CARD_NAME, {"files": files})

    tok = build_tokenizer("upp-tiny")
    t0 = time.time()
    # every tuning run's selected checkpoint on val, per query: the tuning log's intervals, rebuildable
    val = load_dataset("toypedes", args.data_root).split("val")
    for entry, run_dir in zip(up_tuning + ft_tuning, [*map(Path, args.upperson_run), *map(Path, args.full_finetune_run)]):
        res = evaluate_per_query(load_model(run_dir / "best"), val, tok, precision="fp32", progress=False)
        rel = f"tuning/{run_dir.name}"
        (out / rel).mkdir(parents=True, exist_ok=True)
        write_per_query_csv(out / rel / "per_query_val.csv", res.rows())
        atomic_copy(run_dir / "metrics.jsonl", out / rel / "metrics.jsonl")
        entry["val_ci"] = metric_intervals(values_of(res.per_query))
        entry["files"] = [f"{rel}/metrics.jsonl", f"{rel}/per_query_val.csv"]

    test = load_dataset("toypedes", test_root).split("test")
    models = {
        "zero-shot": load_embedded_model("zero-shot", assets=out),
        "upperson": load_embedded_model("upperson", assets=out),
        "full-finetune": load_model(ft / "best"),
    }
    # evaluated once: the metrics, the intervals and the full fine-tune's shipped per-query file
    results = {name: evaluate_per_query(m, test, tok, precision="fp32", progress=False) for name, m in models.items()}
    write_per_query_csv(out / FT_PER_QUERY, results["full-finetune"].rows())
    metrics = {name: _metrics(r.metrics()) for name, r in results.items()}
    intervals = card_intervals({name: values_of(r.per_query) for name, r in results.items()})
    params = {name: count_parameters(m).to_json() for name, m in models.items()}
    card = {
        "name": "UP-Person on upp-tiny, ToyPEDES (the embedded default)",
        "backbone": {"open_clip_config": "upp-tiny", "image_size": list(up_results["config"]["model"]["image_size"]),
                     "file": "backbone.safetensors", "dtype": "float16",
                     "pretraining": "CLIP-style, symmetric InfoNCE with a learnable temperature, "
                                    "on the ToyPEDES weak-caption corpus (identities disjoint from the benchmark)"},
        "toypedes": {"preset": toy_meta["preset"], "seed": toy_meta["seed"], "counts": toy_meta.get("counts")},
        "evaluation": {"split": "test", "protocol": "text-to-image, every test caption queries every test image",
                       "precision": "fp32", "device": "cpu",
                       "toypedes": {"preset": test_meta["preset"], "seed": test_meta["seed"],
                                    "counts": test_meta.get("counts")}},
        "metrics": metrics,
        "intervals": intervals,
        "parameters": params,
        "tuning": {
            "protocol": "The same number of configurations for each method, each trained for at most "
                        "epochs_max epochs (cosine schedule over them) and stopped once val R@1 had not improved "
                        "for early_stop_patience evaluations; the checkpoint of its best val epoch is kept, and "
                        "of each method the configuration with the best val R@1 is reported. Selection reads val "
                        "only; the card reports test for the selected configurations.",
            "configurations_per_method": len(up_tuning),
            "runs": up_tuning + ft_tuning,
        },
        "training": {
            "machine": args.machine,
            "pretrain_s": pretrain["pretrain_s"],
            "upperson_s": up_results["train_time_s"],
            "full_finetune_s": ft_results["train_time_s"],
            "tuning_s": round(sum(e["train_time_s"] for e in up_tuning + ft_tuning), 1),
            "upperson_best_epoch": up_results["best_epoch"],
            "full_finetune_best_epoch": ft_results["best_epoch"],
            "selected_on": up_results["selected_on"],
            "seeds": {"toypedes": toy_meta["seed"], "pretrain": pretrain["seed"],
                      "upperson": up_results["config"]["train"]["seed"],
                      "full_finetune": ft_results["config"]["train"]["seed"]},
            "configs": {"pretrain": pretrain["config"], "upperson": up_results["config"],
                        "full_finetune": ft_results["config"]},
        },
        "recipe": RECIPE,
        "evaluation_time_s": round(time.time() - t0, 1),
        "files": files,
    }
    # the shipped results files: checked by tests/test_embedded.py, not at every model load
    card["data_files"] = {str(p.relative_to(out)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                          for p in sorted([out / FT_PER_QUERY, *(out / "tuning").rglob("*")]) if p.is_file()}
    atomic_write_json(out / CARD_NAME, card)
    atomic_write_text(out / "model_card.md", render_card(card))
    return metrics


def _tuning_table(runs: list[dict]) -> str:
    """The tuning log as a markdown table."""
    def size(e: dict) -> str:
        if e["prefix_length"] is None and e["lora_rank"] is None and e["adapter_ratio"] is None:
            return "all weights"
        return f"prefix {e['prefix_length']}, rank {e['lora_rank']}, adapter {e['adapter_ratio']}"

    def curve(e: dict) -> str:
        return " ".join(f"{x:.1f}" for x in e["val_curve"])

    lines = ["| method | configuration | lr | trainable | epochs run (max) | best epoch | val R@1 [95 % CI] | "
             "val R@1 per epoch | selected |", "|---|---|---|---|---|---|---|---|---|"]
    for e in runs:
        ci = e.get("val_ci", {}).get("R1")
        r1 = f"{e['val']['R1']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
        stop = ", stopped early" if e["stopped_early"] else ""
        lines.append(f"| {e['method']} | {size(e)} | {e['lr']:g} | {e['percent']:.2f} % | {e['epochs_run']} "
                     f"({e['epochs_max']}{stop}) | {e['best_epoch']} | {r1} | {curve(e)} | "
                     f"{'**yes**' if e['selected'] else ''} |")
    return "\n".join(lines)


def _diff(d: dict) -> str:
    return f"{d['diff']:+.2f} [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}]"


def results_table(card: dict) -> str:
    """The README's results table (and docs/embedded.md's): test metrics with the R@1 and mAP
    intervals, then the paired differences of R@1; ``tests/test_embedded.py`` checks both
    documents hold exactly this text."""
    m, iv, p = card["metrics"], card["intervals"], card["parameters"]
    names = {"zero-shot": "zero-shot (frozen backbone)", "upperson": "**UP-Person** (shipped)",
             "full-finetune": "full fine-tune (weights not shipped)"}

    def with_ci(name: str, k: str) -> str:
        lo, hi = iv["models"][name][k]
        return f"{m[name][k]:.2f} [{lo:.2f}, {hi:.2f}]"

    lines = ["| model | trainable | R@1 [95 % CI] | R@5 | R@10 | mAP [95 % CI] | mINP |",
             "|---|---|---|---|---|---|---|"]
    for name, label in names.items():
        lines.append(f"| {label} | {p[name]['trainable']:,} ({p[name]['percent']:.2f} %) | {with_ci(name, 'R1')} | "
                     f"{m[name]['R5']:.2f} | {m[name]['R10']:.2f} | {with_ci(name, 'mAP')} | {m[name]['mINP']:.2f} |")
    lines += ["", "| paired difference | R@1 [95 % CI] | mAP [95 % CI] |", "|---|---|---|"]
    for key, a, b in PAIRS:
        lines.append(f"| {a} - {b} | {_diff(iv[key]['R1'])} | {_diff(iv[key]['mAP'])} |")
    return "\n".join(lines)


def render_card(card: dict) -> str:
    """The model card as markdown."""
    m, t = card["metrics"], card["training"]
    iv = card["intervals"]
    ci = iv["models"]

    def cell(name: str, k: str) -> str:
        lo_hi = ci.get(name, {}).get(k)
        return f"{m[name][k]:.2f} [{lo_hi[0]:.2f}, {lo_hi[1]:.2f}]" if lo_hi else f"{m[name][k]:.2f}"

    rows = "\n".join(
        f"| {name} | {p['trainable']:,} ({p['percent']:.2f} %) | "
        + " | ".join(cell(name, k) for k in ("R1", "R5", "R10", "mAP", "mINP")) + " |"
        for name, p in ((n, card["parameters"][n]) for n in ("zero-shot", "upperson", "full-finetune")))
    paired = "\n".join(
        f"| {a} - {b} | " + " | ".join(_diff(iv[key][k]) for k in ("R1", "R5", "R10", "mAP", "mINP")) + " |"
        for key, a, b in PAIRS if key in iv)
    vs_ft = iv.get("upperson_minus_full_finetune", {}).get("R1")
    if vs_ft is None:
        verdict = ""
    elif vs_ft["ci"][1] < 0:
        verdict = (f"**The full fine-tune still wins** on this backbone and data: UP-Person is {_diff(vs_ft)} R@1 "
                   "against it (the interval excludes zero), with "
                   f"{card['parameters']['upperson']['percent']:.2f} % of the trainable parameters.")
    elif vs_ft["ci"][0] > 0:
        verdict = (f"**UP-Person beats the full fine-tune**: {_diff(vs_ft)} R@1 (the interval excludes zero), "
                   f"training {card['parameters']['upperson']['percent']:.2f} % of the parameters.")
    else:
        verdict = (f"**UP-Person matches the full fine-tune** within the test set's resolution: {_diff(vs_ft)} R@1 "
                   f"(the interval includes zero), training {card['parameters']['upperson']['percent']:.2f} % "
                   "of the parameters.")
    files = "\n".join(f"| `{rel}` | {f['bytes']:,} | `{f['sha256']}` |" for rel, f in card["files"].items())
    recipe = "\n".join(card["recipe"])
    toy, ev = card["toypedes"], card["evaluation"]["toypedes"]
    test = (ev.get("counts") or {}).get("test", {})
    tuning = card["tuning"]
    first = tuning["runs"][0]
    up_sel = next(e for e in tuning["runs"] if e["method"] == "upperson" and e["selected"])
    return f"""# Model card: {card['name']}

The product's embedded default: a tiny CLIP-style backbone (`upp-tiny`, open_clip config in
`upperson/model_configs/`), pretrained here from scratch, and UP-Person's Prefix, LoRA and
Adapter trained on top of it, frozen, on ToyPEDES. It lets the demo, the analysis and the
tests run for real on a CPU. It is not a person re-identification model for real photos.

- Backbone: `{card['backbone']['file']}` ({card['backbone']['dtype']}), image {card['backbone']['image_size'][0]}x{card['backbone']['image_size'][1]}.
  {card['backbone']['pretraining']}.
- UP-Person: `upperson/petl.safetensors` + `petl.json` (run `{up_sel['run']}`), checkpoint of epoch
  {t['upperson_best_epoch']}, selected on the {t['selected_on']} split among {tuning['configurations_per_method']} configurations.
- Training data: ToyPEDES preset `{toy['preset']}`, seed {toy['seed']} (train and val splits).
- Test data: ToyPEDES preset `{ev['preset']}`, seed {ev['seed']}: {test.get('ids', '?')} identities,
  {test.get('images', '?')} images, {test.get('captions', '?')} captions, none of them seen in training or tuning.

## Test metrics (text to image, percent)

| model | trainable parameters | R@1 | R@5 | R@10 | mAP | mINP |
|---|---|---|---|---|---|---|
{rows}

In brackets: 95 % {iv['method']}, {iv['resamples']} resamples, seed {iv['seed']}
({m['upperson']['queries']} queries; `upperson.cli.export_embedded.card_intervals`).

Paired differences (the same resampled queries for both models):

| difference | R@1 | R@5 | R@10 | mAP | mINP |
|---|---|---|---|---|---|
{paired}

{verdict}

`zero-shot` is the frozen pretrained backbone; `full-finetune` trains every backbone weight
with SDM (preset `toypedes-full-finetune`). Its weights are not shipped (they would double the
download); its per-query test results are (`{FT_PER_QUERY}`), so its interval and the paired
difference can be recomputed. `pytest tests/test_embedded.py` re-evaluates the shipped files
and checks these numbers to within 0.5 point, and every interval from its own bootstrap of
the per-query results (same resamples and seed) to the printed 0.01.

## Tuning log (equal budget, selected on val)

{tuning['protocol']}

{_tuning_table(tuning['runs'])}

The val interval is the same bootstrap over the {first['val']['queries']} val queries
(`tuning/<run>/per_query_val.csv`, beside each run's `metrics.jsonl`). Training time of all
{len(tuning['runs'])} runs: {t['tuning_s'] / 60:.0f} min.

## How it was made

Seeds: {json.dumps(t['seeds'])}. Time on {t['machine']}: pretraining {t['pretrain_s'] / 60:.1f} min,
the selected UP-Person {t['upperson_s'] / 60:.1f} min, the selected full fine-tune {t['full_finetune_s'] / 60:.1f} min
(training epochs only).

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
