"""``python -m analysis``: every command writes real figures; the ablation table is right."""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from analysis import ablation
from analysis.__main__ import main
from analysis.style import DPI
from tests.conftest import tiny_model_config
from upperson.config import save_config, to_dict
from upperson.embedded import zero_shot_config
from upperson.model import build_model
from upperson.model.checkpoint import save_petl
from upperson.model.params import count_parameters
from upperson import stats

# the base preset's model, shrunk to the test size (ablation sweeps)
TINY_SETS = ["--set", "model.image_size=[48,16]", "--set", "model.prefix.length=3", "--set", "model.lora.rank=4",
             "--set", "data.batch_size=16", "--set", "data.eval_batch_size=64"]


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory) -> Path:
    from upperson.data.toypedes import generate_toypedes

    root = tmp_path_factory.mktemp("toypedes")
    generate_toypedes(root, preset="tiny", seed=0)
    return root


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _env(cache, monkeypatch):
    monkeypatch.setenv("UPPERSON_CACHE", str(cache))
    monkeypatch.setenv("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """A PETL checkpoint on a saved tiny backbone, with non-trivial prefix and lambda."""
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    backbone = build_model(zero_shot_config(tiny_model_config()))
    save_file({k: v.contiguous() for k, v in backbone.clip.state_dict().items()}, str(d / "backbone.safetensors"))
    model = build_model(tiny_model_config(pretrained=str(d / "backbone.safetensors")))
    with torch.no_grad():
        for tower in ("image", "text"):
            for i, b in enumerate(model.blocks(tower)):
                b.prefix.key.normal_(0, 1.0)
                b.prefix.lam.fill_(3.0 + i)
    save_petl(model, d / "upperson")
    return d / "upperson"


def check_figures(figs, expected: dict[str, tuple[int, int]] = None):
    """Every figure: a PNG of exactly its figure size * DPI that is not blank, and an SVG."""
    assert figs
    for f in figs:
        with Image.open(f.png) as im:
            assert im.size == f.pixels, f.name
            px = np.asarray(im.convert("RGB"), dtype=np.float32)
        assert px.std() > 0, f"{f.name} is blank"
        svg = f.svg.read_text()
        assert "<svg" in svg and len(svg) > 1000
        assert f.caption
        if expected and f.name in expected:
            assert im.size == expected[f.name], f.name
    return {f.name: f for f in figs}


def run_cli(argv, capsys) -> list[Path]:
    rc = main(argv)
    out = capsys.readouterr()
    assert rc == 0, out.err
    return [Path(line) for line in out.out.split()]


# ----------------------------------------------------------------------------- attention


def test_attention_command(checkpoint, toy_root, tmp_path, capsys):
    from analysis.__main__ import build_parser

    args = build_parser().parse_args(["attention", "--checkpoint", str(checkpoint), "--data-root", str(toy_root),
                                      "--out", str(tmp_path), "--index", "2", "--layers", "0,3", "--heads", "1"])
    figs = check_figures(args.func(args), {"prefix_scale": (round(4.5 * DPI), round(3.0 * DPI))})
    assert set(figs) == {"attention_image", "attention_text", "prefix_scale"}
    # input + 2 selected layers: 3 panels of 1 inch (+ 0.9 for the colour bar)
    assert figs["attention_image"].pixels[0] == round((3 * 1.0 + 0.9) * DPI)
    # the embedded default (a random tiny model until the assets exist), no model arguments
    files = run_cli(["attention", "--data-root", str(toy_root), "--out", str(tmp_path / "emb"), "--no-progress",
                     "--quantity", "share"], capsys)
    assert sorted(p.name for p in files) == sorted(f"{n}.{e}" for n in figs for e in ("png", "svg"))
    assert all(p.stat().st_size > 0 for p in files)


def test_attention_errors_are_one_line(checkpoint, toy_root, tmp_path, capsys):
    rc = main(["attention", "--checkpoint", str(checkpoint), "--data-root", str(toy_root), "--out", str(tmp_path),
               "--layers", "9"])
    assert rc == 2 and "out of range" in capsys.readouterr().err


# ----------------------------------------------------------------------------- umap


def test_umap_embeddings_are_cached(checkpoint, toy_root, tmp_path):
    """The umap figure itself is checked in test_report (one UMAP per test session: numba's JIT is slow)."""
    from analysis.embeddings import embed_records
    from analysis.sources import load_source, zero_shot_of
    from analysis.umap_plot import select_identities
    from upperson.data import build_tokenizer, load_dataset

    records = select_identities(load_dataset("toypedes", toy_root).split("test"), 3, seed=0)
    assert len({r.pid for r in records}) == 3
    source = load_source(str(checkpoint))
    tok = build_tokenizer(source.model.config.name)
    n_cap = sum(len(r.captions) for r in records)
    first = embed_records(source.model, tok, records, tmp_path)
    assert first.encoded == len(records) + n_cap
    # a fresh load of the same checkpoint finds everything in the cache
    again = embed_records(load_source(str(checkpoint)).model, tok, records, tmp_path)
    assert again.encoded == 0
    torch.testing.assert_close(again.image_features, first.image_features)
    torch.testing.assert_close(again.text_features, first.text_features)
    assert again.text_image.tolist() == [i for i, r in enumerate(records) for _ in r.captions]
    # another model (the zero-shot backbone) has its own entries
    assert embed_records(zero_shot_of(source).model, tok, records, tmp_path).encoded == len(records) + n_cap


# ----------------------------------------------------------------------------- ablation


class StubTrain:
    """Stands in for ``upperson.train.train``: writes what the trainer writes, with fake scores,
    including the per-query test results (200 queries, drawn from the variant's score and the
    seed) from which its test metrics are computed."""

    QUERIES = 200

    def __init__(self):
        self.calls: list[tuple[str, bool]] = []
        self.seeds: list[tuple[str, int]] = []

    def __call__(self, cfg, run_dir, *, resume=False, progress=True):
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        variant = run_dir.parent.name if run_dir.name.startswith("seed-") else run_dir.name
        self.calls.append((variant, resume))
        self.seeds.append((variant, cfg.train.seed))
        save_config(cfg, run_dir / "config.yaml")
        report = count_parameters(build_model(cfg.model))
        m = cfg.model
        r1 = 10.0 + 5 * m.prefix.enabled + 3 * m.lora.enabled + 7 * m.adapter.enabled + 2 * m.prefix.scaled
        rows = [{"epoch": e + 1, "loss": 5.0 / (e + 1), "R1": r1 - 2 + e, "mAP": r1, "split": "val", "time_s": 1.5}
                for e in range(cfg.train.epochs)]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        metrics = {"R1": r1, "R5": r1 + 10, "R10": r1 + 20, "mAP": r1 - 1, "mINP": r1 - 2}
        rng = np.random.default_rng([int(r1 * 10), cfg.train.seed if cfg.train.epochs else 0])
        first = np.where(rng.random(self.QUERIES) < r1 / 100, 1, rng.integers(2, 30, self.QUERIES))
        stats.write_per_query_csv(run_dir / ablation.PER_QUERY_NAME, [
            {"query_index": i, "pid": i // 4, "image_id": i // 2, "caption": f"query {i}", "images": 2,
             "first_rank": int(f), "ap": 1.0 / f, "inp": 0.5 / f} for i, f in enumerate(first)])
        test = stats.read_per_query_csv(run_dir / ablation.PER_QUERY_NAME).metrics()
        results = {"dataset": "ToyPEDES", "selected_on": "val", "best_epoch": cfg.train.epochs,
                   "metrics": {"val": metrics, "test": test},
                   "parameters": report.to_json(), "train_time_s": 1.5 * cfg.train.epochs, "config": to_dict(cfg)}
        (run_dir / "results.json").write_text(json.dumps(results))
        return results


def test_ablation_sweep_table_and_figures(toy_root, tmp_path, capsys, monkeypatch):
    stub = StubTrain()
    monkeypatch.setattr(ablation.runs, "_default_train_fn", lambda: stub)
    runs, out = tmp_path / "runs", tmp_path / "out"
    argv = ["ablation", "--run", "--epochs", "2", "--seeds", "2", "--data-root", str(toy_root), "--runs-dir", str(runs),
            "--out", str(out), "--no-progress", "--resamples", "500", *TINY_SETS]
    files = run_cli(argv, capsys)
    # every trained variant for seeds 0 and 1 (the preset's train.seed, +1); zero-shot once
    trained = [v.name for v in ablation.VARIANTS if v.train]
    assert [c[0] for c in stub.calls] == ["zero-shot"] + [n for n in trained for _ in (0, 1)]
    assert stub.seeds == [("zero-shot", 0)] + [(n, s) for n in trained for s in (0, 1)]
    assert (runs / "upperson" / "seed-1" / ablation.PER_QUERY_NAME).is_file()

    df = pd.read_csv(out / "ablation.csv")
    assert df["variant"].tolist() == list(ablation.VARIANT_NAMES)  # one row per variant, in order
    for col in ("R1", "mAP", "trainable_params", "train_time_s"):
        assert col in df.columns and df[col].notna().all()
    row = df.set_index("variant")
    assert row.loc["zero-shot", "trainable_params"] == 0 and row.loc["zero-shot", "epochs"] == 0
    assert row.loc["full-finetune", "trainable_params"] == row.loc["full-finetune", "total_params"]
    single = [row.loc[v, "trainable_params"] for v in ("prefix-only", "lora-only", "adapter-only")]
    assert 0 < min(single) and sum(single) == row.loc["upperson", "trainable_params"]
    assert not row.loc["vanilla-prefix", "prefix_scaled"] and row.loc["upperson", "prefix_scaled"]
    assert row.loc["sequential-adapter", "adapter_placement"] == "sequential"
    assert row.loc["upperson", "train_time_s"] == pytest.approx(3.0) and row.loc["upperson", "epochs"] == 2

    # the statistics: mean over the seeds' test scores, their std, bootstrap and paired intervals
    for col in ("seeds", "R1_std", "R1_ci_low", "R1_ci_high", "mAP_ci_low", "mAP_ci_high", "R1_diff_vs_upperson",
                "R1_diff_ci_low", "R1_diff_ci_high"):
        assert col in df.columns, col
    assert row.loc["zero-shot", "seeds"] == 1 and (row.drop("zero-shot")["seeds"] == 2).all()
    per_seed = [stats.read_per_query_csv(runs / "upperson" / f"seed-{s}" / ablation.PER_QUERY_NAME) for s in (0, 1)]
    r1 = [f.metrics()["R1"] for f in per_seed]
    assert r1[0] != r1[1]  # the seeds differ
    assert row.loc["upperson", "R1"] == pytest.approx(np.mean(r1), abs=1e-4)  # the test split's, not val's
    assert row.loc["upperson", "R1_std"] == pytest.approx(np.std(r1, ddof=1), abs=1e-4)
    assert pd.isna(row.loc["zero-shot", "R1_std"])  # one (deterministic) run: no std
    averaged = stats.average_over_seeds([f.values() for f in per_seed])
    ci = stats.bootstrap_ci(averaged, resamples=500, seed=0)["metrics"]["R1"]
    assert (row.loc["upperson", "R1_ci_low"], row.loc["upperson", "R1_ci_high"]) == pytest.approx(
        (ci["low"], ci["high"]), abs=1e-4)
    assert (df["R1_ci_low"] <= df["R1"] + 1e-9).all() and (df["R1"] <= df["R1_ci_high"] + 1e-9).all()
    assert row.loc["upperson", ["R1_diff_vs_upperson", "R1_diff_ci_low", "R1_diff_ci_high"]].tolist() == [0, 0, 0]
    assert row.loc["zero-shot", "R1_diff_ci_high"] < 0 and row.loc["zero-shot", "R1_diff_significant"]
    assert (row["ci_resamples"] == 500).all() and (row["ci_seed"] == 0).all()
    assert sorted(p.name for p in (out / "per_query" / "upperson").iterdir()) == ["seed-0.csv.gz", "seed-1.csv.gz"]

    pngs = {p.stem: p for p in files if p.suffix == ".png"}
    assert set(pngs) == {"ablation_bars", "ablation_params", "ablation_curves"}
    assert {p.stem for p in files if p.suffix == ".svg"} == set(pngs)
    for name, size in {"ablation_params": (5.6, 4.0), "ablation_curves": (8.0, 3.4), "ablation_bars": None}.items():
        with Image.open(pngs[name]) as im:
            if size:
                assert im.size == (round(size[0] * DPI), round(size[1] * DPI))
            assert np.asarray(im.convert("L"), dtype=np.float32).std() > 0
    assert len(list((out / "curves").glob("*.jsonl"))) == len(ablation.VARIANTS) - 1  # zero-shot has no epochs
    readme = (out / "README.md").read_text()
    assert "python -m analysis ablation --run --epochs 2" in readme and "| upperson |" in readme
    assert "| zero-shot | 1 |" in readme and "**yes**" in readme and "(reference)" in readme
    assert "500 resamples" in readme

    # the statistics are rebuilt from the shipped per-query files alone (no run folder), identically
    shipped = tmp_path / "shipped"
    import shutil
    shutil.copytree(out, shipped)
    table = pd.read_csv(shipped / "ablation.csv")  # as shipped: the run folders named in it are gone
    table["run_dir"] = [str(tmp_path / "gone" / v) for v in table["variant"]]
    table.to_csv(shipped / "ablation.csv", index=False)
    files = run_cli(["ablation", "--csv", str(shipped / "ablation.csv"), "--out", str(tmp_path / "replot"),
                     "--resamples", "500"], capsys)
    again = pd.read_csv(tmp_path / "replot" / "ablation.csv")
    for col in ablation.STAT_COLUMNS:
        pd.testing.assert_series_equal(again[col], df[col], check_names=False)
    # the shipped curves travel with the table: the re-plot draws them and its README lists them
    assert "ablation_curves" in {p.stem for p in files if p.suffix == ".png"}
    assert sorted(p.name for p in (tmp_path / "replot" / "curves").glob("*.jsonl")) == \
        sorted(p.name for p in (out / "curves").glob("*.jsonl"))
    assert "ablation_curves.png" in (tmp_path / "replot" / "README.md").read_text()

    # an older table (no interval columns, no per-query files) is plotted as it is, nothing made up
    old = df.drop(columns=ablation.STAT_COLUMNS)
    (tmp_path / "old").mkdir()
    old.to_csv(tmp_path / "old" / "ablation.csv", index=False)
    files = run_cli(["ablation", "--csv", str(tmp_path / "old" / "ablation.csv"), "--out", str(tmp_path / "old-out")],
                    capsys)
    assert {p.stem for p in files if p.suffix == ".png"} >= {"ablation_bars", "ablation_params"}
    replotted = pd.read_csv(tmp_path / "old-out" / "ablation.csv")
    assert not set(ablation.STAT_COLUMNS) & set(replotted.columns)
    assert "No intervals" in (tmp_path / "old-out" / "README.md").read_text()

    # complete run folders are skipped; an incomplete one is resumed; --force trains again
    from upperson.embedded import backbone_file, embedded_available

    sets = TINY_SETS[1::2]
    if embedded_available() and ablation.load_config("toypedes").model.pretrained is None:
        # what the command did: the shipped backbone when the preset names none
        sets = [f"model.pretrained={backbone_file()}", *sets]
    plan = ablation.SweepPlan(overrides=sets, epochs=2, data_root=str(toy_root), seeds=2)
    stub.calls.clear()
    (runs / "lora-only" / "seed-1" / "results.json").unlink()
    ablation.sweep(ablation.get_variants(["lora-only", "upperson"]), plan, runs, train_fn=stub, progress=False)
    assert stub.calls == [("lora-only", True)]
    # a run without its per-query file gets one by evaluation, not by training
    (runs / "upperson" / "seed-0" / ablation.PER_QUERY_NAME).unlink()
    evaluated = []
    monkeypatch.setattr(ablation.runs, "write_run_per_query", lambda cfg, d, progress=False: evaluated.append(Path(d)))
    stub.calls.clear()
    ablation.sweep(ablation.get_variants(["upperson"]), plan, runs, train_fn=stub, progress=False)
    assert not stub.calls and evaluated == [runs / "upperson" / "seed-0"]
    ablation.sweep(ablation.get_variants(["prefix-only"]), plan, runs, train_fn=stub, force=True, progress=False)
    assert stub.calls == [("prefix-only", False)] * 2
    # a different config for a complete run is refused, not silently reused
    other = dataclasses.replace(plan, epochs=3)
    with pytest.raises(ValueError, match="different config"):
        ablation.sweep(ablation.get_variants(["lora-only"]), other, runs, train_fn=stub, progress=False)

    # collecting from the run folders without training, and re-plotting a CSV
    stub.calls.clear()
    run_cli(["ablation", "--runs-dir", str(runs), "--out", str(tmp_path / "collected")], capsys)
    assert not stub.calls
    collected = pd.read_csv(tmp_path / "collected" / "ablation.csv").set_index("variant")
    assert len(collected) == len(ablation.VARIANTS)
    # upperson/seed-0 has no per-query file (the stand-in evaluation wrote none): no interval for
    # UP-Person and no difference to it, rather than numbers from one seed
    assert collected.loc["upperson", ["R1_ci_low", "R1_ci_high"]].isna().all()
    assert collected["R1_diff_vs_upperson"].isna().all() and collected.loc["lora-only", "R1_ci_low"] > 0
    # seeds only apply to training; a bad resample count is refused
    assert main(["ablation", "--seeds", "2", "--runs-dir", str(runs), "--out", str(tmp_path / "x")]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert main(["ablation", "--runs-dir", str(runs), "--out", str(tmp_path / "x"), "--resamples", "0"]) == 2


def test_variants_are_data():
    cfgs = {v.name: ablation.variant_config(v, "toypedes", epochs=3) for v in ablation.VARIANTS}
    on = {n: (c.model.prefix.enabled, c.model.lora.enabled, c.model.adapter.enabled) for n, c in cfgs.items()}
    assert on["zero-shot"] == on["full-finetune"] == (False, False, False)
    assert on["prefix-only"] == (True, False, False) and on["lora+adapter"] == (False, True, True)
    assert on["upperson"] == on["vanilla-prefix"] == on["sequential-adapter"] == (True, True, True)
    assert cfgs["zero-shot"].train.epochs == 0 and cfgs["upperson"].train.epochs == 3
    assert not cfgs["full-finetune"].model.freeze_backbone and cfgs["upperson"].model.freeze_backbone
    assert not cfgs["vanilla-prefix"].model.prefix.scaled
    assert cfgs["sequential-adapter"].model.adapter.placement == "sequential"
    with pytest.raises(ValueError, match="unknown variant"):
        ablation.get_variants(["prefix-only", "nope"])


def test_ablation_real_training(toy_root, tmp_path, capsys):
    """The sweep drives the real trainer (one epoch of one step) and reads what it wrote."""
    out = tmp_path / "out"
    run_cli(["ablation", "--run", "--variants", "upperson", "--epochs", "1", "--seeds", "1", "--data-root",
             str(toy_root), "--runs-dir", str(tmp_path / "runs"), "--out", str(out), "--no-progress", *TINY_SETS,
             "--set", "train.max_steps_per_epoch=1"], capsys)
    df = pd.read_csv(out / "ablation.csv")
    assert df["variant"].tolist() == ["upperson"]
    cfg = ablation.variant_config(ablation.get_variants(["upperson"])[0], "toypedes", overrides=TINY_SETS[1::2])
    assert df["trainable_params"][0] == count_parameters(build_model(cfg.model)).trainable > 0
    assert 0 <= df["R1"][0] <= 100 and 0 < df["mAP"][0] <= 100 and df["epochs"][0] == 1
    assert df["eval_split"][0] == "test"
    assert (out / "curves" / "upperson.jsonl").exists()
    # the per-query evaluation of the selected checkpoint reproduces the trainer's test metrics
    run = tmp_path / "runs" / "upperson" / "seed-0"
    logged = json.loads((run / "results.json").read_text())["metrics"]["test"]
    per_query = stats.read_per_query_csv(run / ablation.PER_QUERY_NAME).metrics()
    assert per_query == pytest.approx({k: logged[k] for k in per_query}, abs=1e-9)
    # per-query files carry caption keys, not caption text (as the budget and transfer files)
    for path in (run / ablation.PER_QUERY_NAME, out / "per_query" / "upperson" / "seed-0.csv.gz"):
        table = pd.read_csv(path, keep_default_na=False)
        assert (table["caption"] == "").all() and table["caption_key"].str.len().eq(16).all(), path
    assert df["seeds"][0] == 1 and df["R1_diff_vs_upperson"][0] == 0 and df["R1_ci_low"][0] <= df["R1"][0]

    # --test-on: the same runs on another test split; here the same data under another name, so the
    # reference is known: the target's per-query file is the run's own, and so is the table's R1
    target_out = tmp_path / "on-again"
    argv = ["ablation", "--variants", "upperson", "--runs-dir", str(tmp_path / "runs"), "--out", str(target_out),
            "--no-progress", "--test-on", f"again={toy_root}"]
    run_cli(argv, capsys)
    again = pd.read_csv(target_out / "ablation.csv")
    assert again["R1"][0] == pytest.approx(df["R1"][0], abs=1e-4) and again["eval_split"][0] == "test (again)"
    assert gzip.decompress((run / "per_query_test-again.csv.gz").read_bytes()) == (run / ablation.PER_QUERY_NAME).read_bytes()
    assert "again: the test split of" in (target_out / "README.md").read_text()
    record = json.loads((run / "per_query_test-again.json").read_text())
    assert record["key"]["dataset"] == "toypedes" and len(record["sha256"]) == 64
    # a second time: reused (the checkpoint and the split are unchanged); a changed file: evaluated again
    stamp = (run / "per_query_test-again.csv.gz").stat().st_mtime_ns
    run_cli(argv, capsys)
    assert (run / "per_query_test-again.csv.gz").stat().st_mtime_ns == stamp
    (run / "per_query_test-again.csv.gz").write_text("tampered\n")
    run_cli(argv, capsys)
    assert gzip.decompress((run / "per_query_test-again.csv.gz").read_bytes()) == (run / ablation.PER_QUERY_NAME).read_bytes()
    # the table reads each target file checked against its record: one changed after its evaluation
    # (a valid per-query file, another query's rank) is refused, not counted
    rows = pd.read_csv(run / "per_query_test-again.csv.gz", keep_default_na=False).to_dict("records")
    rows[0]["first_rank"] = int(rows[0]["first_rank"]) + 1
    stats.write_per_query_csv(run / "per_query_test-again.csv.gz", rows)
    with pytest.raises(ValueError, match="changed after it was evaluated"):
        ablation.collect(tmp_path / "runs", ablation.get_variants(["upperson"]), include_other=False,
                         per_query_file="per_query_test-again.csv.gz", target="again")
    for bad, needle in ((["--test-on", "again"], "give NAME=ROOT"), (["--test-on", "x=/nonexistent/t"], "no such path"),
                        (["--test-on", f"a/b={toy_root}"], "give NAME=ROOT")):
        assert main(["ablation", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "no"), *bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
        assert not (tmp_path / "no").exists()


# ----------------------------------------------------------------------------- curves and report


def _fake_run(d: Path, losses) -> Path:
    d.mkdir(parents=True)
    rows = [{"epoch": i + 1, "loss": l, "R1": 10.0 + 3 * i, "mAP": 12.0 + i, "split": "val", "lr": 1e-3, "time_s": 2.0}
            for i, l in enumerate(losses)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_curves_command(tmp_path, capsys):
    a = _fake_run(tmp_path / "run-a", [3.0, 2.0, 1.5])
    b = _fake_run(tmp_path / "run-b", [3.2, 2.5])
    files = run_cli(["curves", str(a), "--run", str(b / "metrics.jsonl"), "--out", str(tmp_path / "f")], capsys)
    png = [p for p in files if p.suffix == ".png"]
    assert [p.name for p in png] == ["curves.png"]
    with Image.open(png[0]) as im:
        assert im.size == (round(8.0 * DPI), round(3.4 * DPI))
        assert np.asarray(im.convert("L"), dtype=np.float32).std() > 0
    rc = main(["curves", str(tmp_path / "missing"), "--out", str(tmp_path / "g")])
    assert rc == 2 and "metrics.jsonl" in capsys.readouterr().err


def test_report(checkpoint, toy_root, tmp_path, capsys, monkeypatch):
    stub = StubTrain()
    monkeypatch.setattr(ablation.runs, "_default_train_fn", lambda: stub)
    runs = tmp_path / "runs"
    run_cli(["ablation", "--run", "--variants", "zero-shot,prefix-only,upperson", "--epochs", "2",
             "--data-root", str(toy_root), "--runs-dir", str(runs), "--out", str(tmp_path / "abl"), *TINY_SETS], capsys)
    out = tmp_path / "report"
    files = run_cli(["report", "--checkpoint", str(checkpoint), "--data-root", str(toy_root), "--out", str(out),
                     "--ids", "4", "--runs-dir", str(runs), "--curves", str(runs / "upperson" / "seed-0"),
                     "--curves", str(runs / "prefix-only" / "seed-0")], capsys)
    names = {p.stem for p in files}
    assert names == {"attention_image", "attention_text", "prefix_scale", "umap", "ablation_bars",
                     "ablation_params", "ablation_curves", "curves"}
    with Image.open(out / "umap.png") as im:
        assert im.size == (round(8.8 * DPI), round(4.6 * DPI))
    points = pd.read_csv(out / "umap_points.csv")
    assert points["pid"].nunique() == 4 and set(points["kind"]) == {"image", "caption"}
    assert points["model"].nunique() == 2 and "Zero-shot backbone" in set(points["model"])
    html = (out / "index.html").read_text()
    for name in names:
        assert f'src="{name}.png"' in html and f'href="{name}.svg"' in html
        with Image.open(out / f"{name}.png") as im:
            assert np.asarray(im.convert("L"), dtype=np.float32).std() > 0
    assert html.count("<figcaption>") == len(names) and "Not included" not in html
    # the header's data is the attention and embeddings sections'; the ablation names its own runs and split
    ablation_part = html[html.index("<h2>Ablation</h2>"):html.index("<h2>Training curves</h2>")]
    assert f"run folders in {runs}" in ablation_part and "test split" in ablation_part
    assert "Attention and embeddings" in html[:html.index("<h2>")]


def test_run_folder_resolves_to_its_best_checkpoint(checkpoint, tmp_path):
    import shutil

    from analysis.sources import find_run_checkpoint, load_source, resolve_checkpoint

    run = tmp_path / "run"
    shutil.copytree(checkpoint, run / "best")
    shutil.copytree(checkpoint, run / "last")
    assert find_run_checkpoint(run) == run / "best"
    assert load_source(run=str(run)).checkpoint == run / "best"
    with pytest.raises(ValueError, match="not both"):
        resolve_checkpoint(str(checkpoint), str(run))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        find_run_checkpoint(tmp_path / "empty")
