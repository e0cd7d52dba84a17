"""A tiny real search: 4 trials on an MNIST subset, killed (SIGKILL) during its second trial, resumed by the same
command; its best trial is the one with the best validation accuracy, and best.yaml is a config `train` accepts."""

import json
import signal
import subprocess
import time

import optuna
import pytest
import yaml
from conftest import IMGTRAIN, ROOT, run_cli

from imgtrain.core.config import load_config

BASE = {
    "dataset": "mnist",
    "model": "mlp",
    "epochs": 3,
    "train_limit": 2000,
    "test_limit": 1000,
    "tensorboard": False,
    "report": False,
}


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """(study folder, stdout of the resumed search) after a kill in trial 1 and the same command again."""
    base = tmp_path_factory.mktemp("tune")
    (base / "mnist.yaml").write_text(yaml.safe_dump(BASE))
    cmd = ["tune", base / "mnist.yaml", "--trials", "4", "--dir", base / "runs", "--name", "s"]
    study = base / "runs" / "s"
    proc = subprocess.Popen(
        [*IMGTRAIN, *map(str, cmd)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 300
    while not (study / "trial-001" / "last.keras").exists():  # trial 0 done, trial 1 one epoch in
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL and "trial   0  complete" in stdout
    return study, run_cli(*cmd).stdout, cmd


def trials(study):
    return optuna.load_study(study_name=study.name, storage=f"sqlite:///{study / 'study.db'}").get_trials()


def test_killed_search_resumes_to_four_finished_trials(search):
    study, stdout, _ = search
    ts = trials(study)
    finished = [t for t in ts if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    failed = [t for t in ts if t.state == optuna.trial.TrialState.FAIL]
    assert len(finished) == 4 and [t.number for t in failed] == [1], [(t.number, t.state) for t in ts]
    retry = next(t for t in ts if t.user_attrs.get("retry_of") == 1)
    assert retry.params == failed[0].params and retry.user_attrs["run_dir"].endswith("trial-001")
    assert json.loads((study / "trial-001" / "run.json").read_text())["resumed"] == [1], "resumed from its epoch 1"
    for t in finished:  # every trial is a normal run directory, its status saying whether the pruner stopped it
        run = json.loads((study / t.user_attrs["run_dir"].split("/")[-1] / "run.json").read_text())
        assert run["status"] == ("pruned" if t.state == optuna.trial.TrialState.PRUNED else "done")
    assert f"search {study}: 5 trials" in stdout and "1 failed" in stdout


def test_best_trial_has_the_best_validation_accuracy_and_best_yaml_is_its_config(search):
    study, stdout, _ = search
    complete = [t for t in trials(study) if t.state == optuna.trial.TrialState.COMPLETE]
    scores = {
        t.number: json.loads((study / t.user_attrs["run_dir"].split("/")[-1] / "metrics.json").read_text())[
            "best_val_accuracy"
        ]
        for t in complete
    }
    best = max(scores, key=scores.get)
    assert scores[best] == max(t.value for t in complete)
    assert f"best: trial {best}, val_accuracy {scores[best]:.4f}" in stdout
    run_dir = study / next(t for t in complete if t.number == best).user_attrs["run_dir"].split("/")[-1]
    trial_cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    best_cfg = yaml.safe_load((study / "best.yaml").read_text())
    assert best_cfg == {**trial_cfg, "out": None, "verbose": "auto"}
    assert load_config(study / "best.yaml").model_dump(mode="json") == best_cfg  # what `train --config` reads
    for name in ("tune.html", "history.png", "importances.png"):
        assert (study / name).stat().st_size > 1000, name
    page = (study / "tune.html").read_text()
    assert "5 trials: " in page and f'href="{run_dir.name}/"' in page


def test_a_finished_search_is_not_extended_and_other_settings_are_refused(search):
    study, _, cmd = search
    again = run_cli(*cmd)
    assert "trial " not in again.stdout.split("search ")[0] and len(trials(study)) == 5
    other = run_cli(*cmd, "--set", "epochs=2", check=False)
    assert other.returncode == 2 and other.stderr.strip().splitlines()[-1] == (
        f"error: {study} holds a search with other settings (epochs); run it with the same ones or choose "
        "another --name"
    )


@pytest.mark.parametrize(
    "args, expect",
    [
        (
            ["--param", "weight_decay"],
            "error: cannot search weight_decay: optimizer 'adam' has no weight decay; use adamw or sgd",
        ),
        (
            ["--param", "momentum"],
            "error: unknown search parameter 'momentum'; known: learning_rate, batch_size, "
            "width, dropout, weight_decay, schedule",
        ),
        (["--trials", "0"], "error: --trials must be at least 1 (got 0)"),
    ],
)
def test_mistakes_are_one_line_errors(tmp_path, args, expect):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(BASE))
    proc = run_cli("tune", tmp_path / "c.yaml", "--dir", tmp_path / "runs", *args, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == expect, proc.stderr[-2000:]
