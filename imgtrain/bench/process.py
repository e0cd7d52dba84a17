"""`imgtrain bench --section process`: the speed a user feels. Cold processes, the notes' script against the
`imgtrain train` command that does the same job with default settings, wall time from exec to exit.

Three commands per job, run in turn (note, imgtrain, note with imgtrain's settings; the order rotates each round
so that drift of a shared machine hits all alike), median wall time of `repeats` rounds:
- the note's script as written (`python -m imgtrain.bench.notes JOB`: Keras only, float32, the note's batch size);
- `imgtrain train ...` with nothing but the job's dataset, model and epochs (everything else default: precision
  auto, batch size, schedule, validation split, checkpoints, TensorBoard logs, the report);
- the note's script with imgtrain's settings (`--like-imgtrain`: the same dtype and batch size), which separates
  what the settings give from what imgtrain adds (its input path, the fused BatchNorm, the loop).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SIDES = ("note", "imgtrain", "note_like_imgtrain")


def jobs(folder: Path | None, epochs: int, quick: bool) -> dict[str, dict[str, list[str]]]:
    """{job: {side: argv}}: the note's script and the matching `imgtrain train` command."""
    limit = ["--limit", "3000"] if quick else []
    imgtrain_limit = ["--set", "train_limit=3000", "--set", "test_limit=2000"] if quick else []
    note = [sys.executable, "-m", "imgtrain.bench.notes"]
    train = [sys.executable, "-m", "imgtrain.cli", "train", "--epochs", str(epochs)]
    out = {
        "seed000": {
            "note": [*note, "seed000", "--epochs", str(epochs), *limit],
            "imgtrain": [*train, "--dataset", "mnist", "--model", "cnn_small", *imgtrain_limit],
        },
        "seed004": {
            "note": [*note, "seed004", "--epochs", str(epochs), *limit],
            "imgtrain": [*train, "--dataset", "fashion_mnist", "--model", "cnn_bn", *imgtrain_limit],
        },
    }
    if (
        folder is not None
    ):  # the note's architecture for 128x128 photos; its recipe's optimizer and batch are the note's
        out["dogs_vs_cats"] = {
            "note": [*note, "dogs_vs_cats", "--epochs", str(epochs), "--folder", str(folder)],
            "imgtrain": [
                *train,
                "--dataset",
                f"folder:{folder}",
                "--model",
                "cnn_bn",
                "--augment",
                "seed004",
                "--set",
                "image_size=[128,128]",
                "--set",
                "model_options.dense=512",
                "--set",
                "model_options.conv_dropout=0.25",
            ],
        }
    for sides in out.values():
        sides["note_like_imgtrain"] = [*sides["note"], "--like-imgtrain"]
    return out


def run_once(argv: list[str], tmp: Path) -> dict[str, Any]:
    """Wall seconds and test accuracy of one cold process (imgtrain: from its metrics.json; a note: its last line)."""
    run_dir = tmp / f"run-{time.monotonic_ns()}"
    is_train = "train" in argv
    cmd = [*argv, "--out", str(run_dir)] if is_train else argv
    with open(tmp / "log", "w+") as log:
        t = time.perf_counter()
        proc = subprocess.run(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"},
        )
        wall = time.perf_counter() - t
        log.seek(0)
        text = log.read()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[1:4])} failed: {text.strip().splitlines()[-3:]}")
    if is_train:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        info = json.loads((run_dir / "run.json").read_text())
        return {
            "wall_s": wall,
            "test_accuracy": metrics["test_accuracy"],
            "precision": info["precision"]["chosen"],
            "batch_size": _config_value(run_dir, "batch_size"),
            "timings": info.get("timings", {}),
        }
    return {"wall_s": wall, **json.loads(text.strip().splitlines()[-1])}


def _config_value(run_dir: Path, key: str) -> Any:
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text())[key]


def process_bench(quick: bool, log: Callable[[str], object], repeats: int = 3, epochs: int = 5) -> dict[str, Any]:
    from imgtrain.bench.folder import make_jpeg_folder

    repeats, epochs = (1, 1) if quick else (repeats, epochs)
    out: dict[str, Any] = {"epochs": epochs, "repeats": repeats, "jobs": {}}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        folder = None
        if not quick:  # 1,200 photo-like JPEGs whose class shows in their shapes, 1,000 to train and 200 to test
            folder = tmp / "pets"
            make_jpeg_folder(folder / "train", 1000, signal=True)
            make_jpeg_folder(folder / "test", 200, seed=1, signal=True)
            out["folder"] = {"train": 1000, "test": 200, "source_size": [320, 240], "size": [128, 128]}
        for job, sides in jobs(folder, epochs, quick).items():
            runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
            for r in range(repeats):
                order = SIDES[r % 3 :] + SIDES[: r % 3]
                for side in order:
                    runs[side].append(run_once(sides[side], tmp))
                    log(
                        f"  {job} {side} round {r + 1}/{repeats}: {runs[side][-1]['wall_s']:.1f} s, test "
                        f"{runs[side][-1]['test_accuracy']:.4f}"
                    )
            out["jobs"][job] = {side: summary(runs[side], sides[side]) for side in SIDES}
            note = out["jobs"][job]["note"]["median_wall_s"]
            for side in SIDES[1:]:
                out["jobs"][job][side]["speedup"] = note / out["jobs"][job][side]["median_wall_s"]
    return out


def summary(runs: list[dict[str, Any]], argv: list[str]) -> dict[str, Any]:
    shown = ["imgtrain", *argv[3:]] if argv[2] == "imgtrain.cli" else ["python", *argv[1:]]
    return {
        "command": " ".join(shown),
        "median_wall_s": statistics.median(r["wall_s"] for r in runs),
        "median_test_accuracy": statistics.median(r["test_accuracy"] for r in runs),
        "precision": runs[0].get("precision"),
        "batch_size": runs[0].get("batch_size"),
        "runs": runs,
    }


def markdown(p: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"Whole processes, cold (measured {p['date']} on {p['machine']['cpu']}, {p['machine']['cores']} cores): "
        f"the notes' scripts against the `imgtrain train` command for the same job, {p['epochs']} epochs, "
        f"median of {p['repeats']} alternating rounds; wall time from exec to exit, test accuracy after the "
        "run:",
        "",
        "| job | the note (float32) s | imgtrain, defaults s | speed-up | the note with imgtrain's settings s "
        "| test acc: note / imgtrain / note with imgtrain's settings | imgtrain's settings |",
        "|---|---|---|---|---|---|---|",
    ]
    for job, s in p["jobs"].items():
        a, b, c = s["note"], s["imgtrain"], s["note_like_imgtrain"]
        lines.append(
            f"| {job} | {a['median_wall_s']:.1f} (batch {a['batch_size']}) | {b['median_wall_s']:.1f} | "
            f"**{b['speedup']:.2f}×** | {c['median_wall_s']:.1f} ({c['speedup']:.2f}×) | "
            f"{a['median_test_accuracy']:.4f} / {b['median_test_accuracy']:.4f} / "
            f"{c['median_test_accuracy']:.4f} | {b['precision']}, batch {b['batch_size']} |"
        )
    lines += ["", "The commands (`python -m imgtrain.bench.notes` runs the note's own Keras code):", ""]
    for job, s in p["jobs"].items():
        lines += [
            f"- {job}: `{s['note']['command']}` · `{s['imgtrain']['command']}` · `{s['note_like_imgtrain']['command']}`"
        ]
    return lines
