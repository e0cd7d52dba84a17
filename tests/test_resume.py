"""A run killed at a random moment, then started again with the same command, ends exactly as an uninterrupted one."""

import csv
import errno
import json
import os
import random
import resource
import signal
import subprocess
import time

import pytest
from conftest import IMGTRAIN, ROOT, run_cli

from imgtrain.core.errors import ImgtrainError

ARGS = [
    "train",
    "--dataset",
    "mnist",
    "--model",
    "cnn3",
    "--epochs",
    "4",
    "--train-limit",
    "3000",
    "--augment",
    "shift",
    "--no-report",
    "--set",
    "tensorboard=false",
    "--set",
    "early_stopping=3",
]


def _history(run):
    with open(run / "history.csv") as f:
        return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in csv.DictReader(f)]


def _start_and_hit(out, sig, rng, args=ARGS):
    """Start training, wait for the first completed epoch, then send `sig` at a random moment."""
    proc = subprocess.Popen(
        [*IMGTRAIN, *args, "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
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
    # what a kill during a write leaves: temporary files (names as saving._temp_beside makes them) never renamed
    stale = [".history.csv.k3x9_q2a.tmp", ".last.keras.ab12cd34.keras", ".best.weights.h5.zz99yy88.weights.h5"]
    for name in stale:
        (tmp_path / "killed" / name).write_bytes(b"half")
    (tmp_path / "killed" / ".keep-me").write_bytes(b"")  # not one of ours: left alone
    run_cli(*ARGS, "--out", tmp_path / "killed")  # the same command again
    left = sorted(p.name for p in (tmp_path / "killed").iterdir() if p.name.startswith("."))
    assert left == [".keep-me"], left
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    resumed = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    info = json.loads((tmp_path / "killed" / "run.json").read_text())
    assert info["status"] == "done" and info["resumed"], info.get("resumed")
    assert resumed["weights_sha256"] == whole["weights_sha256"]
    assert resumed["test_accuracy"] == whole["test_accuracy"] and resumed["epochs_run"] == whole["epochs_run"] == 4
    assert _history(tmp_path / "killed") == _history(tmp_path / "whole")


def test_a_streamed_folder_run_killed_then_resumed_ends_bit_for_bit_as_an_uninterrupted_one(tmp_path):
    """Files decoded per batch by two threads (data/stream.py), shuffled per epoch, augmented: the resumed run must
    see the same batches in the same order with the same random draws."""
    from conftest import write_pngs

    from imgtrain import load_dataset

    ds = load_dataset("mnist", val_split=0, train_limit=1200, test_limit=200)
    write_pngs(tmp_path / "digits" / "train", ds.train.x, ds.train.y, ds.class_names)
    write_pngs(tmp_path / "digits" / "test", ds.test.x, ds.test.y, ds.class_names)
    args = [
        "train", "--dataset", f"folder:{tmp_path / 'digits'}", "--set", "stream=true", "--model", "cnn3",
        "--epochs", "4", "--batch-size", "32", "--augment", "shift", "--no-report", "--set", "tensorboard=false",
    ]  # fmt: skip
    run_cli(*args, "--out", tmp_path / "whole")
    code, _ = _start_and_hit(tmp_path / "killed", signal.SIGKILL, random.Random(20261205), args)
    assert code == -signal.SIGKILL, "killed while training"
    run_cli(*args, "--out", tmp_path / "killed")
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    resumed = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert json.loads((tmp_path / "killed" / "run.json").read_text())["resumed"]
    assert json.loads((tmp_path / "whole" / "run.json").read_text())["data"]["streamed"] is True
    assert resumed["weights_sha256"] == whole["weights_sha256"]
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


def _file_size_limit(limit: int):
    """For preexec_fn: writes past `limit` bytes fail with EFBIG (SIGXFSZ ignored), as on a full disk or quota."""

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_disk_full_is_one_line_and_keeps_what_was_written(tmp_path):
    # cnn_small's checkpoint is ~10 MB: the config, run.json and logs fit under 4 MB a file, the first model does not
    out = tmp_path / "run"
    args = [
        "train",
        "--dataset",
        "mnist",
        "--model",
        "cnn_small",
        "--epochs",
        "1",
        "--train-limit",
        "600",
        "--no-report",
        "--set",
        "tensorboard=false",
        "--out",
        str(out),
    ]
    proc = subprocess.run(
        [*IMGTRAIN, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, preexec_fn=_file_size_limit(4 << 20)
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: disk full or file too large while writing "), lines
    assert lines[0].endswith(
        f"every file already in {out} is intact: free some space and run the same command to resume"
    )
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    assert "config.yaml" in {p.name for p in out.iterdir()} and not (out / "last.keras").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no half-written files left"
    run_cli(*args)  # room again (no limit): the same command finishes the run
    assert json.loads((out / "run.json").read_text())["status"] == "done" and (out / "best.keras").is_file()


@pytest.mark.parametrize("code, raised", [(errno.ENOSPC, ImgtrainError), (errno.EACCES, PermissionError)])
def test_no_space_left_is_reported_the_same_way_and_other_os_errors_are_not(tmp_path, code, raised):
    """ENOSPC (a full disk, which the test above cannot make without mounting one) is told as disk full too; an
    error of another kind surfaces as it is, not dressed up as a full disk."""
    import keras

    from imgtrain import train

    class Fail(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise OSError(code, os.strerror(code), str(tmp_path / "r" / "last.keras"))

    with pytest.raises(raised) as err:
        train(
            dataset="mnist",
            model="mlp",
            epochs=1,
            train_limit=600,
            out=str(tmp_path / "r"),
            callbacks=[Fail()],
            tensorboard=False,
            report=False,
            verbose="quiet",
        )
    if code == errno.ENOSPC:
        assert str(err.value) == (
            f"disk full or file too large while writing {tmp_path / 'r' / 'last.keras'}; every "
            f"file already in {tmp_path / 'r'} is intact: free some space and run the same "
            "command to resume"
        )
    else:
        assert err.value.errno == errno.EACCES


def test_a_run_that_early_stopping_ended_is_not_trained_further(tmp_path):
    from imgtrain import train

    kw = dict(
        dataset="mnist",
        model="mlp",
        epochs=6,
        train_limit=1000,
        schedule="constant",
        learning_rate=1e-9,
        early_stopping=1,
        out=str(tmp_path / "r"),
        tensorboard=False,
        report=False,
        verbose="quiet",
    )
    assert train(**kw).metrics["epochs_run"] == 2
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    info["status"] = "running"  # as if killed while scoring the best model
    (tmp_path / "r" / "run.json").write_text(json.dumps(info))
    again = train(**kw)
    assert again.metrics["epochs_run"] == 2 and json.loads((tmp_path / "r" / "run.json").read_text())["resumed"] == [2]
