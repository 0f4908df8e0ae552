"""The embedded default's files and its model card: where they are, their checksums, the card's content.

This module sits below the model (it imports no torch and nothing of ``upperson.model``): the
backbone checks ``model.pretrained: embedded`` against the card here, and
:mod:`upperson.embedded` (above the model) loads the shipped model.

Layout of ``assets/embedded/``::

    backbone.safetensors               the pretrained upp-tiny CLIP (fp16)
    upperson/petl.{safetensors,json}   UP-Person's PETL weights
    model_card.json, model_card.md     how they were made, the metrics, the files' checksums

The card (``model_card.json``) is written by ``python -m upperson export-embedded``
(:mod:`upperson.embedded_export`); its markdown is :func:`render_card`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from upperson import stats
from upperson.io import file_digest

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
EMBEDDED_DIR = REPO_ROOT / "assets" / "embedded"
CARD_NAME = "model_card.json"
BACKBONE_NAME = "backbone.safetensors"
#: the default gallery's features, an index folder (written by export-embedded, or again by
#: scripts/embedded_gallery_index.sh): the demo's first start takes them instead of encoding the images
#: (demo/__main__.py, seed_cache_for_embedded_gallery)
GALLERY_INDEX_NAME = "gallery-index"
EMBEDDED_GALLERY_INDEX = EMBEDDED_DIR / GALLERY_INDEX_NAME

# what the embedded model is evaluated on, when the card does not say otherwise
DEFAULT_TOYPEDES = {"preset": "default", "seed": 0}

class EmbeddedAssetError(RuntimeError):
    """The shipped model files are missing, corrupted or inconsistent."""


def _dir(assets: Optional[Path]) -> Path:
    return Path(assets) if assets is not None else EMBEDDED_DIR


def backbone_file(assets: Optional[Path] = None) -> Path:
    """The shipped backbone weights."""
    return _dir(assets) / BACKBONE_NAME


def embedded_available(assets: Optional[Path] = None) -> bool:
    """Whether the shipped model card and backbone are present."""
    return (_dir(assets) / CARD_NAME).exists() and backbone_file(assets).exists()


def read_card(assets: Optional[Path] = None) -> dict:
    """The model card's JSON (empty when the assets are absent)."""
    path = _dir(assets) / CARD_NAME
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise EmbeddedAssetError(f"{path}: not valid JSON ({exc})") from exc


def card_toypedes(assets: Optional[Path] = None) -> dict:
    """The ToyPEDES the model card was evaluated on: its ``toypedes`` entry (preset, seed, domain)
    over :data:`DEFAULT_TOYPEDES`, the seed an int."""
    spec = dict(DEFAULT_TOYPEDES, **read_card(assets).get("toypedes", {}))
    spec["seed"] = int(spec["seed"])
    return spec


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return file_digest(path, "sha256")


def verify_assets(assets: Optional[Path] = None) -> None:
    """Check every shipped file against the checksums in the model card."""
    folder = _dir(assets)
    files = read_card(assets).get("files", {})
    if not files:
        raise EmbeddedAssetError(f"{folder / CARD_NAME}: the model card lists no files with checksums")
    for rel, expected in files.items():
        path = folder / rel
        if not path.exists():
            raise EmbeddedAssetError(f"embedded model file missing: {path}")
        _check_digest(path, expected["sha256"], "embedded model file")


def _check_digest(path: Path, expected: str, what: str) -> None:
    """Raise :class:`EmbeddedAssetError` when ``path``'s SHA-256 is not the card's ``expected``."""
    actual = sha256_file(path)
    if actual != expected:
        raise EmbeddedAssetError(
            f"{what} {path} is corrupted or was changed: its sha256 is {actual[:12]}..., "
            f"the model card says {expected[:12]}... (restore it with `git checkout -- {path}`)"
        )


_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> sha256 already checked


def verified_backbone_file(assets: Optional[Path] = None) -> Path:
    """The shipped backbone (``model.pretrained: embedded``), checked against the model card once per process.

    Resolved from the package's location, never the current directory.
    """
    path = backbone_file(assets)
    if not path.exists():
        raise EmbeddedAssetError(
            f"model.pretrained is 'embedded' but the shipped backbone {path} is missing; restore it "
            "(git checkout or git lfs pull), or set model.pretrained to weights of your own, or to 'random'"
        )
    expected = read_card(assets).get("files", {}).get(BACKBONE_NAME, {}).get("sha256")
    if expected is None:
        log.warning("%s: the model card records no checksum for it; not verified", path)
        return path
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if _VERIFIED.get(key) != expected:
        _check_digest(path, expected, "embedded backbone")
        _VERIFIED[key] = expected
    return path



# ---- the model card's content -------------------------------------------------

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

#: the recipe of a model made in the stand-in world (docs/generalization.md; export-embedded --backbone-folder)
WORLD_RECIPE = [
    "bash scripts/world_pipeline.sh W      # the three domains, the world corpus, the backbone (assets/world), the gate",
    "bash scripts/world_grid.sh cuhk W     # section 4's tuning grid on cuhk: 3 configurations per method",
    "python scripts/world_collect.py cuhk W   # the runs' files and the selection on cuhk val",
    "python -m upperson export-embedded --backbone-folder assets/world "
    "--upperson-run assets/world/runs/cuhk/up_a assets/world/runs/cuhk/up_b assets/world/runs/cuhk/up_c "
    "--full-finetune-run assets/world/runs/cuhk/ft_a assets/world/runs/cuhk/ft_b assets/world/runs/cuhk/ft_c "
    "--data-root W/data/cuhk",
]

#: the card's bootstrap: resamples and seed (tests/test_embedded.py reproduces the intervals with them)
CI_RESAMPLES = 2000
CI_SEED = 0
#: the ordered pairs whose paired difference the card reports (name in the card, a, b)
PAIRS = (("upperson_minus_zero_shot", "upperson", "zero-shot"),
         ("upperson_minus_full_finetune", "upperson", "full-finetune"))
FT_PER_QUERY = "full-finetune/per_query_test.csv"


def card_metrics(m: dict) -> dict:
    """A model's metrics as the card records them: five rounded to 0.01, and the counts."""
    return {k: round(float(m[k]), 2) for k in ("R1", "R5", "R10", "mAP", "mINP")} | {
        "queries": m["queries"], "gallery": m["gallery"]}


def _r2(x: float) -> float:
    return round(float(x), 2)


def metric_intervals(values: dict, *, resamples: int = CI_RESAMPLES, seed: int = CI_SEED) -> dict:
    """Each metric's 95 % bootstrap interval ``[low, high]`` over one model's per-query values, rounded to 0.01."""
    ci = stats.bootstrap_ci(values, resamples=resamples, seed=seed)["metrics"]
    return {k: [_r2(c["low"]), _r2(c["high"])] for k, c in ci.items()}


def card_intervals(values: dict, *, resamples: int = CI_RESAMPLES, seed: int = CI_SEED) -> dict:
    """The card's ``intervals``: 95 % percentile-bootstrap intervals over the test queries of each
    evaluated model (``values``: name -> per-query values, ``upperson.stats.values_of``) and the
    paired differences of :data:`PAIRS`, rounded to 0.01 like the metrics."""
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
        "val": card_metrics(results["metrics"]["val"]), "train_time_s": results["train_time_s"],
        "val_curve": [round(float(r["R1"]), 2) for r in history if "R1" in r],
    }


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


def _domain_words(spec: dict) -> str:
    """"domain `cuhk`, " for data of a ToyPEDES domain (docs/generalization.md), else nothing."""
    return f"domain `{spec['domain']}`, " if spec.get("domain") else ""


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
- Training data: ToyPEDES {_domain_words(toy)}preset `{toy['preset']}`, seed {toy['seed']} (train and val splits).
- Test data: ToyPEDES {_domain_words(ev)}preset `{ev['preset']}`, seed {ev['seed']}: {test.get('ids', '?')} identities,
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
with SDM (its config: `training.configs.full_finetune` in `model_card.json`). Its weights are not shipped (they would double the
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
