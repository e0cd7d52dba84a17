"""`imgtrain bench --section audit`: the data audit as a user runs it, each in a cold process.

- MNIST: all 60,000 training images through 5 fold runs, the 10,000 test images scored by the fold models, then the
  analyses (label issues, duplicates over 70,000 embeddings, outliers): wall time, the audit's own seconds per part
  and its peak RSS.
- A streamed folder of photo-like JPEGs (10,000; 600 in quick mode): the audit's peak RSS (the larger of its own
  process and its fold runs' processes) against `imgtrain train`'s with the same recipe on the same folder, to show
  that auditing needs no more memory than training.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PHOTO_RECIPE = ["--model", "cnn_bn", "--epochs", "1", "--set", "image_size=[96,96]", "--set", "stream=true"]


def _imgtrain(args: list[str], cwd: Path) -> float:
    """Wall seconds of `imgtrain ARGS` in a fresh process; a failure raises with its last lines."""
    cmd = [sys.executable, "-c", "from imgtrain.cli import main; main()", *args]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if proc.returncode:
        raise RuntimeError(f"imgtrain {' '.join(args[:3])} failed: {proc.stderr.strip().splitlines()[-3:]}")
    return time.perf_counter() - t


def _mnist(quick: bool, tmp: Path, log: Callable[[str], object]) -> dict[str, Any]:
    size = ["--train-limit", "6000", "--set", "test_limit=2000", "--folds", "3", "--epochs", "1"] if quick else []
    wall = _imgtrain(["audit", "--dataset", "mnist", "--out", str(tmp / "mnist"), *size], tmp)
    s = json.loads((tmp / "mnist" / "summary.json").read_text())
    log(f"  mnist audit: {wall:.1f} s, peak RSS {max(s['peak_rss_mib'], s['fold_runs_peak_rss_mib']):,.0f} MiB")
    return {
        "wall_s": wall,
        "images": s["images"],
        "folds": s["folds"],
        "seconds": s["seconds"],
        "analysis_seconds": s["analysis_seconds"],
        "peak_rss_mib": max(s["peak_rss_mib"], s["fold_runs_peak_rss_mib"]),
        "issues": s["issues"],
        "duplicates": s["duplicates"],
        "test_accuracy": s["test_accuracy"],
    }


def _photos(quick: bool, tmp: Path, log: Callable[[str], object]) -> dict[str, Any]:
    from imgtrain.bench.folder import make_jpeg_folder

    n = 600 if quick else 10000
    root = make_jpeg_folder(tmp / "photos", n, signal=True)
    train_wall = _imgtrain(["train", "--dataset", f"folder:{root}", *PHOTO_RECIPE, "--out", str(tmp / "run")], tmp)
    train_rss = json.loads((tmp / "run" / "run.json").read_text())["peak_rss_mib"]
    wall = _imgtrain(["audit", "--dataset", f"folder:{root}", *PHOTO_RECIPE, "--out", str(tmp / "audit")], tmp)
    s = json.loads((tmp / "audit" / "summary.json").read_text())
    peak = max(s["peak_rss_mib"], s["fold_runs_peak_rss_mib"])
    log(f"  {n:,} streamed photos: train peak {train_rss:,.0f} MiB, audit peak {peak:,.0f} MiB")
    return {
        "images": n,
        "recipe": " ".join(PHOTO_RECIPE),
        "train_wall_s": train_wall,
        "train_peak_rss_mib": train_rss,
        "audit_wall_s": wall,
        "audit_peak_rss_mib": max(s["peak_rss_mib"], s["fold_runs_peak_rss_mib"]),  # its fold runs' processes too
        "folds": s["folds"],
    }


def audit_bench(quick: bool, log: Callable[[str], object] = print) -> dict[str, Any]:
    log("data audit (cold processes)")
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        return {"mnist": _mnist(quick, tmp, log), "photos": _photos(quick, tmp, log)}


def markdown(a: dict[str, Any]) -> list[str]:
    m, p = a["mnist"], a["photos"]
    n = sum(m["images"].values())
    parts = ", ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in m["analysis_seconds"].items())
    return [
        "",
        f"### Data audit (`imgtrain bench --section audit`, measured {a['date']} on {a['machine']['cpu']}, "
        f"{a['machine']['cores']} cores)",
        "",
        "| job | wall time | of which | peak RSS |",
        "|---|---:|---|---:|",
        f"| `imgtrain audit --dataset mnist` ({m['images']['train']:,} training images, {m['folds']} folds, "
        f"{n:,} images in all) | {m['wall_s']:.0f} s | fold runs {m['seconds']['folds']:.0f} s, predictions "
        f"{m['seconds']['predictions']:.0f} s, analyses {m['seconds']['analyses']:.0f} s ({parts}) | "
        f"{m['peak_rss_mib']:,.0f} MiB |",
        f"| `imgtrain train` on {p['images']:,} streamed photos (`{p['recipe']}`) | {p['train_wall_s']:.0f} s | one "
        f"run | {p['train_peak_rss_mib']:,.0f} MiB |",
        f"| `imgtrain audit`, the same folder and recipe | {p['audit_wall_s']:.0f} s | {p['folds']} fold runs and the "
        f"analyses | {p['audit_peak_rss_mib']:,.0f} MiB |",
    ]
