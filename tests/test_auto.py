"""The `auto` settings: precision per machine and model, batch size per training set; recorded and applied."""

from __future__ import annotations

import json

import pytest
import yaml

from imgtrain.core.auto import (
    BF16_CPU_FLAGS,
    DENSE_ONLY,
    DEPTHWISE_WHY,
    auto_batch,
    choose,
    resolve,
    resolve_batch,
    usable_flags,
)
from imgtrain.core.config import make_config

XEON_FLAGS = {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
OLD_CPU_FLAGS = {"avx2", "avx512f"}  # AVX-512 without bfloat16 dot products


@pytest.mark.parametrize(
    "model, flags, gpu, expect",
    [
        ("cnn_small", XEON_FLAGS, None, "mixed_bfloat16"),
        ("resnet9", {"avx512_bf16"}, None, "mixed_bfloat16"),
        ("cnn_small", OLD_CPU_FLAGS, None, "float32"),
        ("mlp", XEON_FLAGS, None, "float32"),  # memory-bound: bfloat16 gains nothing there (measured)
        ("mobilenet_v3_small", XEON_FLAGS, None, "float32"),  # depthwise convolutions: slower in bfloat16 on a CPU
        ("efficientnet_b0", XEON_FLAGS, None, "float32"),
        ("resnet50_v2", XEON_FLAGS, None, "mixed_bfloat16"),
        ("cnn_small", set(), ("NVIDIA H200", 9.0), "mixed_bfloat16"),
        ("mobilenet_v3_small", set(), ("NVIDIA A100", 8.0), "mixed_bfloat16"),  # the CPU exception is for CPUs
        ("cnn_small", set(), ("Tesla V100", 7.0), "mixed_float16"),
        ("cnn_small", XEON_FLAGS, ("Tesla K80", 3.7), "float32"),
    ],
)
def test_auto_chooses_per_hardware_and_model_and_says_why(model, flags, gpu, expect):
    from imgtrain.models.kinds import registered_kinds

    policy, why = choose(model, flags, gpu, registered_kinds(model, (32, 32, 3), "{}"))
    assert policy == expect
    assert why and (gpu is None or gpu[0] in why)


@pytest.mark.parametrize(
    "images, batch", [(54000, 128), (3200, 128), (3199, 64), (900, 32), (400, 16), (30, 16), (10, 10)]
)
def test_auto_batch_gives_an_epoch_25_steps_from_128_down_to_16_or_the_whole_set(images, batch):
    assert auto_batch(images)[0] == batch


def test_a_set_batch_size_is_kept_and_auto_resumes_with_what_the_run_chose(tmp_path):
    assert resolve_batch(make_config(dataset="mnist", batch_size=100), 54000)[0].batch_size == 100
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"dataset": "mnist", "batch_size": 64}))
    cfg, record = resolve_batch(make_config(dataset="mnist", out=str(tmp_path)), 54000)
    assert cfg.batch_size == 64 and record["why"] == "the batch size this unfinished run started with"


def test_an_explicit_precision_is_kept():
    cfg, record = resolve(make_config(dataset="mnist", precision="float32"))
    assert cfg.precision == "float32" and record == {
        "asked": "float32",
        "chosen": "float32",
        "why": "set in the config",
    }


def test_an_unfinished_run_resumes_in_the_precision_it_started_with(tmp_path):
    """Resuming on a machine that would choose otherwise must not change the dtype half-way through the run."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"dataset": "mnist", "precision": "mixed_float16"}))
    cfg, record = resolve(make_config(dataset="mnist", out=str(tmp_path)))
    assert cfg.precision == "mixed_float16" and record["asked"] == "auto"


def test_a_default_run_records_and_applies_this_machines_choice(mnist_run):
    """The CLI run of conftest uses the default precision: run.json says what was chosen and why, config.yaml holds
    the policy (so a replay or resume computes alike), and the saved model computes in it."""
    import keras

    out, _ = mnist_run
    expect, why = (
        resolve(make_config(dataset="mnist", model="cnn_small"))[0].precision,
        resolve(make_config(dataset="mnist", model="cnn_small"))[1]["why"],
    )
    info = json.loads((out / "run.json").read_text())
    assert info["precision"] == {"asked": "auto", "chosen": expect, "why": why}
    assert info["batch_size"] == {"asked": "auto", "chosen": 128, "why": "54000 training images: 422 steps an epoch"}
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["precision"], saved["batch_size"]) == (expect, 128)
    model = keras.models.load_model(out / "best.keras")
    conv = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    assert conv.dtype_policy.name == expect
    assert f"precision {expect}: {why}" in (out / "train.log").read_text()


@pytest.mark.parametrize(
    "cap, kept",
    [
        (None, {"avx512_bf16", "amx_bf16"}),
        ("ALL", {"avx512_bf16", "amx_bf16"}),  # oneDNN's own word for no cap
        ("AVX2", set()),  # an AVX2-only laptop: no bfloat16 kernels at all
        ("AVX512_CORE", set()),
        ("AVX512_CORE_BF16", {"avx512_bf16"}),  # an EPYC with AVX512-BF16 and no AMX
        ("avx512_core_amx", {"avx512_bf16", "amx_bf16"}),
    ],
)
def test_onednn_max_cpu_isa_takes_away_the_bfloat16_flags_it_caps(cap, kept):
    assert usable_flags(XEON_FLAGS, cap) & BF16_CPU_FLAGS == kept
    assert usable_flags(XEON_FLAGS, cap) >= XEON_FLAGS - BF16_CPU_FLAGS  # the other flags stay


def test_auto_keeps_float32_where_onednn_is_capped_below_bfloat16_and_says_so(monkeypatch):
    monkeypatch.setattr("imgtrain.core.auto.cpu_info", lambda: ("a Xeon", set(XEON_FLAGS)))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    cfg, record = resolve(make_config(dataset="mnist", model="cnn_small"))
    assert cfg.precision == "float32"
    assert record["why"] == "ONEDNN_MAX_CPU_ISA=AVX2 keeps oneDNN from this CPU's amx_bf16, avx512_bf16"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert resolve(make_config(dataset="mnist", model="cnn_small"))[0].precision == "mixed_bfloat16"


def test_bfloat16_asked_for_under_a_cap_that_rules_it_out_is_one_line(monkeypatch):
    """oneDNN capped below bfloat16 aborts in the first convolution ("could not create a primitive") after the run
    directory is written; the cap is known before."""
    from imgtrain.core.errors import ConfigError

    monkeypatch.setattr("imgtrain.core.auto.cpu_info", lambda: ("a Xeon", set(XEON_FLAGS)))
    monkeypatch.setattr("imgtrain.core.auto.gpu_capability", lambda backend: None)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    with pytest.raises(ConfigError) as err:
        resolve(make_config(dataset="mnist", model="cnn_small", precision="mixed_bfloat16"))
    assert str(err.value) == (
        "precision mixed_bfloat16 cannot run here: ONEDNN_MAX_CPU_ISA=AVX2 keeps oneDNN from this CPU's amx_bf16, "
        "avx512_bf16; use precision float32 or auto"
    )
    assert resolve(make_config(dataset="mnist", model="cnn_small", precision="float32"))[0].precision == "float32"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")  # the EPYC: bfloat16 runs
    assert resolve(make_config(dataset="mnist", model="cnn_small", precision="mixed_bfloat16"))[1]["chosen"] == (
        "mixed_bfloat16"
    )


def _saved(tmp_path, name, *layers):
    import keras

    model = keras.Sequential([keras.Input((16, 16, 4)), *layers, keras.layers.Flatten(), keras.layers.Dense(3)])
    model.save(tmp_path / f"{name}.keras")
    return tmp_path / f"{name}.keras"


def test_auto_decides_from_the_layers_a_model_contains_not_from_its_name(tmp_path):
    """A renamed or hand-built model: what counts is whether it convolves, and how (ConvNeXt's depthwise
    convolutions are Conv2D layers with groups)."""
    import keras

    from imgtrain.models.kinds import layer_kinds, saved_kinds

    dense = saved_kinds(_saved(tmp_path, "cnn_but_dense", keras.layers.Dense(8)))
    conv = saved_kinds(_saved(tmp_path, "mlp_but_conv", keras.layers.Conv2D(8, 3)))
    grouped = saved_kinds(_saved(tmp_path, "plain", keras.layers.Conv2D(8, 3, groups=4)))
    depthwise = layer_kinds(keras.Sequential([keras.Input((16, 16, 4)), keras.layers.DepthwiseConv2D(3)]))
    assert (dense, conv) == ({"InputLayer", "Dense", "Flatten"}, {"InputLayer", "Conv2D", "Dense", "Flatten"})
    assert "GroupedConv" in grouped and "DepthwiseConv2D" in depthwise
    for kinds, expect in [(dense, DENSE_ONLY), (conv, None), (grouped, DEPTHWISE_WHY), (depthwise, DEPTHWISE_WHY)]:
        policy, why = choose("any name", XEON_FLAGS, None, kinds)
        assert (policy, why) == (
            ("float32", f"any name: {expect} (this CPU has amx_bf16, avx512_bf16)")
            if expect
            else ("mixed_bfloat16", "this CPU has amx_bf16, avx512_bf16")
        )


def test_an_init_from_run_gets_the_precision_of_the_model_it_continues(tmp_path, monkeypatch):
    """A run from an earlier MLP's file, with the default model name: float32 on a CPU with bfloat16 (the MLP's
    rule), read from the file's layers without loading it."""
    import keras

    from imgtrain.models.source import model_source

    monkeypatch.setattr("imgtrain.core.auto.cpu_info", lambda: ("a Xeon", set(XEON_FLAGS)))
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    path = _saved(tmp_path, "earlier", keras.layers.Dense(8))
    cfg = make_config(dataset="mnist", init_from=str(path))
    source = model_source(cfg)
    policy, record = resolve(cfg, source.precision(cfg), lambda: source.kinds(cfg))
    assert policy.precision == "float32" and record["why"].endswith(
        f"{DENSE_ONLY} (this CPU has amx_bf16, avx512_bf16)"
    )
