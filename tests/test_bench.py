"""The bench command. Timings never gate a test: the quick bench checks that it runs, derives its figures from
what it measured and writes them into its tables. (First in the file order, so that `make test`'s two workers
start this, the longest test, at once.)"""

import json
import statistics

import pytest
from conftest import ROOT, needs_bf16, run_cli

from imgtrain.core.auto import auto_batch, choose, cpu_flags


def _cells(table: str, first: str) -> list[str]:
    """The cells of the markdown row that starts with `first`."""
    rows = [line for line in table.splitlines() if line.startswith(f"| {first} |")]
    assert len(rows) == 1, (first, table)
    return [cell.strip() for cell in rows[0].strip().strip("|").split("|")][1:]


def _num(cell: str) -> float:
    """'3,456' -> 3456, '**1.23×**' -> 1.23, '12%' -> 12."""
    return float(cell.strip("*×% ").replace(",", ""))


@needs_bf16  # the bench times bfloat16 beside float32
def test_bench_quick_runs_and_writes_its_tables(tmp_path):
    """Timings never gate a test, but how the bench derives and tabulates them can be wrong: each rate is the images
    over the median of the epochs after the first, each ratio is the two rates it names, the FLOP counts are those
    of the seed models (worked out by hand below), and the markdown table shows the JSON's figures."""
    proc = run_cli(
        "bench", "--quick", "--section", "training", "--section", "folder", "--out", tmp_path / "b", timeout=600
    )
    result = json.loads((tmp_path / "b" / "results.json").read_text())
    table = (tmp_path / "b" / "results.md").read_text()
    assert table.strip() in proc.stdout and result["quick"] and "quick mode" in table and "transfer" not in result
    # forward FLOPs (a multiply-add counts 2), times 3 for a training step. seed000: conv 28x28x9x1x32, conv
    # 14x14x9x32x64, dense 3136x256, 256x10. seed004 ('valid' convs): 26x26x9x1x32, 11x11x9x32x64, 3x3x9x64x128,
    # dense 128x64, 64x10. Dogs-vs-Cats at 128x128x3: 126x126x27x32, 61x61x9x32x64, 28x28x9x64x128, 25088x512, 512x2.
    mflop = {
        "seed000": 3 * 2 * (28 * 28 * 9 * 32 + 14 * 14 * 9 * 32 * 64 + 3136 * 256 + 256 * 10) / 1e6,
        "seed004": 3 * 2 * (26 * 26 * 9 * 32 + 11 * 11 * 9 * 32 * 64 + 3 * 3 * 9 * 64 * 128 + 128 * 64 + 64 * 10) / 1e6,
    }
    for job, dataset in (("seed000", "mnist"), ("seed004", "fashion_mnist")):
        p = result["training"][job]
        a, b, inf = p["seed"], p["imgtrain"], p["inference"]
        assert p["dataset"] == dataset and p["train_images"] == 6000 and p["test_images"] == 1000 and p["epochs"] == 2
        assert p["mflop_per_train_image"] == pytest.approx(mflop[job], rel=1e-12)
        for side in (a, b):
            assert len(side["epoch_s"]) == 2 and min(side["epoch_s"]) > 0
            assert side["images_per_s"] == pytest.approx(6000 / statistics.median(side["epoch_s"][1:]), rel=1e-12)
        assert p["speedup"] == pytest.approx(b["images_per_s"] / a["images_per_s"], rel=1e-12)
        assert p["step_only_speedup"] == pytest.approx(b["step_only_images_per_s"] / a["images_per_s"], rel=1e-12)
        for side, peak in ((a, "float32"), (b, "bfloat16")):
            flops = side["images_per_s"] * p["mflop_per_train_image"] * 1e6
            assert side["peak_fraction"] == pytest.approx(flops / (result["matmul_gflops"][peak] * 1e9), rel=1e-12)
        c = p["seed_like_imgtrain"]  # the note's code with imgtrain's dtype and batch size
        assert (c["batch_size"], c["precision"]) == (b["batch_size"], b["precision"]) == (256, "mixed_bfloat16")
        assert c["images_per_s"] == pytest.approx(6000 / statistics.median(c["epoch_s"][1:]), rel=1e-12)
        assert p["settings_speedup"] == pytest.approx(c["images_per_s"] / a["images_per_s"], rel=1e-12)
        row = _cells(table, f"{job} ({dataset}, 2 epochs)")
        assert _num(row[0]) == pytest.approx(a["images_per_s"], abs=0.5)
        like, like_times = row[1].split(" (")
        assert _num(like) == pytest.approx(c["images_per_s"], abs=0.5)
        assert _num(like_times.rstrip(")")) == pytest.approx(p["settings_speedup"], abs=0.005)
        assert _num(row[2]) == pytest.approx(b["images_per_s"], abs=0.5)
        assert _num(row[3]) == pytest.approx(p["speedup"], abs=0.005)
        alone, times = row[4].split(" (")
        assert _num(alone) == pytest.approx(b["step_only_images_per_s"], abs=0.5)
        assert _num(times.rstrip(")")) == pytest.approx(p["step_only_speedup"], abs=0.005)
        assert [float(v) for v in row[5].split("/")] == pytest.approx(
            [a["test_accuracy"], c["test_accuracy"], b["test_accuracy"]], abs=5e-5
        )
        assert [_num(v) for v in row[6].split("/")] == pytest.approx(
            [100 * a["peak_fraction"], 100 * b["peak_fraction"]], abs=0.5
        )
        assert [_num(v) for v in row[7].split("/")] == pytest.approx(
            [inf["seed_images_per_s"], inf["imgtrain_images_per_s"]], abs=0.5
        )
    # seed 000 learns in 2 quick epochs; seed 004's BatchNorm moving averages need more steps than quick mode has
    pair = result["training"]["seed000"]
    assert pair["seed"]["test_accuracy"] > 0.8 and pair["imgtrain"]["test_accuracy"] > 0.8
    folder = result["folder"]
    assert folder["images"] == 600 and folder["size"] == [128, 128]
    assert folder["train_mflop_per_image"] == pytest.approx(
        3 * 2 * (126 * 126 * 27 * 32 + 61 * 61 * 9 * 32 * 64 + 28 * 28 * 9 * 64 * 128 + 25088 * 512 + 512 * 2) / 1e6
    )
    for label, key in (
        ("seed `ImageDataGenerator` (one epoch)", "seed_imagedatagenerator_images_per_s"),
        ("imgtrain first epoch (decode at reduced size, threads)", "imgtrain_first_epoch_images_per_s"),
        ("imgtrain next run (uint8 cache by path, size, mtime)", "imgtrain_cached_load_images_per_s"),
        (
            "imgtrain later epochs (uint8 batches in memory + seed 004's augmentation layers on each batch)",
            "imgtrain_later_epoch_images_per_s",
        ),
    ):
        assert _num(_cells(table, label)[0]) == pytest.approx(folder[key], abs=0.5)
    dogs = next(line for line in table.splitlines() if line.startswith("| training, Dogs-vs-Cats CNN"))
    assert "batch 64 both" in dogs
    seed_rate, ours = dogs.strip("| ").rsplit("|", 1)[1].split("→")
    assert [_num(seed_rate), _num(ours)] == pytest.approx(
        [folder["seed_train_images_per_s"], folder["imgtrain_train_images_per_s"]], abs=0.5
    )
    assert f"{folder['train_mflop_per_image']:.0f} MFLOP/img" in dogs
    assert f"{result['matmul_gflops']['float32']:.0f} GFLOP/s float32" in table
    assert result["peak_rss_mib"] > 100 and f"{result['peak_rss_mib']:,.0f} MiB" in table

    # the transfer section alone, into the same folder: it adds its table and keeps the others as they were
    run_cli(
        "bench",
        "--quick",
        "--section",
        "transfer",
        "--section",
        "explain",
        "--section",
        "process",
        "--out",
        tmp_path / "b",
        timeout=900,
    )
    again = json.loads((tmp_path / "b" / "results.json").read_text())
    assert again["training"] == result["training"] and again["folder"] == result["folder"]
    assert again["date"] == result["date"] and again["matmul_gflops"] == result["matmul_gflops"]
    tables = (tmp_path / "b" / "results.md").read_text()
    for line in table.splitlines():
        if line.startswith("| seed0") or line.startswith("| imgtrain"):
            assert line in tables.splitlines(), line
    _check_transfer(again["transfer"], tables)
    e = again["explain"]
    assert e["method"] == "hirescam" and 0 < e["one_image_s"] <= e["batch_64_s"]
    assert f"one image {e['one_image_s'] * 1e3:.1f} ms, a batch of 64 {e['batch_64_s'] * 1e3:.0f} ms" in tables
    _check_process(again["process"], tables)


def _check_process(p: dict, table: str) -> None:
    """Whole processes: each side ran the command it names, in the dtype and batch size it claims (the note as
    written: float32 and its own batch; with imgtrain's settings: the dtype imgtrain chose and its batch size), the
    speed-ups are the note's median wall time over the side's, and the table shows these figures."""
    assert (p["epochs"], p["repeats"], list(p["jobs"])) == (1, 1, ["seed000", "seed004"])
    for job, model, note_batch in (("seed000", "cnn_small", 100), ("seed004", "cnn_bn", 200)):
        s = p["jobs"][job]
        note, ours, like = s["note"], s["imgtrain"], s["note_like_imgtrain"]
        chosen = choose(model, cpu_flags("tensorflow"), None)[0]
        assert (note["precision"], note["batch_size"]) == ("float32", note_batch)
        batch = auto_batch(2700)[0]  # quick mode: 3,000 training images, 10 % held out for validation
        assert (ours["precision"], ours["batch_size"]) == (like["precision"], like["batch_size"]) == (chosen, batch)
        assert note["command"].startswith(f"python -m imgtrain.bench.notes {job} --epochs 1")
        assert ours["command"].startswith("imgtrain train --epochs 1 --dataset") and model in ours["command"]
        assert like["command"] == note["command"] + " --like-imgtrain"
        for side in (ours, like):
            assert side["speedup"] == pytest.approx(note["median_wall_s"] / side["median_wall_s"], rel=1e-12)
        for side in (note, ours, like):
            assert len(side["runs"]) == 1 and side["median_wall_s"] == side["runs"][0]["wall_s"] > 1
        assert ours["runs"][0]["timings"]["startup_s"] > 0  # the run's own clock reached the bench
        row = _cells(table, job)
        assert _num(row[0].split(" (")[0]) == pytest.approx(note["median_wall_s"], abs=0.05)
        assert _num(row[1]) == pytest.approx(ours["median_wall_s"], abs=0.05)
        assert _num(row[2]) == pytest.approx(ours["speedup"], abs=0.005)
        assert [float(v) for v in row[4].split("/")] == pytest.approx(
            [note["median_test_accuracy"], ours["median_test_accuracy"], like["median_test_accuracy"]], abs=5e-5
        )
        assert row[5] == f"{chosen}, batch {batch}"


def _check_transfer(t: dict, table: str) -> None:
    """The transfer section's figures: rates are the images over the median of a stage's epochs after its first,
    speed-ups are the guide's epoch time over the side's, imgtrain's first frozen epoch adds the decode and the
    features to it, and the table shows these figures."""
    n = 128
    assert (t["backbone"], t["images"], t["size"], t["batch_size"]) == ("mobilenet_v3_small", n, [96, 96], 64)
    later = {
        side: {k: statistics.median(t[side][f"{k}_epoch_s"][1:]) for k in ("frozen", "tune")}
        for side in ("guide", "float32", "mixed_bfloat16")
    }
    for side in ("guide", "float32", "mixed_bfloat16"):
        s = t[side]
        # the guide's fine-tune: its first epoch, then one before and one after imgtrain float32's run
        assert len(s["frozen_epoch_s"]) == 2 and len(s["tune_epoch_s"]) == (3 if side == "guide" else 2)
        assert min(s["frozen_epoch_s"]) > 0
        for k in ("frozen", "tune"):
            assert s[f"{k}_images_per_s"] == pytest.approx(n / later[side][k], rel=1e-12)
            assert s[f"{k}_speedup"] == pytest.approx(later["guide"][k] / later[side][k], rel=1e-12)
    for side in ("float32", "mixed_bfloat16"):
        s = t[side]
        assert s["feature_values"] == 576  # MobileNetV3Small's last convolution, pooled
        assert s["first_frozen_s"] == pytest.approx(
            n / t["decode_images_per_s"] + s["features_s"] + s["frozen_epoch_s"][0], rel=1e-12
        )
    frozen = _cells(table, "frozen stage, later epochs img/s")
    tune = _cells(table, "fine-tune stage img/s")
    assert _num(frozen[0]) == pytest.approx(t["guide"]["frozen_images_per_s"], abs=0.5)
    assert _num(tune[0]) == pytest.approx(t["guide"]["tune_images_per_s"], abs=0.05)
    for cell, speed, side in (
        (frozen[1], "frozen", "float32"),
        (frozen[2], "frozen", "mixed_bfloat16"),
        (tune[1], "tune", "float32"),
        (tune[2], "tune", "mixed_bfloat16"),
    ):
        rate, times = cell.split(" (")
        assert _num(rate) == pytest.approx(t[side][f"{speed}_images_per_s"], abs=0.5)
        assert _num(times.rstrip(")")) == pytest.approx(
            t[side][f"{speed}_speedup"], abs=0.5 if speed == "frozen" else 0.005
        )
    rss = t["peak_rss"]
    assert rss["images"] == 300 and rss["streamed"] is False and rss["peak_rss_mib"] > 100
    assert f"peak RSS {rss['peak_rss_mib']:,.0f} MiB" in table and f"{t['decode_images_per_s']:,.0f} img/s" in table


def test_bench_refuses_an_unknown_section_in_one_line_before_measuring(tmp_path):
    proc = run_cli("bench", "--section", "transfr", "--out", tmp_path / "b", check=False)
    assert proc.returncode == 2 and not (tmp_path / "b").exists()
    assert proc.stderr.strip() == (
        "error: unknown bench section 'transfr'; known: training, folder, transfer, explain, process, audit"
    )


def test_the_committed_tables_are_the_commands_own_rendering_of_its_results():
    """README's tables come from benchmarks/results.md: that file must be what `imgtrain bench` renders from
    benchmarks/results.json, not a hand edit, and README must show the audit's rows as written there."""
    from imgtrain.bench.run import markdown

    result = json.loads((ROOT / "benchmarks" / "results.json").read_text())
    table = (ROOT / "benchmarks" / "results.md").read_text()
    assert markdown(result) + "\n" == table
    readme = (ROOT / "README.md").read_text()
    audit_rows = [line for line in table.splitlines() if line.startswith("| `imgtrain audit")]
    assert len(audit_rows) == 2 and all(row in readme for row in audit_rows)
