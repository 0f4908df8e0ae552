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


# ----------------------------------------------------------------------------- issue 10: numbers, empty files


@pytest.mark.parametrize("override, key", [
    ("data.batch_size=0", "data.batch_size"),
    ("data.batch_size=-4", "data.batch_size"),
    ("data.eval_batch_size=0", "data.eval_batch_size"),
    ("data.num_workers=-1", "data.num_workers"),
    ("data.caption_mask_prob=1.5", "data.caption_mask_prob"),
    ("train.epochs=-1", "train.epochs"),
    ("train.lr=0", "train.lr"),
    ("train.lr=-0.001", "train.lr"),
    ("train.prefix_lr=0", "train.prefix_lr"),
    ("train.eps=0", "train.eps"),
    ("train.weight_decay=-1", "train.weight_decay"),
    ("train.betas=[0.9, 1.0]", "train.betas"),
    ("train.warmup_epochs=-1", "train.warmup_epochs"),
    ("train.warmup_factor=0", "train.warmup_factor"),
    ("train.eval_every=-1", "train.eval_every"),
    ("train.early_stop_patience=-1", "train.early_stop_patience"),
    ("train.max_steps_per_epoch=0", "train.max_steps_per_epoch"),
    ("loss.temperature=0", "loss.temperature"),
    ("model.pretrained=null", "model.pretrained"),
])
def test_numbers_are_validated_where_they_are_read(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("toypedes", [override])


def test_boundary_values_are_accepted():
    cfg = load_config("toypedes", ["data.batch_size=1", "train.epochs=0", "data.num_workers=0",
                                   "train.eval_every=0", "model.pretrained=random"])
    assert cfg.data.batch_size == 1 and cfg.train.epochs == 0 and cfg.model.pretrained == "random"


def test_an_empty_yaml_file_is_an_error_not_a_default(tmp_path):
    for text in ("", "\n# only a comment\n"):
        path = tmp_path / "empty.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match="empty"):
            load_config(str(path))


def test_an_older_runs_null_backbone_reads_as_random(tmp_path, caplog):
    from upperson.config import load_run_config

    path = tmp_path / "config.yaml"
    path.write_text("base: toypedes\nmodel: {pretrained: null}\n")
    with pytest.raises(ConfigError, match="random"):
        load_config(str(path))
    with caplog.at_level("WARNING"):
        assert load_run_config(path).model.pretrained == "random"
    assert "older run" in caplog.text


def test_a_key_given_twice_is_an_error_not_the_last_one(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("base: toypedes\ntrain:\n  lr: 0.001\n  epochs: 3\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match="'lr' is given twice"):
        load_config(str(path))
    path.write_text("base: toypedes\ntrain: {lr: 0.001}\n")
    assert load_config(str(path)).train.lr == pytest.approx(0.001)
