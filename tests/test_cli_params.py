import json

from upperson.cli import main


def test_params_json_for_the_paper_preset(capsys):
    assert main(["params", "--config", "cuhk-pedes", "--random-init", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["trainable"] == 7_419_816 and out["total"] == 157_037_480
    assert round(out["percent"], 2) == 4.72
    assert sum(c["trainable"] for c in out["by_component"].values()) == out["trainable"]


def test_params_table_with_override(capsys):
    assert main(["params", "--config", "cuhk-pedes", "--random-init", "--set", "model.adapter.enabled=false"]) == 0
    out = capsys.readouterr().out
    assert "7,419,816" not in out and "adapter" in out


def test_bad_config_is_one_clean_line(capsys):
    assert main(["params", "--config", "no-such-preset"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown preset") and "Traceback" not in err
