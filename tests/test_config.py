from pathlib import Path

import pytest

from imgtrain.core.config import TrainConfig, load_config, make_config, save_config
from imgtrain.core.errors import ConfigError


def test_defaults_and_the_demo_job():
    cfg = TrainConfig()
    assert (cfg.dataset, cfg.model, cfg.schedule, cfg.precision) == ("fashion_mnist", "cnn_bn", "onecycle", "auto")
    demo = load_config(Path(__file__).parents[1] / "configs" / "demo.yaml")
    assert (demo.dataset, demo.model, demo.precision) == ("fashion_mnist", "resnet9", "auto")


@pytest.mark.parametrize(
    "key, message",
    [
        ("epochz", "unknown config key 'epochz'; did you mean 'epochs'? (`imgtrain config` lists all)"),
        (
            "lerning_rate",
            "unknown config key 'lerning_rate'; did you mean 'learning_rate'? (`imgtrain config` lists all)",
        ),
        ("colour", "unknown config key 'colour'; valid keys: dataset, model, model_options, "),  # nothing close: all
    ],
)
def test_an_unknown_key_suggests_the_close_one_or_lists_every_key(key, message):
    with pytest.raises(ConfigError) as err:
        make_config(**{key: 3})
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    if "valid keys" in message:
        assert str(err.value).endswith("process_id, coordinator") and "epochs" in str(err.value)


@pytest.mark.parametrize(
    "key, value, expect",
    [
        ("epochs", -1, "config epochs: Input should be greater than 0 (got -1)"),
        ("epochs", "many", "config epochs"),
        ("optimizer", "adamax", "'adam', 'adamw', 'sgd' or 'rmsprop'"),
        ("schedule", "linear", "'constant', 'step', 'cosine' or 'onecycle'"),
        ("val_split", 1.5, "config val_split"),
        ("channels", 2, "config channels"),
        ("batch_size", 0, "config batch_size: 'auto' or a whole number above 0 (got 0)"),
        ("batch_size", "big", "config batch_size: 'auto' or a whole number above 0 (got 'big')"),
        ("precision", "fp8", "'auto', 'float32', 'mixed_bfloat16' or 'mixed_float16' (got 'fp8')"),
    ],
)
def test_bad_values_are_one_line_errors(key, value, expect):
    with pytest.raises(ConfigError) as err:
        make_config(**{key: value})
    assert expect in str(err.value) and "\n" not in str(err.value)


def test_inconsistent_options_are_refused():
    with pytest.raises(ConfigError, match="needs val_split > 0"):
        make_config(val_split=0)
    with pytest.raises(ConfigError, match="reduce_lr_patience needs schedule 'constant'"):
        make_config(reduce_lr_patience=2)


def test_file_then_flags_then_assignments(tmp_path):
    (tmp_path / "a.yaml").write_text("epochs: 3\nmodel: mlp\nmodel_options: {width: 32}\n")
    cfg = load_config(tmp_path / "a.yaml", {"epochs": 5, "model": None}, ["model_options.dropout=0.1", "seed=7"])
    assert (cfg.epochs, cfg.model, cfg.seed) == (5, "mlp", 7)
    assert cfg.model_options == {"width": 32, "dropout": 0.1}
    (tmp_path / "b.toml").write_text("epochs = 2\nbatch_size = 64\nimage_size = [32, 32]\n")
    cfg = load_config(tmp_path / "b.toml")
    assert (cfg.epochs, cfg.batch_size, cfg.image_size) == (2, 64, (32, 32))


def test_saved_config_loads_back_to_the_same(tmp_path):
    cfg = make_config(epochs=4, image_size=(40, 30), class_weight="balanced", model_options={"dense": 512})
    (tmp_path / "config.yaml").write_text(save_config(cfg))
    assert load_config(tmp_path / "config.yaml") == cfg


def test_bad_files_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(ConfigError, match="valid: .yaml, .yml, .toml"):
        load_config(tmp_path / "c.json")
    (tmp_path / "d.yaml").write_text("epochs: [1,\n")
    with pytest.raises(ConfigError, match="does not parse"):
        load_config(tmp_path / "d.yaml")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, {}, ["epochs"])


def test_docs_list_every_config_key():
    from pathlib import Path

    from imgtrain.core.config import describe

    doc = (Path(__file__).parents[1] / "docs" / "config.md").read_text()
    assert describe() in doc, "docs/config.md is stale: run `imgtrain config > docs/config.md`"


def test_label_smoothing_is_recorded_as_onehot_targets(tmp_path):
    """Label smoothing trains on one-hot targets, so the config (and config.yaml of a run) says label_mode onehot;
    the file loads back to the same config, so a resumed run matches its saved settings."""
    cfg = make_config(label_smoothing=0.1)
    assert cfg.label_mode == "onehot"
    assert make_config(label_smoothing=0.1, label_mode="sparse").label_mode == "onehot"
    assert make_config().label_mode == "sparse" and make_config(label_mode="onehot").label_mode == "onehot"
    (tmp_path / "config.yaml").write_text(save_config(cfg))
    assert "label_mode: onehot" in (tmp_path / "config.yaml").read_text()
    assert load_config(tmp_path / "config.yaml") == cfg
