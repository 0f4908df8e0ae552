import pytest

from upperson.config import ConfigError, ExperimentConfig, list_presets, load_config, save_config


def test_presets_load_and_inherit():
    assert {"cuhk-pedes", "icfg-pedes", "rstpreid"} <= set(list_presets())
    cuhk = load_config("cuhk-pedes")
    rst = load_config("rstpreid")
    assert cuhk.model.prefix.length == 10 and cuhk.model.lora.rank == 32
    assert rst.model.prefix.length == 2 and rst.model.lora.rank == 16 and rst.train.lr == pytest.approx(1e-4)
    assert rst.model.adapter.ratio == cuhk.model.adapter.ratio  # inherited through base:
    assert load_config("icfg-pedes").model.prefix.length == 14


def test_overrides_are_typed():
    cfg = load_config("cuhk-pedes", ["model.lora.rank=8", "model.prefix.enabled=false", "model.image_size=[96, 32]"])
    assert cfg.model.lora.rank == 8
    assert cfg.model.prefix.enabled is False
    assert cfg.model.image_size == (96, 32)


@pytest.mark.parametrize("override, fragment", [
    ("model.lora.rnak=8", "unknown key"),
    ("model.lora.rank=eight", "expected an integer"),
    ("model.adapter.placement=diagonal", "placement"),
    ("loss.name=triplet", "loss.name"),
])
def test_bad_overrides_are_named(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config("cuhk-pedes", [override])


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="cuhk-pedes"):
        load_config("cuhk")


def test_yaml_file_with_base_round_trips(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: rstpreid\nmodel:\n  lora: {rank: 4}\n")
    cfg = load_config(str(path))
    assert cfg.model.lora.rank == 4 and cfg.model.prefix.length == 2
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(str(tmp_path / "resolved.yaml"))
    assert again == cfg
    assert isinstance(again, ExperimentConfig)
