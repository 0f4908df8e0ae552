"""Attack battery: errors and resource bombs (config YAML, argparse, annotation files, the
analysis CLI's inputs, the ToyPEDES cache). Every case is scaled down to stay fast: a small
alias bomb, lowered size limits, sparse files, in-process calls where a subprocess adds nothing."""

from __future__ import annotations

import csv
import os
import threading
from pathlib import Path

import pytest
from PIL import Image

import analysis.checks as analysis_checks
import upperson.config as config_module
from analysis.checks import check_ablation_table
from analysis.__main__ import main as analysis_main
from tests.cli_battery import assert_one_error, run_cli
from upperson.cli import main as upperson_main
from upperson.config import ConfigError, load_config
from upperson.data import load_dataset
from upperson.data.records import DatasetError
from upperson.data.toypedes import generate_toypedes
from upperson.embedded import embedded_data_root

INT64_MAX = 2**63 - 1


# ----------------------------------------------------------------------------- config YAML


def _bomb(levels: int = 4, width: int = 4) -> str:
    """A small 'billion laughs': ``width ** levels`` leaves from ``levels`` aliased lists."""
    lines = ["model:", "  name: &l0 lol"]
    for i in range(1, levels + 1):
        lines.append(f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def test_yaml_alias_bomb_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb())
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    text = str(info.value)
    assert str(path) in text and "alias" in text.lower()


def test_a_plain_alias_is_refused_too(tmp_path):
    path = tmp_path / "alias.yaml"
    path.write_text("base: toypedes\ntrain:\n  lr: &lr 0.001\n  prefix_lr: *lr\n")
    with pytest.raises(ConfigError, match="alias"):
        load_config(str(path))


def test_config_file_size_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(config_module, "MAX_CONFIG_BYTES", 64)
    path = tmp_path / "big.yaml"
    path.write_text("base: toypedes\n" + "# padding\n" * 10)
    assert path.stat().st_size > 64
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(path) in str(info.value) and "64 bytes" in str(info.value)


def test_a_sparse_config_of_2_gb_is_refused_unread(tmp_path):
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as fh:  # sparse: no disk used, and never read
        fh.truncate(2 * 1024**3)
    with pytest.raises(ConfigError, match="MB"):
        load_config(str(path))


def test_bomb_through_the_cli_is_one_error_line(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb())
    proc = run_cli(["params", "--config", str(path)], timeout=120)
    assert_one_error(proc, must_contain=[str(path), "alias"])


# ----------------------------------------------------------------------------- argparse


def _in_process(main, argv, capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``main(argv)``, argparse's SystemExit included."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line(code: int, err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "usage:" not in err
    for text in fragments:
        assert text in lines[0], (text, lines[0])


@pytest.mark.parametrize("argv, fragments", [
    (["train", "--config", "toypedes"], ("--output", "(see python -m upperson train --help)")),
    (["frobnicate"], ("frobnicate", "(see python -m upperson --help)")),
    ([], ("COMMAND", "(see python -m upperson --help)")),
    (["params", "--config", "toypedes", "--bogus"], ("--bogus",)),
])
def test_upperson_argparse_failures_are_one_error_line(argv, fragments, capsys):
    _one_line(*_in_process(upperson_main, argv, capsys)[::2], *fragments)


@pytest.mark.parametrize("argv, fragments", [
    (["nope"], ("nope", "(see python -m analysis --help)")),
    (["curves", "--bogus"], ("--bogus", "(see python -m analysis curves --help)")),
    (["attention", "--quantity", "all"], ("--quantity",)),
])
def test_analysis_argparse_failures_are_one_error_line(argv, fragments, capsys):
    _one_line(*_in_process(analysis_main, argv, capsys)[::2], *fragments)


def test_help_still_prints_the_full_usage(capsys):
    for main, argv in ((upperson_main, ["--help"]), (upperson_main, ["train", "--help"]),
                       (analysis_main, ["curves", "--help"])):
        code, out, err = _in_process(main, argv, capsys)
        assert code == 0 and out.startswith("usage:") and "--help" in out and not err


def test_argparse_failure_end_to_end():
    proc = run_cli(["train", "--config", "toypedes"], timeout=60)
    assert_one_error(proc, must_contain=["--output", "see python -m upperson train --help"])
    assert "usage:" not in proc.stderr


# ----------------------------------------------------------------------------- annotation files


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 16), (10, 20, 30)).save(path)


def _toy_root(tmp_path: Path, raw_text: str) -> Path:
    """A ToyPEDES-format data root whose reid_raw.json is ``raw_text`` (images a.png, b.png)."""
    ddir = tmp_path / "ToyPEDES"
    for name in ("a.png", "b.png"):
        _png(ddir / "imgs" / name)
    (ddir / "reid_raw.json").write_text(raw_text)
    return tmp_path


def _entry(pid, name: str) -> str:
    return f'{{"id": {pid}, "file_path": "{name}", "captions": ["a person"], "split": "test"}}'


def test_a_person_id_beyond_int64_names_file_entry_and_range(tmp_path):
    root = _toy_root(tmp_path, f"[{_entry(1, 'a.png')}, {_entry(10**30, 'b.png')}]")
    with pytest.raises(DatasetError) as info:
        load_dataset("toypedes", root)
    text = str(info.value)
    assert "reid_raw.json" in text and "entry 1" in text and str(INT64_MAX) in text


def test_the_largest_int64_id_is_accepted(tmp_path):
    root = _toy_root(tmp_path, f"[{_entry(1, 'a.png')}, {_entry(INT64_MAX, 'b.png')}]")
    pids = {r.pid for r in load_dataset("toypedes", root).split("test")}
    assert pids == {1, INT64_MAX}


def test_a_huge_id_end_to_end_is_one_error_line(tmp_path):
    root = _toy_root(tmp_path, f"[{_entry(1, 'a.png')}, {_entry(10**30, 'b.png')}]")
    proc = run_cli(["evaluate", "--config", "zero-shot", "--data-root", str(root), "--dataset", "toypedes",
                    "--set", "model.name=upp-tiny", "--set", "model.pretrained=random"], timeout=180)
    line = assert_one_error(proc, must_contain=["reid_raw.json", "entry 1"])
    assert "long long" not in line


def test_a_duplicate_json_key_names_file_entry_and_key(tmp_path):
    dup = '{"id": 2, "file_path": "b.png", "captions": ["x"], "split": "test", "id": 3}'
    root = _toy_root(tmp_path, f"[{_entry(1, 'a.png')}, {dup}]")
    with pytest.raises(DatasetError) as info:
        load_dataset("toypedes", root)
    text = str(info.value)
    assert "reid_raw.json" in text and "entry 1" in text and "'id'" in text and "twice" in text


def test_a_duplicate_jsonl_key_names_the_line(tmp_path):
    _png(tmp_path / "a.png")
    ann = tmp_path / "ann.jsonl"
    ann.write_text('{"image": "a.png", "pid": 1, "caption": "x", "split": "test", "caption": "y"}\n')
    with pytest.raises(DatasetError) as info:
        load_dataset("generic", ann)
    assert "ann.jsonl" in str(info.value) and "line 1" in str(info.value) and "'caption'" in str(info.value)


def test_extra_csv_columns_are_counted_and_named_in_the_summary(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    ann = tmp_path / "ann.csv"
    with open(ann, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "pid", "caption", "split", "camera", "weather"])
        w.writerow(["a.png", 1, "x", "test", "c1", "sun"])
        w.writerow(["b.png", 2, "y", "test", "c2", "rain"])
    data = load_dataset("generic", ann)
    assert data.note("ignored", "extra CSV columns") == 2
    summary = data.summary()
    assert "'camera'" in summary and "'weather'" in summary
    assert len(data.split("test")) == 2


@pytest.mark.parametrize("header, row, fragment", [
    (["image", "pid", "caption", "split", "pid"], ["a.png", 1, "x", "test", 2], "['pid'] more than once"),
    (["image", "pid", "caption", "split"], ["a.png", 1, "a man", " in red", "test"], "line 2: 5 cells"),
])
def test_a_csv_that_would_lose_a_cell_is_refused(tmp_path, header, row, fragment):
    _png(tmp_path / "a.png")
    ann = tmp_path / "ann.csv"
    with open(ann, "w", newline="") as fh:
        csv.writer(fh).writerows([header, row])
    with pytest.raises(DatasetError, match="ann.csv") as info:
        load_dataset("generic", ann)
    assert fragment in str(info.value)


# ----------------------------------------------------------------------------- the analysis CLI's inputs

ABLATION = Path(__file__).resolve().parent.parent / "assets" / "ablation"


def _table(tmp_path: Path, rows: int = 3, edit=None) -> Path:
    """A copy of the shipped ablation.csv's header and first ``rows`` rows, ``edit(row dict)`` applied."""
    with open(ABLATION / "ablation.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        header, data = reader.fieldnames, [row for _, row in zip(range(rows), reader)]
    if edit:
        for row in data:
            edit(row)
    folder = tmp_path / "study"
    folder.mkdir(exist_ok=True)
    with open(folder / "ablation.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, header)
        w.writeheader()
        w.writerows(data)
    return folder / "ablation.csv"


def _analysis(argv, capsys) -> tuple[int, str]:
    code, _, err = _in_process(analysis_main, argv, capsys)
    return code, err


def _ablation_argv(table: Path, out: Path) -> list[str]:
    return ["ablation", "--csv", str(table), "--out", str(out), "--resamples", "10", "--no-progress"]


def test_a_malformed_ablation_csv_names_the_file_and_line(tmp_path, capsys):
    table = _table(tmp_path)
    with open(table, "a") as fh:
        fh.write("broken,row,with,far,too,many,cells" + ",x" * 60 + "\n")
    code, err = _analysis(_ablation_argv(table, tmp_path / "out"), capsys)
    _one_line(code, err, str(table), "line 5")
    assert "tokenizing" not in err and not (tmp_path / "out").exists()


def test_an_ablation_csv_over_the_size_limit_is_refused(tmp_path, capsys, monkeypatch):
    table = _table(tmp_path)
    monkeypatch.setattr(analysis_checks, "MAX_INPUT_BYTES", 256, raising=False)
    code, err = _analysis(_ablation_argv(table, tmp_path / "out"), capsys)
    _one_line(code, err, str(table), "256 bytes")


@pytest.mark.parametrize("column, value, fragment", [
    ("variant", "../../escape", "variant"),
    ("R1", "1e300", "R1"),
    ("mAP", "nan", "mAP"),
])
def test_an_ablation_csv_with_a_hostile_value_is_refused(tmp_path, capsys, column, value, fragment):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 1, "loss": 1.0}\n')

    def edit(row):
        row["run_dir"] = str(run)
        if row["variant"] == "prefix-only":
            row[column] = value

    table = _table(tmp_path, edit=edit)
    code, err = _analysis(_ablation_argv(table, tmp_path / "a" / "b" / "out"), capsys)
    _one_line(code, err, str(table), fragment, value)
    assert not (tmp_path / "a" / "escape.jsonl").exists() and not (tmp_path / "a" / "b" / "out").exists()


def _per_query(table: Path, name: str) -> Path:
    dst = table.parent / "per_query" / name / "seed-0.csv"
    dst.parent.mkdir(parents=True, exist_ok=True)
    return dst


def test_a_per_query_link_outside_the_study_is_refused(tmp_path, capsys):
    table = _table(tmp_path)
    outside = tmp_path / "elsewhere.csv"
    outside.write_bytes((ABLATION / "per_query" / "prefix-only" / "seed-0.csv").read_bytes())
    link = _per_query(table, "prefix-only")
    link.symlink_to(outside)
    code, err = _analysis(_ablation_argv(table, tmp_path / "out"), capsys)
    _one_line(code, err, str(link), "outside")
    assert not (tmp_path / "out").exists()


def test_a_per_query_fifo_is_refused_not_waited_on(tmp_path):
    table = _table(tmp_path)
    os.mkfifo(_per_query(table, "prefix-only"))
    proc = run_cli(_ablation_argv(table, tmp_path / "out"), module="analysis", timeout=60)
    assert_one_error(proc, must_contain=["seed-0.csv", "not a regular file"])


def test_the_shipped_ablation_table_passes_the_checks(tmp_path):
    check_ablation_table(ABLATION / "ablation.csv")  # raises on any problem


# ----------------------------------------------------------------------------- the ToyPEDES cache


def _toy(out: Path) -> Path:
    return generate_toypedes(out, preset="tiny", seed=0, splits=["test"])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _first_image(folder: Path) -> Path:
    return sorted((folder / "imgs" / "test").glob("*.png"))[0]


@pytest.mark.parametrize("damage, named", [
    ("flip", "00033_0.png"),
    ("truncate", "reid_raw.json"),
    ("link", "00033_0.png"),
])
def test_a_damaged_toypedes_folder_is_not_reused(tmp_path, damage, named):
    folder = _toy(tmp_path)
    image = _first_image(folder)
    assert image.name == named or damage == "truncate"
    if damage == "flip":
        _flip_byte(image)
    elif damage == "truncate":
        raw = folder / "reid_raw.json"
        raw.write_bytes(raw.read_bytes()[:100])
    else:
        copy = tmp_path / "outside.png"
        copy.write_bytes(image.read_bytes())  # the same bytes, but a link out of the folder
        image.unlink()
        image.symlink_to(copy)
    with pytest.raises(ValueError) as info:
        generate_toypedes(tmp_path, preset="tiny", seed=0, splits=["test"])
    assert named in str(info.value) and "--overwrite" in str(info.value)


def test_the_cache_repairs_a_damaged_copy(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("UPPERSON_CACHE", str(tmp_path))
    root = embedded_data_root(preset="tiny", seed=0, splits=["test"])
    image = _first_image(root / "ToyPEDES")
    good = image.read_bytes()
    _flip_byte(image)
    with caplog.at_level("WARNING"):
        assert embedded_data_root(preset="tiny", seed=0, splits=["test"]) == root
    assert image.read_bytes() == good
    assert any(image.name in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


def test_a_folder_without_a_manifest_is_reused_with_one_warning(tmp_path, caplog):
    folder = _toy(tmp_path)
    (folder / "manifest.json").unlink()
    with caplog.at_level("WARNING"):
        assert _toy(tmp_path) == folder
    warned = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "checksum" in warned[0].getMessage()


def test_two_processes_generating_the_same_preset_agree(tmp_path):
    results, errors = [], []

    def work():
        try:
            results.append(_toy(tmp_path))
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 2 and results[0] == results[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ToyPEDES"]  # no partial folder left
    assert _toy(tmp_path) == results[0]  # and the copy that won verifies


# ----------------------------------------------------------------------------- nesting and number bombs


def test_a_deeply_nested_config_is_a_config_error(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("model:\n  name: " + "[" * 50_000 + "]" * 50_000 + "\n")
    with pytest.raises(ConfigError, match="nested"):
        load_config(str(path))


@pytest.mark.parametrize("text, fragment", [
    ("[" * 100_000 + "]" * 100_000, "nested"),
    ("[" + _entry("1" * 5000, "a.png") + "]", "4300 digits"),
])
def test_a_json_bomb_is_a_dataset_error_naming_the_file(tmp_path, text, fragment):
    root = _toy_root(tmp_path, text)
    with pytest.raises(DatasetError) as info:
        load_dataset("toypedes", root)
    assert "reid_raw.json" in str(info.value) and fragment in str(info.value)


def test_a_deeply_nested_jsonl_line_names_the_line(tmp_path):
    ann = tmp_path / "ann.jsonl"
    ann.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(DatasetError, match="line 1"):
        load_dataset("generic", ann)


def test_an_annotation_file_over_the_limit_is_refused_unread(tmp_path):
    root = _toy_root(tmp_path, "[]")
    with open(root / "ToyPEDES" / "reid_raw.json", "wb") as fh:  # sparse: no disk used, never read
        fh.truncate(5 * 1024**3)
    with pytest.raises(DatasetError, match="GB"):
        load_dataset("toypedes", root)


@pytest.mark.parametrize("limit, fragment", [("MAX_IMAGE_PIXELS", "pixels"), ("MAX_IMAGE_BYTES", "MB")])
def test_an_attention_image_over_a_limit_is_refused(tmp_path, capsys, monkeypatch, limit, fragment):
    image = tmp_path / "big.png"
    Image.new("RGB", (64, 128), (200, 10, 10)).save(image)
    monkeypatch.setattr(analysis_checks, limit, 100, raising=False)
    code, err = _analysis(["attention", "--image", str(image), "--caption", "a man", "--out", str(tmp_path / "f"),
                           "--no-progress"], capsys)
    _one_line(code, err, str(image), fragment)


def test_a_file_that_is_not_an_image_is_refused_naming_it(tmp_path, capsys):
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    code, err = _analysis(["attention", "--image", str(fake), "--caption", "a man", "--out", str(tmp_path / "f")],
                          capsys)
    _one_line(code, err, str(fake), "unreadable image")


def test_a_csv_cell_over_csvs_field_limit_names_the_file(tmp_path):
    _png(tmp_path / "a.png")
    ann = tmp_path / "ann.csv"
    ann.write_text("image,pid,caption,split\n" + f'a.png,1,"{"x" * 200_000}",test\n')
    with pytest.raises(DatasetError) as info:
        load_dataset("generic", ann)
    assert "ann.csv" in str(info.value) and "line 2" in str(info.value)
