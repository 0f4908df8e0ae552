"""Command-line failures of the data, toypedes, analysis and logging paths (issue 10 B).

Each bad invocation runs as a subprocess and must give exit status 2, exactly one ``error:``
line and no traceback. The subprocesses of a module run concurrently, once per session.
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.cli_battery import assert_one_error, error_lines, run_cli
from upperson.embedded import REPO_ROOT

EMBEDDED = REPO_ROOT / "assets" / "embedded"
CKPT = ["--checkpoint", str(EMBEDDED / "upperson"), "--pretrained", str(EMBEDDED / "backbone.safetensors")]


def _unwritable(base: Path) -> Path:
    """An output folder that cannot be written: read-only, or (as root, whom permissions do
    not stop) a folder below a regular file."""
    if os.geteuid() != 0:
        ro = base / "read-only"
        ro.mkdir()
        ro.chmod(0o555)
        return ro / "out"
    blocker = base / "a-file"
    blocker.write_text("not a folder\n")
    return blocker / "out"


@pytest.fixture(scope="module")
def data(tmp_path_factory, toypedes_root):
    """Data roots: good ToyPEDES, one with an unreadable test image, one without imgs/."""
    base = tmp_path_factory.mktemp("cli-data")
    bad = base / "bad"
    shutil.copytree(toypedes_root, bad)
    broken = sorted((bad / "ToyPEDES" / "imgs" / "test").glob("*.png"))[0]
    broken.write_bytes(broken.read_bytes()[:100])
    no_imgs = base / "no-imgs"
    (no_imgs / "ToyPEDES").mkdir(parents=True)
    shutil.copy(toypedes_root / "ToyPEDES" / "reid_raw.json", no_imgs / "ToyPEDES" / "reid_raw.json")
    empty_hf = base / "hf-cache"
    empty_hf.mkdir()
    cache = base / "upperson-cache"
    cache.mkdir()
    return {"good": toypedes_root, "bad": bad, "broken": broken, "no_imgs": no_imgs, "base": base,
            "hf": empty_hf, "home": base, "cache": cache, "unwritable": _unwritable(base)}


def _cases(d: dict) -> dict[str, tuple[list, dict, str, object]]:
    """name -> (args, environment, module, what the error line must contain): the cases that
    need a fresh interpreter (the others run in-process below)."""
    ev = ["evaluate", "--dataset", "toypedes"]
    no_hub = {"HF_HUB_OFFLINE": "", "HF_HUB_CACHE": str(d["hf"]), "HOME": str(d["home"])}
    analysis_env = {"UPPERSON_CACHE": str(d["cache"])}
    return {
        "toypedes read-only out": (["toypedes", "--out", d["unwritable"], "--preset", "tiny"], {}, "upperson",
                                   ["cannot write toypedes", str(d["unwritable"])]),
        "evaluate bad image names the flag": ([*ev, *CKPT, "--data-root", d["bad"]], {}, "upperson",
                                              ["1 bad image", "--skip-bad-images"]),
        "zero-shot without local weights": (["evaluate", "--config", "zero-shot", "--data-root", d["good"],
                                             "--dataset", "toypedes"], no_hub, "upperson",
                                            ["not in the local", "--set model.pretrained=/path/to/ViT-B-16.pt"]),
        "attention empty layer range": (["attention", "--layers", "3-1", "--out", d["base"] / "f1"], analysis_env,
                                        "analysis", ["--layers", "empty range"]),
        "attention layer out of range": (["attention", "--layers", "99", "--out", d["base"] / "f2"], analysis_env,
                                         "analysis", ["--layers", "out of range", "the model has 4"]),
        "ablation bogus variant": (["ablation", "--run", "--variants", "bogus", "--runs-dir", d["base"] / "runs",
                                    "--out", d["base"] / "f3"], analysis_env, "analysis",
                                   ["unknown variant", "bogus"]),
        "analysis read-only out": (["curves", "--out", d["unwritable"]], analysis_env, "analysis",
                                   [str(d["unwritable"]), "output folder"]),
    }


@pytest.fixture(scope="module")
def results(data):
    cases = _cases(data)
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(run_cli, args, None, 240, module, env)
                   for name, (args, env, module, _) in cases.items()}
        return {name: (f.result(), cases[name][3]) for name, f in futures.items()}


CASE_NAMES = [
    "toypedes read-only out", "evaluate bad image names the flag",
    "zero-shot without local weights", "attention empty layer range", "attention layer out of range",
    "ablation bogus variant", "analysis read-only out",
]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_invocation_is_one_error_line(results, name):
    proc, must = results[name]
    assert_one_error(proc, must_contain=must)
    assert "INFO root" not in proc.stderr  # open_clip's INFO lines are hidden by default


def test_refused_commands_did_no_work(results, data):
    """Refused analysis commands generate no data (ablation used to draw 10,000 images first)
    and create no output folder."""
    assert list(data["cache"].iterdir()) == []
    assert not any((data["base"] / f"f{i}").exists() for i in range(1, 4))
    assert not (data["base"] / "runs").exists()


# in-process: the same contract (status 2, one error line) for option checks that need no model


def _one_error_in_process(capsys, main, argv, must: list[str]) -> None:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for text in must:
        assert text.lower() in lines[0].lower(), lines[0]


@pytest.mark.parametrize("argv, must", [
    (["attention", "--heads", "1,x"], ["--heads", "cannot read 'x'"]),
    (["ablation", "--epochs", "2"], ["--epochs", "only apply with --run"]),
    (["ablation", "--run", "--epochs", "-1"], ["--epochs must be at least 0"]),
    (["ablation", "--run", "--csv", "{base}/table.csv"], ["--csv", "no such file"]),
    (["umap", "--ids", "0"], ["--ids must be at least 1"]),
    (["umap", "--seed", "-3"], ["--seed must be at least 0"]),
    (["attention", "--index", "-2"], ["--index must be at least 0"]),
    (["attention", "--checkpoint", "{base}/nope"], ["--checkpoint", "no such folder"]),
    (["attention", "--image", "{base}/nope.png"], ["--image", "no such file"]),
    (["umap", "--data-root", "{base}/nope"], ["--data-root", "no such path"]),
    (["curves", "{base}/no-run"], ["no-run", "no training log"]),
    (["attention", "--dataset", "market"], ["unknown", "market"]),
    (["report", "--text-layers", "5-2"], ["--text-layers", "empty range"]),
    (["umap", "--cache-dir", "{base}/a-file/cache"], ["--cache-dir", "is a file"]),
    (["ablation", "--run", "--runs-dir", "{base}/a-file/runs"], ["--runs-dir", "is a file"]),
])
def test_analysis_option_checks(capsys, tmp_path, argv, must):
    from analysis.__main__ import main

    (tmp_path / "a-file").write_text("not a folder\n")
    argv = [a.format(base=tmp_path) for a in argv]
    _one_error_in_process(capsys, main, [*argv, "--out", tmp_path / "figs"], must)
    assert not (tmp_path / "figs").exists()


def test_evaluate_set_refuses_other_keys_with_a_checkpoint(capsys, data):
    from upperson.cli import main

    _one_error_in_process(capsys, main, ["evaluate", *CKPT, "--data-root", data["good"], "--set", "model.lora.rank=4"],
                          ["only data.skip_bad_images"])


def test_evaluate_missing_image_folder(capsys, data):
    from upperson.cli import main

    _one_error_in_process(capsys, main, ["evaluate", "--dataset", "toypedes", *CKPT, "--data-root", data["no_imgs"]],
                          ["image folder", str(data["no_imgs"] / "ToyPEDES" / "imgs"), "does not exist"])


def test_evaluate_skip_bad_images_flag_and_set_key(data, capsys, caplog):
    """--skip-bad-images and --set data.skip_bad_images=true both skip the unreadable image,
    and the summary counts it."""
    import logging

    from upperson.cli import main

    base = ["evaluate", "--dataset", "toypedes", *CKPT, "--data-root", data["bad"], "--batch-size", "64"]
    n_test = sum(1 for a in json.loads((data["good"] / "ToyPEDES" / "reid_raw.json").read_text())
                 if a["split"] == "test")
    proc = run_cli([*base, "--skip-bad-images"])  # as a user runs it
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{n_test - 1} images" in proc.stdout
    assert "skipped 1 bad image (test 1)" in proc.stderr
    assert data["broken"].name in proc.stderr
    # the config key, in-process (the same code path, without another interpreter start)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="upperson.data"):
        assert main([str(a) for a in [*base, "--set", "data.skip_bad_images=true"]]) == 0
    assert f"{n_test - 1} images" in capsys.readouterr().out
    assert "skipped 1 bad image (test 1)" in caplog.text and data["broken"].name in caplog.text


def test_third_party_info_comes_back_with_v(results):
    """open_clip logs INFO lines on the root logger: hidden by default (every case above checks
    it, and each builds a model), shown with -v."""
    loud = run_cli(["-v", "params", "--config", "toypedes"])
    assert loud.returncode == 0 and not error_lines(loud), loud.stderr
    assert "INFO root" in loud.stderr


def test_setup_logging_levels():
    """Direct check of the set-up: our packages at INFO, a third-party INFO record dropped,
    a third-party WARNING kept; DEBUG lets third-party INFO through."""
    import logging

    from upperson.logs import setup_logging

    root = logging.getLogger()
    saved = root.level, logging.getLogger("upperson").level, logging.getLogger("analysis").level
    try:
        setup_logging("INFO", ("upperson", "analysis"))
        assert not root.isEnabledFor(logging.INFO) and root.isEnabledFor(logging.WARNING)
        assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
        assert logging.getLogger("upperson.data").isEnabledFor(logging.INFO)
        assert logging.getLogger("analysis").isEnabledFor(logging.INFO)
        setup_logging(logging.DEBUG, ("upperson",))
        assert root.isEnabledFor(logging.INFO) and logging.getLogger("httpx").isEnabledFor(logging.INFO)
        with pytest.raises(ValueError, match="unknown log level"):
            setup_logging("LOUD")
    finally:
        root.setLevel(saved[0])
        logging.getLogger("upperson").setLevel(saved[1])
        logging.getLogger("analysis").setLevel(saved[2])


def test_zero_shot_tag_fails_at_once_without_network(tmp_path, monkeypatch):
    """A hub tag whose weights are not cached is refused without calling the downloader."""
    import huggingface_hub.constants
    import open_clip

    from upperson.model.backbone import BackboneError, cached_pretrained, resolve_pretrained

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("UPPERSON_ALLOW_DOWNLOAD", raising=False)

    def no_download(*a, **k):
        raise AssertionError("tried to download")

    monkeypatch.setattr(open_clip, "download_pretrained", no_download)
    with pytest.raises(BackboneError, match=r"not in the local .* --set model\.pretrained=/path/to/ViT-B-16\.pt"):
        resolve_pretrained("openai", "ViT-B-16")
    # a cached copy is found, without any network: Hugging Face's cache layout, then open_clip's
    tag = open_clip.get_pretrained_cfg("ViT-B-16", "openai")
    repo = tmp_path / "hf" / ("models--" + tag["hf_hub"].strip("/").replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "open_clip_model.safetensors").write_bytes(b"x")
    assert cached_pretrained(tag) == snap / "open_clip_model.safetensors"
    url_only = {"url": tag["url"]}
    assert cached_pretrained(url_only) is None
    clip_cache = tmp_path / ".cache" / "clip"
    clip_cache.mkdir(parents=True)
    (clip_cache / "ViT-B-16.pt").write_bytes(b"x")
    assert cached_pretrained(url_only) == clip_cache / "ViT-B-16.pt"


def test_analysis_unreadable_image_names_the_file(tmp_path):
    from analysis.attention import load_example

    bad = tmp_path / "cut.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(ValueError, match=f"{bad}: unreadable image"):
        load_example(None, None, bad, "a caption")


def test_analysis_interrupt_and_write_failure_are_one_line(capsys, monkeypatch, tmp_path):
    """Ctrl-C, and an OSError while writing (disk full), end as one error line, status 2."""
    import errno

    import analysis.__main__ as cli

    def interrupted(args, command=""):
        raise KeyboardInterrupt

    def disk_full(args, command=""):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "figs" / "curves.png"))

    monkeypatch.setattr(cli, "cmd_curves", interrupted)
    _one_error_in_process(capsys, cli.main, ["curves", "--out", tmp_path / "figs"], ["interrupted", "run the same command"])
    monkeypatch.setattr(cli, "cmd_curves", disk_full)
    _one_error_in_process(capsys, cli.main, ["curves", "--out", tmp_path / "figs"], ["no space left", "curves.png"])
