"""`evaluate --config` is reproducible; a bad --device or output file is a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from upperson.cli import main
from upperson.runtime import resolve_device


def _evaluate_config(root, out, rng_seed: int) -> dict:
    torch.manual_seed(rng_seed)  # whatever the global RNG holds, the result must not change
    assert main(["evaluate", "--config", "toypedes", "--data-root", str(root), "--json", str(out),
                 "--set", "data.eval_batch_size=64"]) == 0
    return json.loads(out.read_text())


def test_evaluate_config_is_seeded(toypedes_root, tmp_path):
    first = _evaluate_config(toypedes_root, tmp_path / "a.json", rng_seed=1)
    second = _evaluate_config(toypedes_root, tmp_path / "b.json", rng_seed=2)
    assert {k: first[k] for k in ("R1", "mAP", "mINP")} == {k: second[k] for k in ("R1", "mAP", "mINP")}


def test_bad_device_name_is_a_value_error():
    with pytest.raises(ValueError, match="'foo' is not a device name"):
        resolve_device("foo")


def test_an_unwritable_per_query_file_is_refused_before_any_work(tmp_path, capsys):
    import os

    if os.geteuid() == 0:  # root ignores chmod
        unwritable = Path("/sys/upperson-test-unwritable")
    else:
        unwritable = tmp_path / "read-only"
        unwritable.mkdir()
        unwritable.chmod(0o555)
    # the checkpoint does not exist either: the output file must be refused first, naming it
    assert main(["evaluate", "--checkpoint", str(tmp_path / "no-checkpoint"), "--data-root", str(tmp_path),
                 "--per-query", str(unwritable / "q.csv")]) == 2
    err = capsys.readouterr().err
    assert "q.csv" in err and "checkpoint" not in err
