"""Package tuned runs as the embedded default (``python -m upperson export-embedded``).

Takes every tuning run of UP-Person and of the full fine-tune (the same number of
configurations each), ships the one of each with the best R@1 on **val** (never test), and
writes ``assets/embedded/``: the backbone, UP-Person's PETL checkpoint, each tuning run's log
and per-query val results, the full fine-tune's per-query test results (its weights are too
large to ship), and the model card (JSON and markdown) with the test metrics of zero-shot,
UP-Person and the full fine-tune, their bootstrap intervals, the paired differences, the
tuning log and the files' SHA-256 checksums, which loading verifies.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from upperson.assets import (CARD_NAME, EMBEDDED_DIR, FT_PER_QUERY, GALLERY_INDEX_NAME, RECIPE, WORLD_RECIPE,
                             card_intervals, card_metrics, metric_intervals, render_card, sha256_file, tuning_entry,
                             verify_assets)
from upperson.config import load_run_config, to_dict
from upperson.data import build_tokenizer, load_dataset
from upperson.embedded import load_embedded_model
from upperson.evaluation import evaluate_per_query
from upperson.io import atomic_copy, atomic_write_json, atomic_write_text, replace_dir
from upperson.model.checkpoint import load_model, read_verified_tensors
from upperson.model.params import count_parameters
from upperson.search.build import build_index
from upperson.stats import values_of, write_per_query_csv
from upperson.train.run import Run


@dataclass
class ExportRequest:
    """What to export: the tuning runs of each method, the data they were tuned and tested on, where to."""

    upperson_run: list[Path]
    full_finetune_run: list[Path]
    data_root: Path
    test_root: Optional[Path] = None  # default: data_root
    pretrain_run: Optional[Path] = None  # default: keep the backbone already in ``out``
    backbone_folder: Optional[Path] = None  # instead of pretrain_run: a shipped backbone record (assets/world)
    out: Optional[Path] = None  # default: assets/embedded
    machine: str = field(default_factory=lambda: f"{platform.machine()}, 2 CPU cores")

    def __post_init__(self) -> None:
        if self.pretrain_run and self.backbone_folder:
            raise ValueError("give --pretrain-run or --backbone-folder, not both: each names the backbone the runs "
                             "trained on")
        if len(self.upperson_run) != len(self.full_finetune_run):
            raise ValueError(f"{len(self.upperson_run)} UP-Person run(s) but {len(self.full_finetune_run)} full "
                             "fine-tune run(s): the tuning budget must be equal (the same number of configurations "
                             "for each)")


def export_embedded(req: ExportRequest) -> dict:
    """Export into a staging folder beside ``req.out``, swapped in only when everything succeeded
    (a failure leaves the shipped assets as they were); returns the card's metrics."""
    out = Path(req.out) if req.out else EMBEDDED_DIR
    stage = out.with_name(out.name + ".tmp")
    shutil.rmtree(stage, ignore_errors=True)
    try:
        metrics = _export(req, out, stage)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    replace_dir(stage, out)
    return metrics


def _load(path: Path) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: did the run finish?")
    return json.loads(path.read_text())


def _toypedes_meta(root: Path, option: str) -> dict:
    """``meta.json`` of the ToyPEDES under ``root``; a clear error naming the option otherwise."""
    path = root / "ToyPEDES" / "meta.json"
    if not path.exists():
        raise FileNotFoundError(f"{option} {root}: no generated ToyPEDES there ({path} is missing); "
                                "make it with `python -m upperson toypedes --out DIR`")
    return json.loads(path.read_text())


#: what a backbone folder (``--backbone-folder``, as ``assets/world``) holds
BACKBONE_FOLDER_FILES = ("backbone.safetensors", "SHA256SUMS", "pretrain_config.yaml", "pretrain_metrics.jsonl")


def backbone_record(folder: Path) -> dict:
    """The pretraining record of a shipped backbone folder: its config, seed and time (the sum of
    the epochs' ``time_s`` in ``pretrain_metrics.jsonl``), and the backbone's SHA-256 from
    ``SHA256SUMS``, after the file is checked against it (checksum, finite values)."""
    folder = Path(folder)
    missing = [n for n in BACKBONE_FOLDER_FILES if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"--backbone-folder {folder}: {', '.join(missing)} missing; a backbone folder holds "
                                f"{', '.join(BACKBONE_FOLDER_FILES)} (as assets/world does)")
    sums = {}
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        if line.strip():
            digest, _, name = line.strip().partition("  ")
            sums[name.strip()] = digest.strip()
    sha = sums.get("backbone.safetensors")
    if not sha:
        raise ValueError(f"--backbone-folder {folder}: SHA256SUMS has no line for backbone.safetensors")
    read_verified_tensors(folder / "backbone.safetensors", sha, recorded_in=folder / "SHA256SUMS",
                          require_checksum=True)
    config = to_dict(load_run_config(folder / "pretrain_config.yaml"))
    epochs = [json.loads(line) for line in (folder / "pretrain_metrics.jsonl").read_text().splitlines() if line.strip()]
    if not epochs or any("time_s" not in e for e in epochs):
        raise ValueError(f"--backbone-folder {folder}: pretrain_metrics.jsonl must list every epoch with its time_s")
    return {"pretrain_s": round(sum(float(e["time_s"]) for e in epochs), 1), "seed": config["train"]["seed"],
            "config": config, "sha256": sha,
            "corpus": "the ToyPEDES world corpus (the pretraining identities of every domain, weak captions; "
                      "identities disjoint from every benchmark; docs/generalization.md)"}


def _val_r1(results: dict, run: Path) -> float:
    """The run's selected checkpoint's val R@1; refuses a run that selected on test."""
    if results.get("selected_on") != "val" or "val" not in results.get("metrics", {}):
        raise ValueError(f"{run}: its checkpoint was not selected on val (selected_on: "
                         f"{results.get('selected_on')!r}); the card selects on val only")
    return float(results["metrics"]["val"]["R1"])


def _select(runs: list[Path], method: str) -> tuple[Path, dict, list[dict]]:
    """The run with the best val R@1 (the first one on a tie), its results, and every run's tuning entry."""
    entries, best = [], None
    names = [Path(r).name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"{method} runs must have different folder names (they name the tuning log's rows): {names}")
    for r in map(Path, runs):
        results = Run(r).results()
        score = _val_r1(results, r)
        entries.append(tuning_entry(r, method, results, Run(r).history()))
        if best is None or score > best[1]:
            best = (r, score, results)
    for e in entries:
        e["selected"] = e["run"] == best[0].name
    return best[0], best[2], entries


def _export(req: ExportRequest, old: Path, out: Path) -> dict:
    """Write the embedded assets into folder ``out`` (``old``: the assets being replaced); returns the card's metrics."""
    up, up_results, up_tuning = _select(req.upperson_run, "upperson")
    ft, ft_results, ft_tuning = _select(req.full_finetune_run, "full-finetune")
    toy_meta = _toypedes_meta(Path(req.data_root), "--data-root")
    test_root = Path(req.test_root or req.data_root)
    test_meta = _toypedes_meta(test_root, "--test-root" if req.test_root else "--data-root")

    up_best = Run(up).best_dir
    petl_meta = _load(up_best / "petl.json")
    # a damaged source is refused here, not shipped under a fresh checksum
    read_verified_tensors(up_best / "petl.safetensors", petl_meta.get("sha256"), recorded_in=up_best / "petl.json",
                          require_checksum=petl_meta.get("version", 1) >= 2)
    out.mkdir(parents=True, exist_ok=True)
    if req.pretrain_run:
        pre = Path(req.pretrain_run)
        pre_results = Run(pre).results()
        pretrain = {"pretrain_s": pre_results["train_time_s"], "seed": pre_results["config"]["train"]["seed"],
                    "config": pre_results["config"]}
        read_verified_tensors(pre / "backbone.safetensors", None, recorded_in=Run(pre).results_file,
                              require_checksum=False, warn_unverified=False)
        atomic_copy(pre / "backbone.safetensors", out / "backbone.safetensors")
    elif req.backbone_folder:
        pretrain = backbone_record(Path(req.backbone_folder))
        atomic_copy(Path(req.backbone_folder) / "backbone.safetensors", out / "backbone.safetensors")
        if sha256_file(out / "backbone.safetensors") != pretrain["sha256"]:  # changed between the check and the copy
            raise ValueError(f"--backbone-folder {req.backbone_folder}: backbone.safetensors changed while it was "
                             "copied; run the export again")
    else:  # the runs trained on the shipped backbone: keep it (checked) and its card's pretraining record
        if not (old / "backbone.safetensors").exists() or not (old / CARD_NAME).exists():
            raise FileNotFoundError(f"{old} holds no backbone and model card to keep: pass --pretrain-run RUN "
                                    "(the pretraining run whose backbone the runs trained on)")
        verify_assets(old)
        old_card = json.loads((old / CARD_NAME).read_text())
        t_old = old_card["training"]
        pretrain = {"pretrain_s": t_old["pretrain_s"], "seed": t_old["seeds"]["pretrain"],
                    "config": t_old["configs"]["pretrain"],
                    "pretraining": old_card.get("backbone", {}).get("pretraining")}
        atomic_copy(old / "backbone.safetensors", out / "backbone.safetensors")
    (out / "upperson").mkdir(exist_ok=True)
    atomic_copy(up_best / "petl.safetensors", out / "upperson" / "petl.safetensors")
    petl_meta["model"]["pretrained"] = "../backbone.safetensors"  # not the path on the training machine
    petl_meta.get("backbone", {}).pop("path", None)  # nor its absolute form
    atomic_write_json(out / "upperson" / "petl.json", petl_meta)
    atomic_copy(Run(up).metrics_file, out / "upperson" / "metrics.jsonl")
    sidecars = [f"upperson/{name}" for name in petl_meta.get("files") or {}]  # vocab.json: checked on load
    for rel in sidecars:
        atomic_copy(up_best / Path(rel).name, out / rel)
    (out / "full-finetune").mkdir(exist_ok=True)
    atomic_copy(Run(ft).metrics_file, out / "full-finetune" / "metrics.jsonl")
    files = {rel: {"sha256": sha256_file(out / rel), "bytes": (out / rel).stat().st_size}
             for rel in ("backbone.safetensors", "upperson/petl.safetensors", "upperson/petl.json", *sidecars)}
    # a provisional card, so that the shipped files load (checksums verified) for evaluation
    atomic_write_json(out / CARD_NAME, {"files": files})

    tok = build_tokenizer("upp-tiny")
    t0 = time.time()
    # every tuning run's selected checkpoint on val, per query: the tuning log's intervals, rebuildable
    val = load_dataset("toypedes", req.data_root).split("val")
    for entry, run_dir in zip(up_tuning + ft_tuning, [*map(Path, req.upperson_run), *map(Path, req.full_finetune_run)]):
        res = evaluate_per_query(load_model(Run(run_dir).best_dir), val, tok, precision="fp32", progress=False)
        rel = f"tuning/{run_dir.name}"
        (out / rel).mkdir(parents=True, exist_ok=True)
        write_per_query_csv(out / rel / "per_query_val.csv", res.rows())
        atomic_copy(Run(run_dir).metrics_file, out / rel / "metrics.jsonl")
        entry["val_ci"] = metric_intervals(values_of(res.per_query))
        entry["files"] = [f"{rel}/metrics.jsonl", f"{rel}/per_query_val.csv"]

    test = load_dataset("toypedes", test_root).split("test")
    models = {
        "zero-shot": load_embedded_model("zero-shot", assets=out),
        "upperson": load_embedded_model("upperson", assets=out),
        "full-finetune": load_model(Run(ft).best_dir),
    }
    # evaluated once: the metrics, the intervals and the full fine-tune's shipped per-query file
    results = {name: evaluate_per_query(m, test, tok, precision="fp32", progress=False) for name, m in models.items()}
    write_per_query_csv(out / FT_PER_QUERY, results["full-finetune"].rows())
    # the default gallery's features, which the demo's first start takes instead of encoding: the test
    # split's images (matched by their contents, so the paths the index records are not used)
    build_index(models["upperson"], test_root / "ToyPEDES" / "imgs" / "test", out / GALLERY_INDEX_NAME,
                source="embedded", progress=False, compact=True)
    (out / GALLERY_INDEX_NAME / ".lock").unlink(missing_ok=True)
    metrics = {name: card_metrics(r.metrics()) for name, r in results.items()}
    intervals = card_intervals({name: values_of(r.per_query) for name, r in results.items()})
    params = {name: count_parameters(m).to_json() for name, m in models.items()}
    card = {
        "name": f"UP-Person on upp-tiny, ToyPEDES{' ' + toy_meta['domain'] if toy_meta.get('domain') else ''} "
                "(the embedded default)",
        "backbone": {"open_clip_config": "upp-tiny", "image_size": list(up_results["config"]["model"]["image_size"]),
                     "file": "backbone.safetensors", "dtype": "float16",
                     "pretraining": pretrain.get("pretraining") or (
                         "CLIP-style, symmetric InfoNCE with a learnable temperature, on "
                         + pretrain.get("corpus", "the ToyPEDES weak-caption corpus (identities disjoint from the "
                                                  "benchmark)"))},
        "toypedes": {"preset": toy_meta["preset"], "seed": toy_meta["seed"], "counts": toy_meta.get("counts"),
                     **({"domain": toy_meta["domain"]} if toy_meta.get("domain") else {})},
        "evaluation": {"split": "test", "protocol": "text-to-image, every test caption queries every test image",
                       "precision": "fp32", "device": "cpu",
                       "toypedes": {"preset": test_meta["preset"], "seed": test_meta["seed"],
                                    **({"domain": test_meta["domain"]} if test_meta.get("domain") else {}),
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
            "machine": req.machine,
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
        "recipe": WORLD_RECIPE if req.backbone_folder else RECIPE,
        "evaluation_time_s": round(time.time() - t0, 1),
        "files": files,
    }
    # the shipped results files: checked by tests/test_embedded.py, not at every model load
    card["data_files"] = {str(p.relative_to(out)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                          for p in sorted([out / FT_PER_QUERY, *(out / "tuning").rglob("*")]) if p.is_file()}
    atomic_write_json(out / CARD_NAME, card)
    atomic_write_text(out / "model_card.md", render_card(card))
    return metrics
