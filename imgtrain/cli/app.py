"""The `imgtrain` command. Keras is imported inside commands, after the run's backend is chosen."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional

import typer

from imgtrain.analysis import overlays
from imgtrain.cli import audit as cli_audit
from imgtrain.cli import catalog
from imgtrain.cli import model as cli_model
from imgtrain.core.errors import ImgtrainError

if TYPE_CHECKING:
    from imgtrain.core.config import TrainConfig
    from imgtrain.training.run import RunResult

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train, evaluate and predict image classifiers on Keras 3.",
)


@app.command()
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML or TOML file of config keys"),
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="start from a named recipe (`imgtrain presets`)"),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="mnist, fashion_mnist, folder:PATH, ..."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="a name from `imgtrain models`"),
    epochs: Optional[int] = typer.Option(None, "--epochs", "-e"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b"),
    lr: Optional[float] = typer.Option(None, "--lr", help="peak learning rate"),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", help="adam, adamw, sgd, rmsprop"),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="constant, step, cosine, onecycle"),
    augment: Optional[str] = typer.Option(None, "--augment", help="none, shift, flip, flip_shift, seed004"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    backend: Optional[str] = typer.Option(None, "--backend", help="tensorflow, jax, torch"),
    out: Optional[str] = typer.Option(
        None, "--out", "-o", help="run directory (default runs/<dataset>-<model>-<time>)"
    ),
    train_limit: Optional[int] = typer.Option(None, "--train-limit", help="use at most N training images"),
    set_: List[str] = typer.Option([], "--set", help="KEY=VALUE for any config key, e.g. model_options.dense=512"),
    no_report: bool = typer.Option(False, "--no-report", help="skip the plots and report.html"),
    distribute: Optional[str] = typer.Option(
        None, "--distribute", help="none or data-parallel (needs --backend jax; docs/distributed.md)"
    ),
    num_processes: Optional[int] = typer.Option(None, "--num-processes", help="processes in the job (data-parallel)"),
    process_id: Optional[int] = typer.Option(None, "--process-id", help="this process: 0 to N-1; 0 writes the run"),
    coordinator: Optional[str] = typer.Option(None, "--coordinator", help="HOST:PORT where process 0 listens"),
    track: Optional[str] = typer.Option(
        None, "--track", help="none or mlflow: log the run to MLflow (--set tracking_uri=...; docs/tracking.md)"
    ),
) -> None:
    """Train a model; writes a run directory with config, history, checkpoints and test metrics. The common options
    are flags; every config key (`imgtrain config`) is `--set KEY=VALUE` or a key of the --config file."""
    flags = dict(
        dataset=dataset,
        model=model,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=lr,
        optimizer=optimizer,
        schedule=schedule,
        augment=augment,
        seed=seed,
        backend=backend,
        out=out,
        train_limit=train_limit,
        report=False if no_report else None,
        distribute=distribute,
        num_processes=num_processes,
        process_id=process_id,
        coordinator=coordinator,
        track=track,
    )
    cfg = _config(config, flags, set_, preset)
    from imgtrain.data import parse_name
    from imgtrain.models import MODELS
    from imgtrain.models.source import model_source

    model_source(cfg)  # a run of a model built in Python: its config alone cannot rebuild the model
    parse_name(cfg.dataset), MODELS.get(cfg.model)  # fail on unknown names before any work
    from imgtrain.training.run import train as run_training

    _print_result(run_training(cfg))


def _print_result(result: RunResult) -> None:
    """What `imgtrain train` prints at the end: where the run is, its test score, report and MLflow run."""
    if not result.chief:  # its own peak memory: process 0's is in run.json
        from imgtrain.core.resources import peak_rss_mib

        peak = peak_rss_mib()
        typer.echo(
            f"done; peak RSS of this process {f'{peak:,.0f} MiB' if peak else 'unknown'}; process 0 writes "
            f"the run directory: {result.run_dir}"
        )
        return
    m = result.metrics
    typer.echo(f"run directory: {result.run_dir}")
    if "test_accuracy" in m:
        typer.echo(
            f"test accuracy: {m['test_accuracy']:.4f}   test loss: {m['test_loss']:.4f}   "
            f"({m['test_images']} test images, best epoch {m.get('best_epoch', '-')}/{m['epochs_run']})"
        )
    if (result.run_dir / "report.html").is_file():
        typer.echo(f"report: {result.run_dir / 'report.html'}")
    tracked = json.loads((result.run_dir / "run.json").read_text()).get("mlflow", {})
    if tracked.get("run_id"):
        typer.echo(
            f"mlflow: run {tracked['run_id']} (experiment {tracked['experiment_id']}) at {tracked['tracking_uri']}"
        )


def _config(
    config: Optional[Path], flags: dict[str, Any] | None, assignments: List[str], preset: Optional[str] = None
) -> TrainConfig:
    """The run's TrainConfig (preset, then file, flags and --set), with its Keras backend selected."""
    from imgtrain.core.backend import use_backend
    from imgtrain.core.config import load_config

    cfg = load_config(config, flags, assignments, base=_preset(preset))
    use_backend(cfg.backend)
    return cfg


def _preset(name: Optional[str]) -> dict[str, Any]:
    if name is None:
        return {}
    from imgtrain.core.presets import preset_config

    return preset_config(name)


@app.command()
def bench(
    quick: bool = typer.Option(False, "--quick", help="small sizes (~2 min): checks that it all runs"),
    presets_: List[str] = typer.Option(
        [], "--preset", help="also time cold `train --preset NAME` runs (repeatable; 'all' for every preset)"
    ),
    repeats: int = typer.Option(3, "--repeats", help="runs per preset; the table gives the median"),
    sections: List[str] = typer.Option(
        [],
        "--section",
        help="measure only these parts (repeatable): training, "
        "folder, transfer, explain, process, audit; the others' "
        "tables are kept from OUT/results.json",
    ),
    out: Path = typer.Option(Path("benchmarks"), "--out", "-o", help="folder for results.json and results.md"),
) -> None:
    """Seed code against imgtrain on the seed models (training and inference img/s, accuracy), the folder
    pipeline, fine-tuning a backbone against Keras' transfer-learning guide, and whole cold processes: the notes'
    scripts against `imgtrain train`."""
    from imgtrain.bench.run import SECTIONS, markdown, merged, run_bench
    from imgtrain.core.backend import use_backend
    from imgtrain.core.errors import UnknownName
    from imgtrain.core.presets import PRESETS
    from imgtrain.core.saving import atomic_write, atomic_write_json

    for name in sections:
        if name not in SECTIONS:
            raise UnknownName("bench section", name, list(SECTIONS))
    names = PRESETS.names() if "all" in presets_ else presets_
    for name in names:
        PRESETS.get(name)  # unknown names fail before anything runs
    use_backend("tensorflow")  # the seeds' backend, and the fastest on CPU
    result = run_bench(
        quick=quick,
        presets=names,
        repeats=repeats,
        log=lambda m: typer.echo(m, err=True),
        sections=sections or SECTIONS,
    )
    if sections and (out / "results.json").is_file():
        result = merged(result, json.loads((out / "results.json").read_text()))
    table = markdown(result)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", result)
    atomic_write(out / "results.md", table + "\n")
    typer.echo(table)
    typer.echo(f"\nwritten: {out / 'results.json'}, {out / 'results.md'}")


@app.command("lr-find")
def lr_find_cmd(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML or TOML file of config keys"),
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="start from a named recipe"),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d"),
    model: Optional[str] = typer.Option(None, "--model", "-m"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b"),
    optimizer: Optional[str] = typer.Option(None, "--optimizer"),
    set_: List[str] = typer.Option([], "--set", help="KEY=VALUE for any config key"),
    start: float = typer.Option(1e-6, "--start", help="first learning rate"),
    end: float = typer.Option(1.0, "--end", help="last learning rate"),
    steps: int = typer.Option(200, "--steps", help="batches, one learning rate each"),
    out: Path = typer.Option(Path("runs/lr-find"), "--out", "-o", help="folder for lr_find.png and lr_find.json"),
) -> None:
    """Learning-rate range test: loss against a rising learning rate, with a suggested rate and its plot."""
    if steps < 20:
        raise ImgtrainError(f"--steps must be at least 20 (got {steps}): the smoothed loss needs them")
    flags = dict(dataset=dataset, model=model, batch_size=batch_size, optimizer=optimizer)
    cfg = _config(config, flags, set_, preset)
    from imgtrain.training.lr_find import lr_find

    result = lr_find(cfg, start=start, end=end, steps=steps, out=out)
    s = result["suggestion"]
    typer.echo(f"{len(result['losses'])} batches, learning rate {result['lrs'][0]:.1e} -> {result['lrs'][-1]:.1e}")
    typer.echo(
        f"suggested learning rate: {s['steepest']:.2g} (steepest descent); {s['minimum_div10']:.2g} "
        f"(a tenth of the minimum)"
    )
    typer.echo(f"plot: {out / 'lr_find.png'}")


@app.command()
def tune(
    config: Path = typer.Argument(..., help="YAML or TOML config that every trial starts from"),
    trials: int = typer.Option(
        20, "--trials", "-n", help="finished (complete or pruned) trials the search holds at the end"
    ),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="seconds after which no new trial starts"),
    name: Optional[str] = typer.Option(
        None, "--name", help="the search's folder under --dir (default tune-<dataset>-<model>)"
    ),
    folder: Path = typer.Option(Path("runs"), "--dir", help="folder that holds the search's folder"),
    params: List[str] = typer.Option(
        [],
        "--param",
        help="search only this parameter (repeatable): learning_rate, "
        "batch_size, width, dropout, weight_decay, schedule",
    ),
    set_: List[str] = typer.Option([], "--set", help="KEY=VALUE for any config key of the base config"),
    storage: Optional[str] = typer.Option(
        None,
        "--storage",
        help="a database URL (postgresql://USER@HOST/DB) that "
        "any number of tune workers share; default: "
        "SQLite in the search's folder, one worker",
    ),
    heartbeat: float = typer.Option(
        30.0,
        "--heartbeat",
        help="with --storage: seconds between a worker's heartbeats; a trial silent for twice this is retried",
    ),
) -> None:
    """Search hyper-parameters with Optuna: each trial a run directory, the study in SQLite (a killed search
    resumes) or on a database server that many workers share, bad trials pruned per epoch; writes best.yaml and
    tune.html."""
    from imgtrain.core.extras import require

    require("tune", "imgtrain tune")
    if storage and storage.startswith("postgresql"):
        require("postgres", "--storage postgresql://...")
    cfg = _config(config, None, set_)
    from imgtrain.scale.tune import tune as run_search

    def line(row: dict[str, Any]) -> None:
        values = "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["params"].items())
        value = f"{row['value']:.4f}" if row["value"] is not None else "-"
        seconds = f"{row['seconds']:.0f} s" if row["seconds"] is not None else "-"
        typer.echo(
            f"trial {row['number']:>3}  {row['state']:<8}  {cfg.monitor} {value}  {values}  {seconds}  {row['run_dir']}"
        )

    result = run_search(
        cfg, trials, timeout, name, folder, params, progress=line, storage=storage, heartbeat_s=heartbeat
    )
    from imgtrain.scale.storage import shown

    counts = {s: sum(r["state"] == s for r in result.trials) for s in ("complete", "pruned", "fail")}
    where = shown(storage) if storage else result.study_dir / "study.db"
    typer.echo(
        f"search {result.study_dir}: {len(result.trials)} trials ({counts['complete']} complete, "
        f"{counts['pruned']} pruned, {counts['fail']} failed), study {where}"
    )
    if result.best:
        typer.echo(
            f"best: trial {result.best['number']}, {cfg.monitor} {result.best['value']:.4f}, {result.best['run_dir']}"
        )
        typer.echo(f"best config: {result.best_config}   train it: imgtrain train --config {result.best_config}")
    typer.echo(f"report: {result.report}")


@app.command()
def replay(
    run_dir: Path = typer.Argument(..., help="a finished run directory"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="where the replay goes (default RUN_DIR-replay)"),
) -> None:
    """Train a run again from its config.yaml and check that weights and test metrics come out identical."""
    from imgtrain.analysis.report import read_run

    run = read_run(run_dir)
    if run.info.get("status") != "done" or "weights_sha256" not in run.metrics:
        raise ImgtrainError(
            f"{run_dir}: not a finished run with a weights hash to compare (status {run.info.get('status')!r})"
        )
    cfg = _config(None, {**run.config, "out": str(out or f"{str(run_dir).rstrip('/')}-replay")}, [])
    from imgtrain.training.run import train as run_training

    again = run_training(cfg).metrics
    keys = ["weights_sha256", "test_accuracy", "test_loss", "best_val_accuracy", "epochs_run"]
    differ = [k for k in keys if again.get(k) != run.metrics.get(k)]
    for k in keys:
        typer.echo(f"{k:<18} {str(run.metrics.get(k)):<66} {'=' if k not in differ else '≠'} {again.get(k)}")
    if differ:
        raise ImgtrainError(
            f"the replay in {cfg.out} differs in {', '.join(differ)} (same versions? same data? see run.json of each)"
        )
    typer.echo(f"identical: {cfg.out}")


@app.command()
def report(run_dir: Path = typer.Argument(..., help="a run directory")) -> None:
    """(Re)write the plots and report.html of a run."""
    from imgtrain.analysis.report import read_run, write_report

    read_run(run_dir)  # not a run directory: one line before Keras loads
    cli_model.backend_of(run_dir)
    typer.echo(f"report: {write_report(run_dir)}")


runs_app = typer.Typer(help="Past runs: list them, compare them.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")


@runs_app.command("list")
def runs_list(
    folders: List[Path] = typer.Argument(None, help="folders of run directories, or run directories (default: runs)"),
    folder: Optional[Path] = typer.Option(None, "--dir", help="the same as one FOLDER argument"),
) -> None:
    """A table of the runs in each FOLDER (runs written with --out anywhere): dataset, model, epochs, best
    validation and test accuracy, time."""
    from imgtrain.analysis.runs import find_runs, format_runs

    places = [*(folders or []), *([folder] if folder else [])] or [Path("runs")]
    typer.echo(format_runs([run for place in places for run in find_runs(place)]))


@runs_app.command("compare")
def runs_compare(
    run_dirs: List[Path] = typer.Argument(..., help="two or more run directories"),
    plot: Path = typer.Option(Path("compare.png"), "--plot", help="where to write the curves of all runs"),
) -> None:
    """Side by side: metrics and the config keys that differ, and all validation curves in one plot."""
    from imgtrain.analysis.runs import compare_runs

    text, fig = compare_runs(run_dirs)
    from imgtrain.core.figures import png_bytes
    from imgtrain.core.saving import atomic_write

    atomic_write(plot, png_bytes(fig))
    typer.echo(text + f"\n\ncurves: {plot}")


for name, command in (
    ("presets", catalog.presets),
    ("datasets", catalog.datasets),
    ("models", catalog.models),
    ("sample-images", catalog.sample_images),
    ("config", catalog.config_keys),
    ("explain", overlays.explain_command),
    ("evaluate", cli_model.evaluate),
    ("predict", cli_model.predict),
    ("export", cli_model.export_model),
    ("serve", cli_model.serve),
    ("audit", cli_audit.audit_command),
):
    app.command(name)(command)


# The command is an application, so it sets how chatty other libraries are (the library itself leaves them alone):
# MLflow's "Creating initial MLflow database tables..." on every new store, Optuna's line per trial (`tune` prints
# its own), TensorFlow's "retracing" warnings when each tune trial's new model compiles its predict function.
QUIET_LOGGERS = {"mlflow.store": "WARNING", "alembic": "WARNING", "optuna": "WARNING", "tensorflow": "ERROR"}


def main() -> None:
    import logging

    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    try:
        app()
    except ImgtrainError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as err:  # a failure inside a framework (or a bug): one line; the traceback on request
        if os.environ.get("IMGTRAIN_DEBUG"):
            raise
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        typer.echo(
            f"error: {type(err).__name__}: {lines[0][:300] if lines else 'no message'} "
            "(IMGTRAIN_DEBUG=1 shows the traceback)",
            err=True,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
