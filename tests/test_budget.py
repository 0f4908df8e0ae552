"""``python -m analysis budget`` (analysis/budget/): the grid, the resumable sweep on a stub
trainer, exact parameter counts against docs/method.md's closed form, --dry-run, refusals."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import budget
from analysis.__main__ import build_parser, main
from upperson import stats
from upperson.config import load_config, to_dict

TARGETS = ("icfg",)  # one target: each per-query file is an fsync'd write


def closed_form(cfg) -> int:
    """docs/method.md section 3.4, per block of width d, for the blocks each component applies to:
    prefix 2 l d + 3 (K0, V0; sk, sv, lambda), LoRA 4 r d + 2 (A, B for K and V; sk, sv),
    adapters 2 (2 d b + b + d) + 2 with b = round(d * ratio) (down, up, biases; a1, a2).
    A full fine-tune trains every backbone weight; zero-shot trains nothing."""
    m = cfg.model
    if not m.freeze_backbone:
        return 7_990_912  # upp-tiny at 128 x 48: every backbone weight (docs/generalization.md §5)
    d, layers = 128, 4  # upp-tiny: both towers 4 blocks of width 128
    n = 0
    for enabled, depth, per_block in (
        (m.prefix.enabled, m.prefix.depth, 2 * m.prefix.length * d + (3 if m.prefix.scaled else 2)),
        (m.lora.enabled, m.lora.depth, 4 * m.lora.rank * d + 2),
        (m.adapter.enabled, m.adapter.depth, 2 * (2 * d * round(d * m.adapter.ratio) + round(d * m.adapter.ratio) + d) + 2),
    ):
        if enabled:
            n += 2 * min(depth or layers, layers) * per_block  # two towers
    return n


class StubTrainer:
    """Writes what the trainer's run folder ends with (results.json with the config), nothing else."""

    def __init__(self, fail_on: str = "") -> None:
        self.calls: list[tuple[str, bool]] = []
        self.fail_on = fail_on

    def __call__(self, cfg, run_dir, *, resume=False, progress=False):
        run_dir = Path(run_dir)
        self.calls.append((f"{run_dir.parent.name}/{run_dir.name}", resume))
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text("stub\n")
        if self.fail_on and self.fail_on == run_dir.parent.name:
            raise RuntimeError("interrupted")  # mid-sweep
        res = {"config": json.loads(json.dumps(to_dict(cfg))), "train_time_s": 12.0}
        (run_dir / "results.json").write_text(json.dumps(res))


def stub_evaluate(cfg, run_dir, dataset, root):
    """Per-query rows that depend on the point, the seed and the domain (30 queries)."""
    rng = np.random.default_rng(zlib.crc32(f"{Path(run_dir).parent.name}/{cfg.train.seed}/{root}".encode()))
    ranks = rng.integers(1, 6, size=30)
    return [{"query_index": q, "pid": q // 2, "image_id": q, "caption": "a caption", "images": 1,
             "first_rank": int(r), "ap": 1.0 / r, "inp": 1.0 / r} for q, r in enumerate(ranks)]


def stub_key(cfg, run_dir, dataset, root):
    """What a stub run's per-query file depends on (the real key reads the checkpoint and the split)."""
    return {"point": Path(run_dir).parent.name, "seed": cfg.train.seed, "dataset": dataset, "root": root}


def _args(tmp_path, *extra):
    roots = []
    for name in TARGETS:
        (tmp_path / name).mkdir(exist_ok=True)
        roots += ["--target", f"{name}={tmp_path / name}"]
    return build_parser().parse_args(["budget", "--data-root", str(tmp_path), "--runs-dir", str(tmp_path / "runs"),
                                      "--out", str(tmp_path / "out"), "--resamples", "50", "--no-progress",
                                      *roots, *extra])


def test_grid_is_the_protocol():
    grid = budget.load_grid()
    names = [p.name for p in grid.points]
    assert names == [f"B{i}" for i in range(1, 13)] + ["full-finetune", "zero-shot"]
    assert [p.name for p in grid.points if p.default] == ["B2"] and grid.seeds == 2
    # the full fine-tune point is the study's full fine-tune preset
    full = next(p for p in grid.points if p.kind == "full")
    ours = load_config(grid.base, list(full.overrides))
    preset = load_config("toypedes-regime-full-finetune")
    assert to_dict(ours.model) == to_dict(preset.model) and to_dict(ours.train) == to_dict(preset.train)


def test_parameter_counts_are_the_closed_form(tmp_path):
    grid = budget.load_grid()
    jobs = budget.plan(grid, tmp_path / "runs", seeds=1)
    assert [j.point.name for j in jobs] == [p.name for p in grid.points]
    for j in jobs:
        assert j.trainable == closed_form(j.cfg), j.point.name
    assert sorted(tmp_path.iterdir()) == []  # planning writes nothing


SWEPT = "B2,full-finetune,zero-shot"


def test_sweep_on_a_stub_trainer_writes_every_column(tmp_path):
    stub = StubTrainer()
    figs = budget.budget_command(_args(tmp_path, "--points", SWEPT), train_fn=stub, evaluate_fn=stub_evaluate,
                                 key_fn=stub_key)
    grid = budget.load_grid()
    assert len(stub.calls) == 2 * 2 + 1  # 2 trained points x 2 seeds; zero-shot once (train.epochs=0: evaluation only)
    df = pd.read_csv(tmp_path / "out" / "budget.csv")
    assert list(df.columns) == budget.columns([budget.Target(t, "toypedes", "") for t in TARGETS])
    assert df["point"].tolist() == SWEPT.split(",")
    one_seed = [c for c in df.columns if c.endswith("_std")]  # undefined for one seed (zero-shot)
    assert not df.drop(columns=one_seed).isna().any().any() and not df.iloc[:2][one_seed].isna().any().any()
    for p in grid.select(SWEPT.split(",")).points:
        row = df[df["point"] == p.name].iloc[0]
        assert row["trainable_params"] == closed_form(load_config(grid.base, list(p.overrides))), p.name
        assert row["seeds"] == (1 if p.kind == "zero-shot" else 2)
    # the metrics are the seed-averaged per-query values
    b2 = [pd.read_csv(tmp_path / "runs" / "B2" / f"seed-{s}" / "per_query_target-icfg.csv.gz") for s in (0, 1)]
    r1 = np.mean([100 * (f["first_rank"] <= 1).mean() for f in b2])
    assert df.loc[df["point"] == "B2", "R1_icfg"].iloc[0] == pytest.approx(r1)
    assert df.loc[df["point"] == "B2", "R1_icfg_low"].iloc[0] <= r1 <= df.loc[df["point"] == "B2", "R1_icfg_high"].iloc[0]
    assert b2[0]["caption"].isna().all()  # no caption text in the files
    assert len(list((tmp_path / "out" / "per_query").rglob("*.csv.gz"))) == 5 * 2
    assert {f.png.name for f in figs} == {"budget.png"} and (tmp_path / "out" / "budget.svg").exists()
    assert df["pareto"].any()
    # the README: the command, the setting, one row per point (exact counts, R@1 with its interval)
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "python -m analysis budget" in readme and "grid.yaml (SHA-256 " in readme and "icfg (toypedes at" in readme
    for _, r in df.iterrows():
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{r['point']}` |"))
        assert f"{int(r['trainable_params']):,}" in row and f"{r['R1_in']:.2f} [{r['R1_in_low']:.2f}, " in row
        assert ("(paper default)" in row) == bool(r["default"])

    # finished runs are reused: nothing trains again, no per-query file is rewritten
    stub.calls.clear()
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("*.csv.gz")}
    jobs = budget.plan(grid.select(SWEPT.split(",")), tmp_path / "runs", data_root=str(tmp_path), count=_no_count)
    budget.run_sweep(jobs, [budget.Target("icfg", "toypedes", str(tmp_path / "icfg"))], train_fn=stub,
                     evaluate_fn=stub_evaluate, key_fn=stub_key, progress=False)
    assert stub.calls == [] and {p: p.stat().st_mtime_ns for p in stamps} == stamps


def _no_count(cfg):
    return 1, 2  # (the counts are checked above; here only the runs matter)


def test_interrupted_sweep_continues(tmp_path):
    args = _args(tmp_path, "--points", "B1,B2,B3", "--seeds", "1")
    with pytest.raises(RuntimeError, match="interrupted"):
        budget.budget_command(args, train_fn=StubTrainer(fail_on="B2"), evaluate_fn=stub_evaluate, key_fn=stub_key,
                              count=_no_count)
    # the plan now: B1 done, B2 to resume, B3 new, timed by B1's 12 s for 30 epochs
    jobs = budget.plan(budget.load_grid().select(["B1", "B2", "B3"]), tmp_path / "runs", data_root=str(tmp_path),
                       seeds=1, count=_no_count)
    lines = budget.describe_plan(jobs)
    assert [j.status for j in jobs] == ["done", "resume", "new"]
    assert "0 (done)" in lines[1] and "measured 0.4 s/epoch" in lines[2] and "~0.0 h" in lines[-1]
    stub = StubTrainer()
    budget.budget_command(args, train_fn=stub, evaluate_fn=stub_evaluate, key_fn=stub_key, count=_no_count)
    assert stub.calls == [("B2/seed-0", True), ("B3/seed-0", False)]  # B1 reused, B2 resumed


def test_target_forms():
    assert budget.Target.parse("icfg=/d/icfg") == budget.Target("icfg", None, "/d/icfg")
    assert budget.Target.parse("icfg-pedes=/d/I") == budget.Target("icfg-pedes", "icfg-pedes", "/d/I")
    assert budget.Target.parse("rstp:rstpreid=/d/R") == budget.Target("rstp", "rstpreid", "/d/R")
    assert budget.Target.parse("/d/toy-rstp") == budget.Target("toy-rstp", None, "/d/toy-rstp")
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        budget.Target.parse("x:nope=/d")


def test_pareto_frontier():
    assert budget.pareto([0, 10, 20, 30, 40], [5, 7, 6, 9, 9]) == [True, True, False, True, False]


def test_dry_run_writes_nothing(tmp_path, capsys):
    before = sorted(tmp_path.rglob("*"))
    assert main(["budget", "--dry-run", "--points", "B2,B8,zero-shot", "--runs-dir", str(tmp_path / "runs"),
                 "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "108,856" in out and "27,214" in out and "evaluation only" in out and "5 runs" in out
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("argv,needle", [
    (["--points", "B99"], "'B99'"),
    (["--set", "model.lora.rank=oops"], "model.lora.rank"),
    (["--target", "in=/tmp"], "reserved"),
    (["--seeds", "0"], "--seeds 0"),
    (["--grid", "missing.yaml"], "missing.yaml"),
    (["--target", "icfg=/nonexistent/icfg"], "--target icfg: no such data root /nonexistent/icfg"),  # --dry-run too
    (["--data-root", "/nonexistent/cuhk"], "--data-root /nonexistent/cuhk: no such path"),
])
def test_bad_input_is_one_error_line(tmp_path, capsys, argv, needle):
    assert main(["budget", "--dry-run", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
                 *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_per_query_files_key_each_caption_without_its_text(tmp_path, caplog):
    """No caption text in a budget run's per-query files, and each query's caption_key is its own
    caption's (the key identifies the caption across files)."""
    texts = [f"a woman in a {c} coat" for c in ("red", "blue", "green", "grey")]

    def evaluate(cfg, run_dir, dataset, root):
        return [{"query_index": q, "pid": q, "image_id": q, "caption": t, "images": 1, "first_rank": 1 + q,
                 "ap": 1.0 / (1 + q), "inp": 1.0} for q, t in enumerate(texts)]

    jobs = budget.plan(budget.load_grid().select(["B2"]), tmp_path / "runs", data_root=str(tmp_path), seeds=1,
                       count=_no_count)
    budget.run_sweep(jobs, [budget.Target("icfg", "toypedes", str(tmp_path))], train_fn=StubTrainer(),
                     evaluate_fn=evaluate, key_fn=stub_key, progress=False)
    for name in ("per_query_test.csv.gz", "per_query_target-icfg.csv.gz"):
        path = tmp_path / "runs" / "B2" / "seed-0" / name
        df = pd.read_csv(path, keep_default_na=False)
        assert "coat" not in gzip.decompress(path.read_bytes()).decode() and (df["caption"] == "").all()
        assert df["caption_key"].tolist() == [stats.caption_key(t) for t in texts]
    # a file written before the keys were kept (every key that of empty text) is written again, said out loud
    old = tmp_path / "runs" / "B2" / "seed-0" / "per_query_target-icfg.csv.gz"
    stats.write_per_query_csv(old, [{**r, "caption": ""} for r in evaluate(None, None, None, None)])
    with caplog.at_level(logging.WARNING, logger="analysis.budget"):
        budget.run_sweep(jobs, [budget.Target("icfg", "toypedes", str(tmp_path))], train_fn=StubTrainer(),
                         evaluate_fn=evaluate, key_fn=stub_key, progress=False)
    assert pd.read_csv(old)["caption_key"].tolist() == [stats.caption_key(t) for t in texts]
    assert [r.getMessage().split(": ", 1)[1][:40] for r in caplog.records if r.levelno == logging.WARNING] == [
        "evaluated again: no record of what it wa"]


def test_per_query_files_are_kept_only_while_their_record_matches(tmp_path):
    """Each per-query file has its record (key and SHA-256) beside it: a sweep keeps the file while
    both match, evaluates it again when the key changes (another checkpoint, split, batch size,
    precision) or the file did, and the table refuses a file changed after its last evaluation."""
    calls = []

    def evaluate(cfg, run_dir, dataset, root):
        calls.append(root)
        return stub_evaluate(cfg, run_dir, dataset, root)

    key = {"v": 1}
    target = [budget.Target("icfg", "toypedes", str(tmp_path / "icfg"))]
    jobs = budget.plan(budget.load_grid().select(["B2"]), tmp_path / "runs", data_root=str(tmp_path), seeds=1,
                       count=_no_count)
    sweep = dict(train_fn=StubTrainer(), evaluate_fn=evaluate, key_fn=lambda *a: {**stub_key(*a), **key},
                 progress=False)
    budget.run_sweep(jobs, target, **sweep)
    run = tmp_path / "runs" / "B2" / "seed-0"
    record = json.loads((run / "per_query_target-icfg.json").read_text())
    assert record["key"]["v"] == 1 and record["sha256"] == hashlib.sha256(
        (run / "per_query_target-icfg.csv.gz").read_bytes()).hexdigest()
    assert len(calls) == 2
    budget.run_sweep(jobs, target, **sweep)
    assert len(calls) == 2  # both records match: nothing evaluated
    key["v"] = 2  # e.g. the checkpoint changed
    budget.run_sweep(jobs, target, **sweep)
    assert len(calls) == 4
    (run / "per_query_test.json").unlink()  # no record: evaluated again
    budget.run_sweep(jobs, target, **sweep)
    assert len(calls) == 5 and (run / "per_query_test.json").is_file()
    # changed after its evaluation (a valid file, one rank moved): the table refuses it
    rows = pd.read_csv(run / "per_query_target-icfg.csv.gz", keep_default_na=False).to_dict("records")
    rows[0]["first_rank"] = int(rows[0]["first_rank"]) + 1
    stats.write_per_query_csv(run / "per_query_target-icfg.csv.gz", rows)
    with pytest.raises(ValueError, match="changed after it was evaluated"):
        budget.collect(jobs, target, resamples=20)


def test_the_budget_sweep_runs_on_the_one_sweep_engine(tmp_path, monkeypatch):
    """analysis/sweep.py trains the budget's runs (its default trainer), and its rule holds: a complete
    run of another config stops the sweep before anything trains, and --dry-run names it."""
    from analysis import sweep

    stub = StubTrainer()
    monkeypatch.setattr(sweep, "_default_train_fn", lambda: stub)
    args = _args(tmp_path, "--points", "B1,B2", "--seeds", "1")
    budget.budget_command(args, evaluate_fn=stub_evaluate, key_fn=stub_key, count=_no_count)
    assert stub.calls == [("B1/seed-0", False), ("B2/seed-0", False)]
    other = tmp_path / "runs" / "B2" / "seed-0" / "results.json"
    other.write_text(json.dumps({"config": {"train": {"epochs": 1}}, "train_time_s": 1.0}))
    (tmp_path / "runs" / "B1" / "seed-0" / "results.json").unlink()  # B1 would train first
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    stub.calls.clear()
    with pytest.raises(ValueError, match="holds a complete run of B2/seed-0 with a different config"):
        budget.budget_command(args, evaluate_fn=stub_evaluate, key_fn=stub_key, count=_no_count)
    assert stub.calls == [] and {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == files
    lines = budget.describe_plan(budget.plan(budget.load_grid().select(["B1", "B2"]), tmp_path / "runs",
                                             data_root=str(tmp_path), seeds=1, count=_no_count))
    assert " resume " in lines[1] and " conflict " in lines[2] and "--force trains it again" in lines[2]


@pytest.mark.parametrize("layout", ["paper", "phone"])
def test_the_parameter_axis_labels_never_overlap_when_the_points_span_less_than_a_decade(layout):
    """Two PETL points 6 % apart (B1, B2) and zero-shot: the log axis still has readable labels (at least two, none
    overlapping); matplotlib labelled every minor tick of so short a range, one on top of the other."""
    from analysis import style
    from analysis.budget.figure import budget_figure, example_table

    short = example_table(4, ("in", "icfg"))
    short = short[short["kind"] != "full"].reset_index(drop=True)
    short.loc[short["kind"] == "petl", "trainable_params"] = [102_712.0, 108_856.0]
    for df in (short, example_table(14, ("in", "icfg"))):  # and the grid's span: 2e4 to 1.5e8
        fig, _ = budget_figure(df, ["in", "icfg"], layout=style.PHONE if layout == "phone" else style.PAPER)
        _no_overlapping_x_labels(fig)


def _no_overlapping_x_labels(fig) -> None:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        if not ax.get_xlabel():
            continue  # a stacked panel above the last: its labels are the shared axis's
        lo, hi = ax.get_xlim()
        boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels(minor=False) + ax.get_xticklabels(minor=True)
                 if t.get_visible() and t.get_text() and lo <= t.get_position()[0] <= hi]
        assert len(boxes) >= 2, [t.get_text() for t in ax.get_xticklabels()]
        boxes.sort(key=lambda b: b.x0)
        for a, b in zip(boxes, boxes[1:]):
            assert a.x1 <= b.x0, (a, b)


def test_the_real_key_follows_the_checkpoint_and_the_split(tmp_path):
    """budget.CheckpointKey: the SHA-256 of the run's best/petl.json, the split's digest (the same
    data elsewhere: the same digest), the eval batch size and the precision of the run's config."""
    from analysis import per_query_cache
    from tests.test_demo_support import toy_root
    from upperson.data import load_dataset

    root = toy_root()
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "best" / "petl.json").write_text('{"weights": "one"}')
    cfg = load_config("toypedes-regime")
    key = budget.CheckpointKey()(cfg, run, "toypedes", str(root))
    split = per_query_cache.records_digest(load_dataset("toypedes", root).split("test"), root)
    assert key == {"checkpoint": hashlib.sha256(b'{"weights": "one"}').hexdigest(), "dataset": "toypedes",
                   "test": split, "eval_batch_size": cfg.data.eval_batch_size, "precision": cfg.train.precision}
    (run / "best" / "petl.json").write_text('{"weights": "two"}')
    assert budget.CheckpointKey()(cfg, run, "toypedes", str(root))["checkpoint"] != key["checkpoint"]
