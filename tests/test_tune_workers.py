"""Tune workers sharing one study on a real PostgreSQL server (Debian's package, started here on a localhost port):
a worker killed mid-trial has its trial retried by the other, and nothing is counted twice."""

import glob
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import IMGTRAIN, ROOT, free_port, run_cli


def _pg(name: str) -> str:
    """A PostgreSQL program: Debian keeps the server's under /usr/lib/postgresql/<version>/bin, off PATH."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name)]
    assert found[-1], f"{name} not found: make test installs Debian's postgresql package"
    return found[-1]


@pytest.fixture(scope="module")
def postgres():
    """A throwaway cluster (trust authentication, localhost only, no fsync) and an empty database; its URL."""
    home = Path(tempfile.mkdtemp(prefix="imgtrain-pg-"))  # not under pytest's 0700 folder: the server's user reads it
    as_server = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: as its own user, as Debian's package sets it up
        shutil.chown(home, "postgres", "postgres")
        as_server = ["runuser", "-u", "postgres", "--"]
    data, port = home / "data", free_port()
    subprocess.run(
        [*as_server, _pg("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    server = subprocess.Popen(
        [
            *as_server,
            _pg("postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={home}",
            "-c",
            "fsync=off",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while subprocess.run([_pg("pg_isready"), "-h", "127.0.0.1", "-p", str(port)], capture_output=True).returncode:
        assert server.poll() is None and time.time() < deadline, "postgres did not start"
        time.sleep(0.2)
    subprocess.run(
        [_pg("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "optuna"], check=True, timeout=60
    )
    yield f"postgresql://postgres@127.0.0.1:{port}/optuna"
    server.terminate()
    server.wait(timeout=60)
    shutil.rmtree(home, ignore_errors=True)


def test_two_workers_share_a_study_and_a_killed_workers_trial_is_retried_by_the_other(postgres, tmp_path):
    base = tmp_path / "base.yaml"
    # cnn_small on 3,000 images: epochs of ~1 s, so that the kill lands inside the first trial
    base.write_text(
        "dataset: mnist\nmodel: cnn_small\nepochs: 3\ntrain_limit: 3000\nreport: false\ntensorboard: false\n"
    )
    command = [
        *IMGTRAIN,
        "tune",
        str(base),
        "--trials",
        "4",
        "--dir",
        str(tmp_path),
        "--name",
        "s",
        "--param",
        "learning_rate",
        "--storage",
        postgres,
        "--heartbeat",
        "1",
    ]
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (tmp_path / "s" / "trial-000" / "last.keras").exists():  # worker 1 is in its first trial's epoch 2
        assert first.poll() is None and time.time() < deadline, "the first worker ended before its first epoch"
        time.sleep(0.02)
    second = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    out, err = second.communicate(timeout=900)
    assert second.returncode == 0, err[-3000:]

    study = optuna.load_study(study_name="s", storage=postgres)
    trials = {t.number: t for t in study.trials}
    killed = trials[0]
    assert killed.state == optuna.trial.TrialState.FAIL  # found silent by the second worker's heartbeat check
    [retry] = [t for t in study.trials if t.system_attrs.get("failed_trial") == 0]
    assert retry.params == killed.params and retry.user_attrs["run_dir"] == str(tmp_path / "s" / "trial-000")
    finished = [
        t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    ]
    assert len(finished) == 4 and len({t.user_attrs["run_dir"] for t in finished}) == 4  # none counted twice
    info = json.loads((tmp_path / "s" / "trial-000" / "run.json").read_text())
    assert info["status"] == "done" and info["resumed"]  # the retry resumed the killed run from its checkpoint
    best = yaml.safe_load((tmp_path / "s" / "best.yaml").read_text())
    head = (tmp_path / "s" / "best.yaml").read_text().splitlines()[0]
    assert f"trial {study.best_trial.number}," in head and f"{study.best_value:.4f}" in head
    assert best["learning_rate"] == pytest.approx(study.best_trial.params["learning_rate"], rel=1e-12)
    assert f"study {postgres}" in out


def test_an_unreachable_storage_is_one_line(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("dataset: mnist\nmodel: mlp\nepochs: 1\n")
    port = free_port()
    proc = run_cli(
        "tune",
        base,
        "--trials",
        "1",
        "--dir",
        tmp_path,
        "--storage",
        f"postgresql://postgres:secret@127.0.0.1:{port}/optuna",
        check=False,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith(
        f"error: cannot open the study storage postgresql://postgres:***@127.0.0.1:{port}/optuna: "
    )
    assert "secret" not in proc.stderr and "Connection refused" in lines[0]
