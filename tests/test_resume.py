"""A run killed at a random moment, then started again with the same command, ends exactly as an uninterrupted one."""
import csv
import json
import random
import signal
import subprocess
import time

from conftest import IMGTRAIN, ROOT, run_cli

ARGS = ["train", "--dataset", "mnist", "--model", "cnn3", "--epochs", "4", "--train-limit", "3000", "--augment",
        "shift", "--no-report", "--set", "tensorboard=false", "--set", "early_stopping=3"]


def _history(run):
    with open(run / "history.csv") as f:
        return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in csv.DictReader(f)]


def _start_and_hit(out, sig, rng):
    """Start training, wait for the first completed epoch, then send `sig` at a random moment."""
    proc = subprocess.Popen([*IMGTRAIN, *ARGS, "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "last.keras").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 1.0))
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=300)
    return proc.returncode, stderr


def test_sigkill_then_same_command_resumes_exactly(tmp_path):
    run_cli(*ARGS, "--out", tmp_path / "whole")
    code, _ = _start_and_hit(tmp_path / "killed", signal.SIGKILL, random.Random(20261124))
    assert code == -signal.SIGKILL, "killed while training"
    assert json.loads((tmp_path / "killed" / "run.json").read_text())["status"] == "running"
    run_cli(*ARGS, "--out", tmp_path / "killed")  # the same command again
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    resumed = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    info = json.loads((tmp_path / "killed" / "run.json").read_text())
    assert info["status"] == "done" and info["resumed"], info.get("resumed")
    assert resumed["weights_sha256"] == whole["weights_sha256"]
    assert resumed["test_accuracy"] == whole["test_accuracy"] and resumed["epochs_run"] == whole["epochs_run"] == 4
    assert _history(tmp_path / "killed") == _history(tmp_path / "whole")


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tmp_path):
    out = tmp_path / "run"
    code, stderr = _start_and_hit(out, signal.SIGINT, random.Random(7))
    assert code == 2  # the signal lands within 1 s of epoch 1's end, long before epoch 4 ends
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: interrupted after ") and f"--out {out}" in lines[0]
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    changed = run_cli(*ARGS, "--lr", "0.01", "--out", out, check=False)
    assert changed.returncode == 2 and "holds an unfinished run with other settings (learning_rate)" in changed.stderr
    proc = run_cli(*ARGS, "--out", out)
    assert "test accuracy" in proc.stdout
    other = run_cli(*ARGS[:-2], "--set", "early_stopping=2", "--out", out, check=False)
    assert other.returncode == 2 and "already holds a finished run" in other.stderr
