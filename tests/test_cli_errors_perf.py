"""benchmark and doctor: bad numbers are one error line (exit 2); the JSON they write has its fields."""

from __future__ import annotations

import json

import pytest

from tests.cli_battery import assert_one_error, run_cli
from upperson.cli import main


@pytest.mark.parametrize("args,needle", [
    (["--steps", "0"], "--steps"),   # was a traceback
    (["--batch", "0"], "--batch"),   # was a silent batch of 128
])
def test_benchmark_refuses_zero_steps_and_batch(args, needle):
    assert_one_error(run_cli(["benchmark", "--config", "toypedes", "--random-init", *args]), must_contain=needle)


@pytest.mark.parametrize("args,needle", [
    (["--steps", "-3"], "--steps"),
    (["--batch", "-1"], "--batch"),
    (["--warmup", "-1"], "--warmup"),
    (["--caption-tokens", "99"], "--caption-tokens"),
    (["--variants", "up-person,fast"], "fast"),
    (["--variants", ","], "--variants"),
    (["--inference", "--metrics"], "--inference"),
    (["--json", "/nonexistent-folder/b.json"], "--json"),
])
def test_benchmark_option_errors_are_one_line(args, needle, capsys):
    assert main(["benchmark", "--config", "toypedes", "--random-init", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0]


def test_benchmark_json_has_cpu_peak_memory_per_isolated_variant(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["benchmark", "--config", "toypedes", "--random-init", "--set", "model.image_size=[48, 16]",
                 "--batch", "2", "--steps", "1", "--warmup", "0", "--variants", "up-person",
                 "--grad-checkpointing", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    row = data["variants"]["up-person"]
    assert data["isolated"] and data["grad_checkpointing"] and row["grad_checkpointing"]
    assert row["process_peak_rss_mb"] >= row["rss_before_training_mb"] > 0
    assert row["samples_per_s"] > 0 and row["images_per_s"] > 0
    assert "process_peak_rss_mb" in capsys.readouterr().out


def test_doctor_reports_on_cpu(tmp_path, capsys):
    out = tmp_path / "doctor.json"
    assert main(["doctor", "--device", "cpu", "--steps", "4", "--batch", "4", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert {"versions", "device", "sdpa", "bf16_vs_fp32", "training"} <= r.keys()
    assert r["versions"]["torch"] and r["device"]["type"] == "cpu" and r["device"]["memory_mb"] > 0
    for tower in ("image", "text"):
        row = r["sdpa"][tower]
        assert row["default_kernel"] != "none seen" and row["backends"]["math"] == "ok"
        assert r["bf16_vs_fp32"][tower]["min_cosine"] > 0.99  # bf16 rounding, see tests/test_perf_amp.py
    t = r["training"]
    assert t["loss_decreased"] and t["losses"][-1] < t["losses"][0] and len(t["losses"]) == 4
    assert t["samples_per_s"] > 0 and t["process_peak_rss_mb"] > 0
    assert "loss" in capsys.readouterr().out


@pytest.mark.parametrize("args,needle", [(["--steps", "1"], "--steps"), (["--batch", "1"], "--batch")])
def test_doctor_option_errors_are_one_line(args, needle, capsys):
    assert main(["doctor", "--device", "cpu", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0]


def test_train_flag_turns_on_checkpointing(tmp_path, toypedes_root, monkeypatch):
    import upperson.train

    configs = []
    monkeypatch.setattr(upperson.train, "train", lambda cfg, *a, **k: configs.append(cfg) or {})
    for name, flag in (("plain", []), ("checkpointed", ["--grad-checkpointing"])):
        assert main(["train", "--config", "toypedes", "--data-root", str(toypedes_root),
                     "--output", str(tmp_path / name), *flag]) == 0
    assert [c.train.grad_checkpointing for c in configs] == [False, True]
