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
