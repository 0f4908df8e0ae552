"""The Studies group's Transfer, Budget and Probe views: through ``gradio_client`` (against references
computed here with the CLI's own code) and in a real browser at 390 px.

The study folders are made in the test by the CLI's own writers: the transfer matrix from per-query
files (``analysis.transfer.cells.build_matrix`` and ``command.write_study``), the budget sweep on the
stub trainer of tests/test_budget.py (``analysis.budget.budget_command``), the binding probe's tables
(``analysis.binding.output``). One server for the module, given the folder of studies as
``--studies`` does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.test_demo_support import engine as make_engine
from tests.test_demo_support import load_model, start, toy_root, use_session_cache

gradio_client = pytest.importorskip("gradio_client")

QUERIES = 40
SEEDS = {"upperson": 2, "full-finetune": 2, "zero-shot": 1}
PROBE_FOLDER = "my-probe"  # not a default's name: the probe is shown only when named
EVIL_MODEL = "UP-Person <img src=x onerror=alert(1)>"


def _ranks(method: str, target: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng([ord(c) for c in f"{method}/{target}/{seed}"])
    return rng.integers(1, 4, size=QUERIES)  # ranks 1-3: many queries where the two methods disagree


def make_transfer(out: Path, captions: list[str]) -> dict:
    """A transfer folder (cuhk -> cuhk, cuhk -> icfg) written by the CLI's writers; returns the ranks used."""
    from analysis.transfer import cells
    from analysis.transfer.command import write_study
    from upperson import stats

    files, ranks = [], {}
    for target in ("cuhk", "icfg"):
        for method, n in SEEDS.items():
            for seed in range(n):
                r = _ranks(method, target, seed)
                ranks[(method, target, seed)] = r
                # cuhk's captions are the demo gallery's (shown as text); icfg's are in no gallery (keys)
                rows = [{"query_index": q, "pid": q // 2, "image_id": q,
                         "caption": captions[q] if target == "cuhk" else f"icfg caption {q}", "images": 1,
                         "first_rank": int(r[q]), "ap": 1.0 / r[q], "inp": 1.0 / r[q]} for q in range(QUERIES)]
                rel = cells.cell_file_path(method, "cuhk", target, seed)
                stats.write_per_query_csv(out / rel, rows, caption_text=False)
                run_dir = out.parent / "transfer-runs" / method / f"seed-{seed}"
                run_dir.mkdir(parents=True, exist_ok=True)
                own = stats.read_per_query_csv(out / cells.cell_file_path(method, "cuhk", "cuhk", seed)).metrics()
                (run_dir / "results.json").write_text(json.dumps({"metrics": {"test": own}}))
                files.append(cells.CellFile(method, "cuhk", target, seed, rel, run_dir))
    df, diffs = cells.build_matrix(files, out, resamples=200)
    summary = cells.gaps(diffs, resamples=200)
    write_study(out, df, summary, cells.diagonal_mismatches(df), command="python -m analysis transfer --source cuhk",
                cells=["cuhk->cuhk", "cuhk->icfg"])
    return ranks


def make_budget(tmp: Path, out: Path) -> None:
    """A budget folder: the sweep of four points, one seed, one target, on tests/test_budget.py's stub trainer."""
    from analysis import budget
    from analysis.__main__ import build_parser
    from tests.test_budget import StubTrainer, stub_evaluate, stub_key

    (tmp / "icfg").mkdir()
    args = build_parser().parse_args(["budget", "--data-root", str(tmp), "--runs-dir", str(tmp / "runs"), "--out",
                                      str(out), "--resamples", "50", "--no-progress", "--target", f"icfg={tmp / 'icfg'}",
                                      "--points", "B2,B5,full-finetune,zero-shot", "--seeds", "1"])
    budget.budget_command(args, train_fn=StubTrainer(), evaluate_fn=stub_evaluate, key_fn=stub_key)


def make_probe(out: Path):
    from analysis.binding.output import ProbeResult, binding_figure, write_readme, write_tables
    from analysis.binding.scoring import accuracy, difference

    rng = np.random.default_rng(0)
    zs = rng.integers(0, 2, 60).astype(float)
    up = np.clip(zs + rng.integers(0, 2, 60), 0, 1)
    results = []
    for probe in ("swap", "bag"):
        results.append(ProbeResult("zero-shot backbone", probe, "image", accuracy(zs, resamples=100), zs))
        results.append(ProbeResult(EVIL_MODEL, probe, "image", accuracy(up, resamples=100), up, "zero-shot backbone",
                                   difference(up, zs, resamples=100)))
    attrs = {m: {"upper_colour": accuracy(s[:30], chance=12.5, resamples=100)}
             for m, s in (("zero-shot backbone", zs), (EVIL_MODEL, up))}
    out.mkdir(parents=True)
    write_tables(out, results, attrs, captions="fine", seed=0)
    fig = binding_figure(results, attrs, out)
    write_readme(out, results, attrs, command="python -m analysis binding --pairs 60", figure=fig,
                 details={"models": "m", "pairs": "60 per probe (domain <b>cuhk</b>)"})
    return results, attrs


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """(engine, client, url, studies folder, ranks of the transfer study)."""
    use_session_cache()
    from demo.gallery import dataset_gallery

    studies = tmp_path_factory.mktemp("studies")
    engine = make_engine(load_model(), dataset_gallery("toypedes", toy_root(), "test"))
    captions = [c for it in engine.gallery.items for c in it.captions]
    ranks = make_transfer(studies / "transfer", captions)
    make_budget(tmp_path_factory.mktemp("budget-sweep"), studies / "budget")
    make_probe(studies / PROBE_FOLDER)
    app, url = start(engine, studies=[studies])
    client = gradio_client.Client(url, verbose=False)
    try:
        yield engine, client, url, studies, ranks
    finally:
        app.close()


def _png(path) -> bytes:
    return Path(path).read_bytes()


def _figure_png(made) -> bytes:
    from analysis import style

    return style.png_bytes(made[0])


def _error(client, match: str, *args, api_name: str) -> None:
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=match):
        client.predict(*args, api_name=api_name)


# ----------------------------------------------------------------------------- transfer


def test_transfer_matrix_is_the_clis_figure_and_a_cell_shows_its_difference_and_disagreements(site):
    from analysis.transfer.figure import transfer_matrix_figure

    engine, client, _, studies, ranks = site
    folder = studies / "transfer"
    df = pd.read_csv(folder / "transfer.csv")
    summary = json.loads((folder / "transfer_summary.json").read_text())
    figure, info, cells = client.predict("", api_name="/transfer")  # the default: the --studies folder's
    assert _png(figure) == _figure_png(transfer_matrix_figure(df, summary["gaps"]))
    assert [c["cell"] for c in cells] == ["cuhk->cuhk", "cuhk->icfg"] and "Summary" in info
    assert client.predict(str(folder), api_name="/transfer")[2] == cells  # the same folder, named
    for cell in cells:
        target = cell["target"]
        row = df[(df["method"] == "upperson") & (df["target"] == target)].iloc[0]
        text, examples = client.predict("", cell["cell"], api_name="/transfer_cell")
        assert f"{row['R1_diff']:+.1f} [{row['R1_diff_ci_low']:.1f}, {row['R1_diff_ci_high']:.1f}]" in text
        up = np.stack([ranks[("upperson", target, s)] for s in range(2)])
        full = np.stack([ranks[("full-finetune", target, s)] for s in range(2)])
        up_right = np.flatnonzero((up == 1).all(0) & (full != 1).all(0))[:4]
        full_right = np.flatnonzero((up != 1).all(0) & (full == 1).all(0))[:4]
        assert len(up_right) and len(full_right)  # the reference has examples of both sides
        assert [e["query_index"] for e in examples] == [*up_right.tolist(), *full_right.tolist()]
        for e in examples:
            q = e["query_index"]
            assert e["upperson_ranks"] == up[:, q].tolist() and e["full_finetune_ranks"] == full[:, q].tolist()
        if target == "cuhk":  # the gallery holds these captions: shown as text
            captions = [c for it in engine.gallery.items for c in it.captions]
            assert [e["caption"] for e in examples] == [captions[e["query_index"]] for e in examples]
        else:
            assert all(e["caption"] is None for e in examples) and examples[0]["caption_key"] in text
    _error(client, "Cell must be one of cuhk-&gt;cuhk, cuhk-&gt;icfg", "", "icfg->cuhk", api_name="/transfer_cell")


def test_a_study_with_example_captions_shows_them_as_text(site):
    """example_captions.json (written by the command) gives the texts of queries no gallery holds; escaped."""
    import shutil

    from analysis.transfer.examples import EXAMPLE_CAPTIONS

    _, client, _, studies, _ = site
    folder = studies / "transfer-texts"
    if not folder.exists():
        shutil.copytree(studies / "transfer", folder)
    _, examples = client.predict("transfer-texts", "cuhk->icfg", api_name="/transfer_cell")
    assert examples and all(e["caption"] is None for e in examples)
    texts = {e["caption_key"]: f"icfg <b>caption</b> {e['query_index']}" for e in examples}
    (folder / EXAMPLE_CAPTIONS).write_text(json.dumps({"captions": texts}))
    text, examples = client.predict("transfer-texts", "cuhk->icfg", api_name="/transfer_cell")
    assert [e["caption"] for e in examples] == [texts[e["caption_key"]] for e in examples]
    assert "&lt;b&gt;caption&lt;/b&gt;" in text and "<b>" not in text and "lacks these queries" not in text


def test_transfer_per_query_path_outside_the_study_is_refused(site, tmp_path):
    _, client, _, studies, _ = site
    bad = studies / "transfer-bad"
    bad.mkdir()
    df = pd.read_csv(studies / "transfer" / "transfer.csv")
    (tmp_path / "x.csv").write_text("query_index,pid,image_id,caption_key,first_rank\n")
    df["per_query"] = os.path.relpath(tmp_path / "x.csv", bad)  # ../../..: out of the study
    df.to_csv(bad / "transfer.csv", index=False)
    _error(client, "resolves outside the study folder", str(bad), "cuhk->icfg", api_name="/transfer_cell")


# ----------------------------------------------------------------------------- budget


def test_budget_frontier_and_a_point_with_its_configuration_and_numbers(site):
    from analysis.budget import load_grid
    from analysis.budget.figure import budget_figure
    from tests.test_budget import closed_form
    from upperson.config import load_config

    _, client, _, studies, _ = site
    df = pd.read_csv(studies / "budget" / "budget.csv")
    figure, info, points = client.predict("", api_name="/budget")
    assert _png(figure) == _figure_png(budget_figure(df, ["in", "icfg"]))
    assert [p["point"] for p in points] == ["B2", "B5", "full-finetune", "zero-shot"] and "B2" in info
    # the command that made it, from the study's README, folded
    assert "<details><summary><b>Made by</b>" in info and "python -m analysis budget" in info.split("<details>")[1]
    grid = load_grid()
    for p in grid.select(["B2", "full-finetune"]).points:
        text, numbers = client.predict("", p.name, api_name="/budget_point")
        row = df[df["point"] == p.name].iloc[0]
        assert numbers["trainable_params"] == closed_form(load_config(grid.base, list(p.overrides)))
        assert numbers["overrides"] == row["overrides"] and f"{numbers['trainable_params']:,}" in text
        for d in ("in", "icfg"):
            got = numbers["domains"][d]["R1"]
            assert (got["value"], got["low"], got["high"]) == pytest.approx(
                (row[f"R1_{d}"], row[f"R1_{d}_low"], row[f"R1_{d}_high"]))
            assert f"R@1 {row[f'R1_{d}']:.1f} [{row[f'R1_{d}_low']:.1f}, {row[f'R1_{d}_high']:.1f}]" in text
    assert "the paper's default" in client.predict("", "B2", api_name="/budget_point")[0]
    text, numbers = client.predict("", "zero-shot", api_name="/budget_point")  # one seed: no std (null)
    assert numbers["trainable_params"] == 0 and numbers["domains"]["in"]["R1"]["seed_std"] is None
    assert "seed std" not in text
    _error(client, "Point must be one of B2, B5", "", "B99", api_name="/budget_point")


# ----------------------------------------------------------------------------- probe, absent studies, refusals


def test_probe_results_are_the_clis_tables_and_figure_and_user_text_is_escaped(site):
    from analysis.binding.output import draw_binding_figure, read_tables

    _, client, _, studies, _ = site
    folder = studies / PROBE_FOLDER
    results, attrs = read_tables(folder)
    figure, info, payload = client.predict(PROBE_FOLDER, api_name="/probe")  # relative to the --studies folder
    assert _png(figure) == _figure_png(draw_binding_figure(results, attrs))
    rows = pd.read_csv(folder / "binding.csv")
    assert [p["accuracy"] if "accuracy" in p else p["value"] for p in payload["pairs"]] == pytest.approx(
        rows["accuracy"].tolist())
    diff = rows.dropna(subset=["diff"]).iloc[0]
    assert f"{diff['diff']:+.1f} [{diff['diff_ci_low']:+.1f}, {diff['diff_ci_high']:+.1f}]" in info
    assert "<img" not in info and "&lt;img src=x onerror=alert\\(1\\)&gt;" in info  # the CSV's label, as text
    assert "python -m analysis binding --pairs 60" in info
    assert r"**Pairs:** 60 per probe \(domain &lt;b&gt;cuhk&lt;/b&gt;\)" in info  # which pairs, as text


def test_the_reader_gives_back_what_the_probe_wrote(tmp_path):
    from analysis.binding.output import read_tables

    results, attrs = make_probe(tmp_path / "p")
    got, got_attrs = read_tables(tmp_path / "p")
    assert [(r.model, r.probe, r.side, r.versus) for r in got] == [(r.model, r.probe, r.side, r.versus) for r in results]
    for a, b in zip(got, results):
        assert (a.accuracy.value, a.accuracy.low, a.accuracy.high) == pytest.approx(
            (b.accuracy.value, b.accuracy.low, b.accuracy.high), abs=1e-4)
        assert (a.diff is None) == (b.diff is None) and a.accuracy.n == b.accuracy.n
    assert got_attrs.keys() == attrs.keys()


def test_an_absent_study_says_how_to_make_it(site, tmp_path, monkeypatch):
    from demo.views import study_files

    _, client, _, _, _ = site
    monkeypatch.setattr(study_files, "shipped_root", lambda: tmp_path)  # nothing shipped (the server runs here)
    figure, info, payload = client.predict("", api_name="/probe")  # the --studies folder has no default probe
    assert figure is None and payload == {}
    assert "not shipped yet" in info and "python -m analysis binding" in info and "--studies" in info
    files = study_files.StudyFiles(shipped=tmp_path)
    for kind in ("transfer", "budget"):
        with pytest.raises(study_files.StudyMissing, match=f"python -m analysis {kind}"):
            files.default(kind)


def test_folders_outside_the_study_roots_are_refused_and_quoted_as_text(site, tmp_path):
    _, client, _, studies, _ = site
    (tmp_path / "transfer.csv").write_bytes((studies / "transfer" / "transfer.csv").read_bytes())
    _error(client, "not inside an allowed folder", str(tmp_path), api_name="/transfer")
    _error(client, "not inside an allowed folder", "../..", api_name="/budget")
    link = studies / "link-out"
    link.symlink_to(tmp_path, target_is_directory=True)  # a link inside a root, to a folder outside
    _error(client, "not inside an allowed folder", str(link), api_name="/transfer")
    _error(client, "no binding.csv in this folder", "budget", api_name="/probe")
    _error(client, "&lt;img src=x onerror=alert\\(1\\)&gt;: not a folder", "<img src=x onerror=alert(1)>",
           api_name="/budget")


# ----------------------------------------------------------------------------- the browser, at 390 px

CHROMIUM = Path("/usr/bin/chromium")
WAIT = 60_000


def test_the_studies_views_render_and_fit_a_phone_screen(site):
    """At 390 px: the top tab bar holds its three groups and Studies its four views, none behind "⋯"; each
    view opens on its default study (Probe: on a folder typed in), with its figure drawn for the phone,
    and the page never scrolls sideways."""
    if not CHROMIUM.exists():
        pytest.skip("chromium not installed at /usr/bin/chromium; .ci/run installs it")
    sync_api = pytest.importorskip("playwright.sync_api")
    from demo.tabs import TAB_GROUPS, tab_path
    from tests.test_demo_views_browser import ARGS, fits_the_width, image_src

    _, _, url, _, _ = site
    phone_px = round(3.6 * 150)  # analysis.style.PHONE
    shots = os.environ.get("UPPERSON_SHOTS")  # a folder: save a screenshot of each view there, to look at them
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 390, "height": 844})
        try:
            page.goto(url, wait_until="domcontentloaded", timeout=30_000)
            page.locator("#query textarea").wait_for(timeout=30_000)
            for g in TAB_GROUPS:
                assert page.locator(f"#tab-{g.key}-button").is_visible()
            page.locator("#tab-studies-button").click()
            for key, _ in TAB_GROUPS[2].views:
                assert page.locator(f"#tab-{key}-button").is_visible(), key  # not behind "More tabs"
            for key, figure in (("transfer", "#transfer-matrix"), ("budget", "#budget-frontier"),
                                ("probe", "#probe-figure")):
                assert tab_path(key) == ("studies", key)
                page.locator(f"#tab-{key}-button").click()
                if key == "probe":
                    page.locator("#probe-folder textarea, #probe-folder input").first.fill(PROBE_FOLDER)
                    page.locator("#probe-run").click()
                image_src(page, figure)
                img = page.locator(f"{figure} img").first
                page.wait_for_function("(i) => i.complete && i.naturalWidth > 0", arg=img.element_handle(), timeout=WAIT)
                assert img.evaluate("i => i.naturalWidth") <= phone_px  # drawn for the phone
                assert img.evaluate("i => i.getBoundingClientRect().width") <= 390
                # the download button sits above the figure, not over its title
                button = page.locator(f"{figure} button[aria-label='Download']").first
                assert button.bounding_box()["y"] + button.bounding_box()["height"] <= img.bounding_box()["y"] + 1, key
                if key == "transfer":
                    page.locator("#transfer-cell-info").get_by_text("UP-Person − full fine-tune").wait_for(timeout=WAIT)
                if key == "budget":
                    page.locator("#budget-point-info").get_by_text("Trainable parameters").wait_for(timeout=WAIT)
                page.wait_for_timeout(300)
                fits_the_width(page, 390)
                if shots:
                    page.screenshot(path=str(Path(shots) / f"{key}-390.png"), full_page=True)
            assert page.evaluate("() => window.__pwned") is None
        finally:
            browser.close()


def _cut(src: Path, dst: Path, table: str, keep: float = 0.5) -> None:
    """A copy of the study folder ``src`` whose ``table`` stops in the middle of a line (an interrupted write)."""
    import shutil

    shutil.copytree(src, dst)
    data = (dst / table).read_bytes()
    cut = int(len(data) * keep)
    assert data[cut - 1:cut] != b"\n"  # mid-line, as a cut-short file ends
    (dst / table).write_bytes(data[:cut])


def test_a_table_cut_short_is_one_message_naming_its_line(site):
    """A transfer.csv or budget.csv that ends mid-row (an interrupted or edited run) is refused with the line and
    the command to run again, not drawn with holes (transfer) nor failing inside the figure (budget)."""
    _, client, _, studies, _ = site
    for kind, table in (("transfer", "transfer.csv"), ("budget", "budget.csv")):
        name = f"cut-{kind}"
        if not (studies / name).exists():
            _cut(studies / kind, studies / name, table, keep=0.6)
        lines = (studies / name / table).read_bytes().decode().split("\n")
        _error(client, rf"{table} ends in the middle of line {len(lines)}: .*python -m analysis {kind}", name,
               api_name=f"/{kind}")


def test_a_table_missing_rows_or_numbers_is_refused(site):
    """transfer.csv cut at a line end (whole rows lost) no longer matches its summary's cells, and a row with a
    number emptied (an edited budget.csv) names its line: one message each."""
    import shutil

    _, client, _, studies, _ = site
    name = "short-transfer"
    if not (studies / name).exists():
        shutil.copytree(studies / "transfer", studies / name)
        lines = (studies / name / "transfer.csv").read_text().splitlines(keepends=True)
        (studies / name / "transfer.csv").write_text("".join(lines[:-1]))
    _error(client, r"transfer.csv has no row of .* for the cell .*python -m analysis transfer", name,
           api_name="/transfer")
    name = "emptied-budget"
    if not (studies / name).exists():
        shutil.copytree(studies / "budget", studies / name)
        df = pd.read_csv(studies / name / "budget.csv")
        df.loc[2, "R1_in_high"] = None
        df.to_csv(studies / name / "budget.csv", index=False)
    _error(client, r"budget.csv line 4: column 'R1_in_high' is empty or not a number.*python -m analysis budget", name,
           api_name="/budget")


def test_a_folder_that_is_not_there_names_the_real_command_and_where_relative_folders_are_read(site):
    """The Probe view's study is made by `python -m analysis binding` (there is no `analysis probe`), and a
    relative folder is read below the first --studies folder: the message says both."""
    _, client, _, studies, _ = site
    for api, command in (("/probe", "binding"), ("/transfer", "transfer"), ("/budget", "budget")):
        _error(client, rf"no-such-study: not a folder \(a relative folder is read below {studies}\); give the --out "
                       rf"folder of `python -m analysis {command}`", "no-such-study", api_name=api)


def test_a_per_query_or_probe_file_cut_short_is_named_as_such(site):
    """A per-query file of a cell, or binding.csv, that ends mid-line: the message names the file and says it was
    cut short (it said the cell's files "are not over the same queries", and the probe's "missing ... (None)")."""
    _, client, _, studies, _ = site
    name = "cut-per-query"
    rel = "per_query/upperson/cuhk-to-icfg/seed-1.csv"
    if not (studies / name).exists():
        _cut(studies / "transfer", studies / name, rel, keep=0.5)
    lines = (studies / name / rel).read_bytes().decode().split("\n")
    _error(client, rf"{rel} ends in the middle of line {len(lines)}: .*cut short.*python -m analysis transfer",
           name, "cuhk->icfg", api_name="/transfer_cell")
    name = "cut-probe"
    if not (studies / name).exists():
        _cut(studies / PROBE_FOLDER, studies / name, "binding.csv", keep=0.5)
    lines = (studies / name / "binding.csv").read_bytes().decode().split("\n")
    _error(client, rf"binding.csv ends in the middle of line {len(lines)}: .*cut short.*python -m analysis binding",
           name, api_name="/probe")


def test_a_study_of_another_kind_says_which_view_shows_it(site):
    """The budget folder typed in the Transfer view (and the like): the message says which view it belongs to."""
    _, client, _, _, _ = site
    _error(client, r"budget: no transfer.csv in this folder; it holds budget.csv: a study of the Budget view",
           "budget", api_name="/transfer")
    _error(client, rf"{PROBE_FOLDER}: no budget.csv in this folder; it holds binding.csv: a study of the Probe view",
           PROBE_FOLDER, api_name="/budget")
    _error(client, r"transfer: no binding.csv in this folder; it holds transfer.csv: a study of the Transfer view",
           "transfer", api_name="/probe")


def test_the_transfer_notes_fold_the_command_and_keep_it_text():
    """The command that made the study is folded (it runs to a dozen lines at 390 px, above the
    matrix), and stays text: markup in it is escaped."""
    from demo.views.transfer_view import TransferStudy, notes

    df = pd.DataFrame({"source": ["cuhk"], "target": ["icfg"]})
    study = TransferStudy(Path("assets/transfer"), df, {"command": "python -m analysis transfer <img src=x>"}, {})
    text = notes(study, given=False)
    folded = text[text.index("<details>"):]
    assert folded.startswith("<details><summary><b>Made by</b>") and folded.rstrip().endswith("</details>")
    assert "python -m analysis transfer" in folded and "<img" not in text and "&lt;img" in folded


def test_a_readme_gives_the_command_of_its_fenced_block_only():
    from demo.views.study_panel import readme_command

    assert readme_command("# x\n\nMade by:\n\n```\npython -m analysis budget --epochs 10\n```\n\non ...") == \
        "python -m analysis budget --epochs 10"
    assert readme_command("# x\n\nno command here\n") == ""
