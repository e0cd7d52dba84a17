"""MLflow tracking against a real `mlflow server` on localhost (started here), read back with MLflow's own client."""

import csv
import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import IMGTRAIN, ROOT, free_port, run_cli, wait_until_healthy

ARGS = [
    "train",
    "--dataset",
    "mnist",
    "--model",
    "mlp",
    "--train-limit",
    "2000",
    "--set",
    "tensorboard=false",
    "--set",
    "test_limit=2000",
    "--track",
    "mlflow",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow server` with a SQLite store and proxied artifacts, as a team would run it; its URL."""
    home = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = open(home / "server.log", "w+")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{home}/mlflow.db",
            "--artifacts-destination",
            str(home / "artifacts"),
            "--workers",
            "1",
        ],
        cwd=home,
        stdout=log,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(f"{url}/health", proc, log, "mlflow server")
    yield url
    proc.terminate()
    proc.wait(timeout=60)
    log.close()


def _client(url):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=url)


def _history(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv") as f:
        return list(csv.DictReader(f))


def test_a_run_logs_its_config_epochs_test_metrics_model_and_report(server, tmp_path):
    out = tmp_path / "run"
    proc = run_cli(
        *ARGS,
        "--epochs",
        "2",
        "--set",
        f"tracking_uri={server}",
        "--set",
        "experiment=tour",
        "--set",
        "model_options.dropout=0.3",
        "--out",
        out,
    )
    record = json.loads((out / "run.json").read_text())["mlflow"]
    assert f"mlflow: run {record['run_id']} (experiment {record['experiment_id']}) at {server}" in proc.stdout
    client = _client(server)
    [run] = client.search_runs([client.get_experiment_by_name("tour").experiment_id])
    assert run.info.run_id == record["run_id"] and run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.tags["imgtrain_run_dir"] == str(out.resolve()) and run.data.tags["imgtrain_model"] == "mlp"
    params = run.data.params
    # the resolved config: batch_size auto became 64 for 1,800 training images; nested keys dotted
    assert (params["model"], params["batch_size"], params["precision"], params["epochs"]) == (
        "mlp",
        "64",
        "float32",
        "2",
    )
    assert params["model_options.dropout"] == "0.3" and params["track"] == "mlflow"
    history = _history(out)
    for key in ("loss", "val_accuracy", "learning_rate"):
        logged = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in logged] == [0, 1]
        assert [m.value for m in logged] == pytest.approx([float(r[key]) for r in history], rel=1e-6)
    metrics = json.loads((out / "metrics.json").read_text())
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"], rel=1e-9)
    assert run.data.metrics["test_images"] == 2000
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"best.keras", "report.html", "config.yaml", "metrics.json", "history.csv", "run.json"} <= names
    got = Path(client.download_artifacts(run.info.run_id, "best.keras", str(tmp_path)))
    assert hashlib.sha256(got.read_bytes()).digest() == hashlib.sha256((out / "best.keras").read_bytes()).digest()


def test_an_unreachable_server_is_one_warning_and_the_run_goes_on(tmp_path):
    port = free_port()  # nothing listens there
    proc = run_cli(
        *ARGS,
        "--epochs",
        "1",
        "--no-report",
        "--set",
        f"tracking_uri=http://127.0.0.1:{port}",
        "--out",
        tmp_path / "run",
    )
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: mlflow")]
    assert warnings == [
        f"warning: mlflow: cannot read experiment 'imgtrain' at http://127.0.0.1:{port} ([Errno 111] "
        "Connection refused); training goes on without tracking"
    ], proc.stderr[-2000:]
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "done" and info["mlflow"]["error"] == warnings[0].removeprefix("warning: ")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test_accuracy"] > 0.7


def test_kill_9_then_the_same_command_logs_into_the_same_mlflow_run(server, tmp_path):
    out = tmp_path / "run"
    command = [
        *IMGTRAIN,
        *ARGS,
        "--epochs",
        "4",
        "--no-report",
        "--set",
        f"tracking_uri={server}",
        "--set",
        "experiment=resume",
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "last.keras").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    first = json.loads((out / "run.json").read_text())
    assert first["status"] == "running"
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=600)
    info = json.loads((out / "run.json").read_text())
    assert info["resumed"] and info["mlflow"]["run_id"] == first["mlflow"]["run_id"]
    client = _client(server)
    [run] = client.search_runs([client.get_experiment_by_name("resume").experiment_id])
    assert run.info.run_id == info["mlflow"]["run_id"] and run.info.status == "FINISHED"
    steps = sorted({m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")})
    assert steps == [0, 1, 2, 3]


def test_tune_logs_each_trial_as_a_child_of_the_search(server, tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(
        f"dataset: mnist\nmodel: mlp\nepochs: 1\ntrain_limit: 1000\nreport: false\ntensorboard: false\n"
        f"track: mlflow\ntracking_uri: {server}\nexperiment: search\n"
    )
    run_cli("tune", base, "--trials", "2", "--dir", tmp_path, "--name", "s", "--param", "learning_rate")
    client = _client(server)
    runs = client.search_runs([client.get_experiment_by_name("search").experiment_id])
    parent = next(r for r in runs if r.info.run_name == "s")
    children = sorted(
        (r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id), key=lambda r: r.info.run_name
    )
    assert [r.info.run_name for r in children] == ["trial-000", "trial-001"] and len(runs) == 3
    study = _study(tmp_path / "s")
    for child in children:
        trial = study.trials[int(child.info.run_name.removeprefix("trial-"))]
        assert float(child.data.params["learning_rate"]) == pytest.approx(trial.params["learning_rate"], rel=1e-9)
        assert child.data.metrics["best_val_accuracy"] == pytest.approx(trial.value, rel=1e-9)
    assert parent.data.tags["best.trial"] == str(study.best_trial.number)
    assert parent.data.metrics["best_value"] == pytest.approx(study.best_value, rel=1e-9)
    assert {"tune.html", "best.yaml"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}


WORKER = """
import sys
from pathlib import Path
from imgtrain.core.config import make_config
from imgtrain.training.tracking import start_search
cfg = make_config(dataset="mnist", model="mlp", track="mlflow", tracking_uri=sys.argv[1], experiment="workers")
print(start_search(cfg, Path(sys.argv[2])).run_id)
"""


def test_workers_of_one_search_starting_at_once_share_one_parent_run(server, tmp_path):
    """`tune --storage` workers share the study folder. Both workers are held at the folder's lock until both have
    started, then let go at once: without the lock each would read no mlflow.json and create its own parent run."""
    import fcntl

    study_dir = tmp_path / "s"
    study_dir.mkdir()
    with open(study_dir / ".mlflow.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        workers = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER, server, str(study_dir)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            for _ in range(2)
        ]
        _wait_for_waiters(study_dir / ".mlflow.lock", 2, workers)  # both have imported and reached the lock
    outputs = [w.communicate(timeout=120) for w in workers]
    assert all(w.returncode == 0 for w in workers), [err for _, err in outputs]
    ids = [out.strip() for out, _ in outputs]
    assert ids[0] == ids[1] == json.loads((study_dir / "mlflow.json").read_text())["run_id"]
    client = _client(server)
    runs = client.search_runs([client.get_experiment_by_name("workers").experiment_id])
    assert [r.info.run_id for r in runs] == [ids[0]]


def _wait_for_waiters(lock_file: Path, n: int, procs: list, timeout_s: float = 120) -> None:
    """Until `n` processes wait for the flock on `lock_file` (Linux lists a waiter in /proc/locks with "->")."""
    inode = f":{lock_file.stat().st_ino} "
    deadline = time.time() + timeout_s
    while sum("->" in line and inode in line for line in Path("/proc/locks").read_text().splitlines()) < n:
        assert all(p.poll() is None for p in procs) and time.time() < deadline, "the workers did not reach the lock"
        time.sleep(0.1)


def _study(study_dir: Path):
    """The search's own Optuna study, from its storage."""
    import optuna

    return optuna.load_study(study_name=None, storage=f"sqlite:///{study_dir / 'study.db'}")


def test_without_mlflow_installed_track_mlflow_is_one_line_and_writes_nothing(tmp_path):
    hide = "import sys; sys.modules['mlflow'] = None; from imgtrain.cli import main; main()"  # import mlflow fails
    proc = subprocess.run(
        [sys.executable, "-c", hide, *ARGS, "--epochs", "1", "--out", str(tmp_path / "run")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1:] == [
        "error: track 'mlflow' needs the [mlflow] extra (mlflow not installed): pip install 'imgtrain[mlflow]'; "
        "track: none turns tracking off"
    ]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("uri", ["file://{tmp}/mlruns", "{tmp}/mlruns", "file:{tmp}/mlruns"])
def test_mlflows_file_store_is_one_line_naming_the_database_and_writes_nothing(tmp_path, uri):
    uri = uri.format(tmp=tmp_path)
    proc = run_cli(*ARGS, "--set", f"tracking_uri={uri}", "--out", tmp_path / "run", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: tracking_uri {uri!r} is MLflow's file store, which MLflow 3 refuses to open; use a database, "
        f"tracking_uri=sqlite:///{tmp_path}/mlflow.db, or a tracking server, tracking_uri=http://HOST:PORT"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_store_that_cannot_open_is_one_warning_like_a_server_that_is_down(tmp_path):
    """A URI scheme MLflow has no store for: MlflowClient itself fails, before any call."""
    uri = "nosuch://x"
    proc = run_cli(*ARGS, "--epochs", "1", "--no-report", "--set", f"tracking_uri={uri}", "--out", tmp_path / "run")
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: mlflow")]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: mlflow: cannot open the tracking store at {uri} ")
    assert warnings[0].endswith("; training goes on without tracking"), warnings
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "done"


def test_a_run_without_tracking_never_imports_mlflow(tmp_path):
    """Importing MLflow costs seconds at the end of every run (and drags in tqdm's notebook warning)."""
    script = (
        "import sys; from imgtrain import train; train(dataset='mnist', model='mlp', epochs=1, train_limit=500, "
        f"verbose='quiet', tensorboard=False, out={str(tmp_path / 'run')!r}); print('mlflow' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr[-2000:]
