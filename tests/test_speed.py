"""The speed features: bfloat16 runs, presets, the folder decode cache, lr-find and a run's own timings (the bench
command: test_bench.py)."""

import json
import os
import re

import numpy as np
import pytest
from conftest import ROOT, needs_bf16, run_cli, write_pngs

from imgtrain.core.auto import choose, cpu_flags
from imgtrain.core.config import make_config
from imgtrain.core.errors import UnknownName
from imgtrain.core.presets import PRESETS, preset_config
from imgtrain.training.lr_find import batch_losses, smooth, suggest


def _table_row(doc: str, name: str) -> list[str]:
    """The cells of the one row of `doc`'s tables that starts with the preset's name in backticks."""
    rows = [line for line in (ROOT / doc).read_text().splitlines() if line.startswith(f"| `{name}` |")]
    assert len(rows) == 1, f"{doc}: {len(rows)} table rows for preset {name}"
    return [cell.strip() for cell in rows[0].strip().strip("|").split("|")]


# how docs/speed.md's recipe column writes each model option
OPTION_WORDS = {
    "dense": lambda v: f"dense {v}",
    "dropout": lambda v: f"dropout {v}",
    "bn": lambda v: "BatchNorm" if v else "",
    "widths": lambda v: "/".join(map(str, v)),
}


@pytest.mark.parametrize("name", PRESETS.names())
def test_every_preset_is_documented_with_the_recipe_and_target_it_holds(name):
    """docs/speed.md's table and README's benchmark table state each preset's target and recipe: they must be the
    ones presets.py holds, and the measured figures they show must meet that target (the docs claim they do)."""
    cfg = make_config(**preset_config(name))
    target = PRESETS.get(name)["target"]
    # what docs/speed.md says every preset does: all training images, no TensorBoard or report, precision auto
    assert cfg.val_split == 0 and cfg.train_limit is None and not cfg.tensorboard and not cfg.report
    assert cfg.precision == "auto" and cfg.dataset == name.split("-")[0].replace("fashion", "fashion_mnist")

    _, recipe, acc, wall, stated = _table_row("docs/speed.md", name)
    assert stated == f"{target['accuracy'] * 100:.1f} % in {target['seconds']} s"
    assert float(acc) >= target["accuracy"] and float(wall) <= target["seconds"], (acc, wall, target)
    assert recipe.startswith(cfg.model) and f"{cfg.epochs} epoch" in recipe
    assert np.format_float_scientific(cfg.learning_rate, trim="-", exp_digits=1) in recipe  # 0.032 -> 3.2e-2
    assert f"label smoothing {cfg.label_smoothing:g}" in recipe
    assert ("one-cycle" in recipe) == (cfg.schedule == "onecycle") and ("AdamW" in recipe) == (cfg.optimizer == "adamw")
    assert "batch" not in recipe or f"batch {cfg.batch_size}" in recipe
    if cfg.augment == "none":
        assert "shift" not in recipe and "flip" not in recipe
    else:
        assert cfg.augment in recipe  # "shift" in "shifts"
    for key, value in cfg.model_options.items():
        assert OPTION_WORDS[key](value) in recipe, (key, value, recipe)

    _, stated, median_acc, median_wall, _ = _table_row("README.md", name)
    assert stated == f"{target['accuracy']} in ≤ {target['seconds']} s"
    assert float(median_acc) >= target["accuracy"] and float(median_wall) <= target["seconds"]


def test_presets_command_lists_them_and_shows_one_as_a_config_file(tmp_path):
    listing = run_cli("presets").stdout
    assert [line.split()[0] for line in listing.splitlines()] == PRESETS.names()
    readme = [line for line in (ROOT / "README.md").read_text().splitlines() if re.match(r"\S+ +\d+\.\d% in <=", line)]
    assert readme == listing.splitlines(), "README's `imgtrain presets` block is the command's output"
    shown = run_cli("presets", "--show", "fashion-935").stdout
    (tmp_path / "f.yaml").write_text(shown)
    from imgtrain.core.config import load_config

    assert load_config(tmp_path / "f.yaml") == make_config(**preset_config("fashion-935"))


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(UnknownName, match=r"unknown preset 'mnist-100'; known: fashion-91, fashion-935, mnist-99"):
        PRESETS.get("mnist-100")
    proc = run_cli("train", "--preset", "mnist-100", check=False)
    assert proc.returncode == 2 and "unknown preset 'mnist-100'" in proc.stderr


@needs_bf16
def test_bfloat16_run_trains_and_exports_in_float32(tmp_path):
    """A mixed-precision run reaches the same floor, leaves the global policy alone, and its ONNX export
    (float32 graph) agrees with Keras."""
    import keras

    from imgtrain import train

    run = train(
        dataset="mnist",
        model="cnn_small",
        epochs=1,
        batch_size=64,
        learning_rate=3e-3,
        train_limit=6000,
        test_limit=2000,
        precision="mixed_bfloat16",
        tensorboard=False,
        report=False,
        out=str(tmp_path / "r"),
    )
    assert keras.mixed_precision.global_policy().name == "float32"
    assert run.model.get_layer("conv1").dtype_policy.name == "mixed_bfloat16"
    assert run.model.get_layer("probs").dtype_policy.name == "float32"  # softmax and loss stay float32
    assert run.metrics["test_accuracy"] >= 0.93  # measured: 0.945 bfloat16, 0.9445 float32
    from imgtrain.ship.export import export

    info = export(tmp_path / "r", "onnx", check=64)
    assert info["max_abs_diff"] < 1e-4 and info["top1_agreement"] == 1.0


@pytest.mark.accuracy
def test_mnist_99_preset_reaches_its_target(tmp_path):
    """The whole recipe as `imgtrain train --preset mnist-99` runs it (one epoch on all 60,000 images): at least
    99.0 % on the 10,000 test images. Its time is the bench's to measure, never a test's."""
    run_cli("train", "--preset", "mnist-99", "--out", tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test_images"] == 10000 and metrics["epochs_run"] == 1
    assert metrics["test_accuracy"] >= PRESETS.get("mnist-99")["target"]["accuracy"], metrics["test_accuracy"]


def test_preset_with_overrides_trains(tmp_path):
    """`--preset` gives the recipe; flags and --set still win (here: a small subset so the test is quick)."""
    proc = run_cli(
        "train",
        "--preset",
        "mnist-99",
        "--train-limit",
        "3000",
        "--epochs",
        "3",
        "--set",
        "test_limit=1000",
        "--out",
        tmp_path / "run",
    )
    cfg = (tmp_path / "run" / "config.yaml").read_text()
    chosen = choose("cnn_small", cpu_flags("tensorflow"), None)[0]  # precision auto, resolved on this machine
    assert "model: cnn_small" in cfg and f"precision: {chosen}" in cfg and "label_smoothing: 0.1" in cfg
    assert "train_limit: 3000" in cfg and "epochs: 3" in cfg
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.90, proc.stdout
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert 100 < info["peak_rss_mib"] < 4096  # this process's own peak (VmHWM), not the pytest parent's


def test_folder_decode_cache_is_used_and_invalidated(tmp_path, fashion, monkeypatch):
    from imgtrain.data import load_dataset
    from imgtrain.data.cache import wait_for_writes

    monkeypatch.setenv("IMGTRAIN_DATA", str(tmp_path / "cache"))
    x, y, names = fashion.test.x[:60], fashion.test.y[:60], fashion.class_names
    write_pngs(tmp_path / "imgs", x, y, names)
    first = load_dataset(f"folder:{tmp_path / 'imgs'}", val_split=0, test_split=0, stream=False)
    wait_for_writes()  # the cache file is written in a background thread
    cached = list((tmp_path / "cache").glob("decoded-*.npz"))
    assert len(cached) == 1
    again = load_dataset(f"folder:{tmp_path / 'imgs'}", val_split=0, test_split=0, stream=False)
    assert np.array_equal(first.train.x, again.train.x) and np.array_equal(first.train.y, again.train.y)
    assert len(list((tmp_path / "cache").glob("decoded-*.npz"))) == 1  # read back, not rebuilt
    # a changed file (new content, new mtime) is decoded afresh
    victim = sorted((tmp_path / "imgs").rglob("*.png"))[0]
    from PIL import Image

    Image.fromarray(np.full((28, 28), 255, np.uint8)).save(victim)
    os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns + 10**9))
    changed = load_dataset(f"folder:{tmp_path / 'imgs'}", val_split=0, test_split=0, stream=False)
    wait_for_writes()
    assert len(list((tmp_path / "cache").glob("decoded-*.npz"))) == 2
    assert (changed.train.x == 255).all(axis=(1, 2, 3)).sum() == 1


def test_lr_find_reconstructs_batch_losses_smooths_and_suggests_known_rates():
    losses = [2.0, 1.0, 0.5, 0.25]
    means = np.cumsum(losses) / np.arange(1, 5)
    assert np.allclose(batch_losses(list(means)), losses)
    # bias-corrected EMA: a constant stays put; [2, 0] at beta 0.5 gives 2, then (0.5*0.5*2) / (1 - 0.25) = 2/3
    assert np.allclose(smooth([3.0] * 5), 3.0) and np.allclose(smooth([2.0, 0.0], beta=0.5), [2.0, 2 / 3])
    # 51 rates a tenth of a decade apart; the loss falls as a logistic centred on 10^-2.5 (index 25, its steepest
    # point), reaches its lowest at index 40 and climbs from there. The first five points (the skipped first tenth)
    # fall faster than anything later: a suggestion that did not skip them would land there.
    lrs = np.logspace(-5, 0, 51)
    u = np.log10(lrs)
    curve = 2.3 - 2 / (1 + np.exp(-(u + 2.5) / 0.25))
    curve[:5] = [9.0, 7.0, 5.0, 3.5, 2.5]
    curve[41:] = curve[40] + 0.5 * np.arange(1, 11)
    s = suggest(lrs, curve)
    assert s["steepest"] == lrs[25] and s["minimum_div10"] == lrs[40] / 10


def test_lr_find_command_writes_plot_and_suggestion(tmp_path):
    proc = run_cli(
        "lr-find",
        "--dataset",
        "mnist",
        "--model",
        "cnn_small",
        "--batch-size",
        "64",
        "--set",
        "train_limit=3000",
        "--steps",
        "80",
        "--start",
        "1e-5",
        "--end",
        "3",
        "--out",
        tmp_path / "lr",
    )
    result = json.loads((tmp_path / "lr" / "lr_find.json").read_text())
    n = len(result["losses"])
    assert 20 <= n <= 80 and all(np.isfinite(result["losses"]))
    # batch k ran at start * (end / start) ** (k / steps); the suggestion is the one for the recorded curve
    assert np.allclose(result["lrs"], 1e-5 * (3 / 1e-5) ** (np.arange(n) / 80), rtol=1e-12)
    assert np.allclose(result["smoothed"], smooth(result["losses"]), rtol=1e-12)
    assert result["suggestion"] == suggest(np.array(result["lrs"]), np.array(result["smoothed"]))
    steep = result["lrs"].index(result["suggestion"]["steepest"])
    assert steep >= max(1, n // 10)  # past the first tenth, where the average still settles
    assert result["smoothed"][min(steep + 1, n - 1)] < result["smoothed"][steep - 1]  # falling there
    assert min(result["smoothed"]) < result["smoothed"][5] - 0.3  # the loss did fall somewhere in the range
    from PIL import Image

    with Image.open(tmp_path / "lr" / "lr_find.png") as im:
        assert im.size[0] > 400 and np.asarray(im.convert("L")).std() > 10
    assert "suggested learning rate" in proc.stdout
    bad = run_cli("lr-find", "--dataset", "mnist", "--start", "1", "--end", "0.1", "--steps", "40", check=False)
    assert bad.returncode == 2 and "lr-find needs 0 < start < end" in bad.stderr


def test_a_run_records_where_its_time_went(mnist_run):
    """run.json's timings: the process's start-up until the first training step (from /proc, so it includes the
    imports), that step, the fit, the test scoring and the report; report.html and train.log show them."""
    out, _ = mnist_run
    t = json.loads((out / "run.json").read_text())["timings"]
    assert 0.5 < t["startup_s"] < 120 and 0 < t["first_step_s"] < t["fit_s"]  # TensorFlow's import alone takes > 0.5 s
    assert t["setup_s"] < t["startup_s"]  # the run's own set-up comes after the imports
    assert 0 < t["evaluate_s"] and 0 < t["heatmaps_s"] < t["report_s"]
    assert t["total_s"] == pytest.approx(t["setup_s"] + t["fit_s"] + t["evaluate_s"], rel=1e-9)
    assert f"report written in {t['report_s']:.1f} s" in (out / "train.log").read_text()
    assert "startup_s" in (out / "report.html").read_text()
