"""imgtrain as a user installs it: a wheel built from this checkout, installed into a fresh virtual environment outside
the checkout, trains a run with its report (the templates travel inside the wheel); the lean install asks for no
extra it does not need, and a command whose extra is missing says which one to install."""

from __future__ import annotations

import email
import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

from conftest import ROOT

# what `pip install imgtrain` must not bring: each belongs to an extra (pyproject.toml, imgtrain/core/extras.py)
NOT_IN_THE_LEAN_INSTALL = (
    "selenium",
    "tritonclient",
    "mlflow",
    "jupyter",
    "nbclient",
    "ipykernel",
    "ipython",
    "psycopg",
    "optuna",
    "fastapi",
    "uvicorn",
    "jax",
    "onnx",
    "tf2onnx",
    "onnxruntime",
    "pytest",
)


def _wheel(out: Path) -> Path:
    """The wheel of this checkout, built without build isolation (the test environment has setuptools)."""
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    [wheel] = out.glob("imgtrain-*.whl")
    return wheel


def _requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return email.message_from_bytes(z.read(meta)).get_all("Requires-Dist") or []


def _fresh_venv(root: Path, wheel: Path) -> Path:
    """A new virtual environment with the wheel installed (no dependencies), that finds the dependencies in the test
    environment's site-packages through a .pth line. A .pth line adds the folder alone: the editable install of the
    checkout (a .pth file inside that folder) is not processed, so `import imgtrain` can only find the wheel's."""
    venv.create(root, with_pip=False)
    python = root / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (site / "test-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def test_a_wheel_installs_outside_the_checkout_and_trains_a_run_with_its_report(tmp_path):
    wheel = _wheel(tmp_path / "dist")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    assert {
        "imgtrain/analysis/templates/report.html.j2",
        "imgtrain/analysis/templates/tune.html.j2",
        "imgtrain/py.typed",
        "imgtrain/cli/__main__.py",
    } <= names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    lean = [r for r in _requirements(wheel) if "extra ==" not in r]
    assert lean and not [r for r in lean if r.split(">")[0].split("[")[0].strip().lower() in NOT_IN_THE_LEAN_INSTALL]

    python = _fresh_venv(tmp_path / "venv", wheel)
    work = tmp_path / "work"  # outside the checkout, so nothing is found relative to it
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where, keras_loaded = subprocess.run(
        [
            str(python),
            "-c",
            "import sys, imgtrain, imgtrain.cli; print(imgtrain.__file__); print('keras' in sys.modules)",
        ],
        cwd=work,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert where.startswith(str(tmp_path / "venv"))
    assert keras_loaded == "False"  # each run chooses its backend first; a command that needs Keras imports it
    proc = subprocess.run(
        [
            str(tmp_path / "venv" / "bin" / "imgtrain"),
            "train",
            "--dataset",
            "mnist",
            "--model",
            "mlp",
            "--epochs",
            "1",
            "--train-limit",
            "600",
            "--set",
            "test_limit=300",
            "--out",
            "run",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (work / "run" / "report.html").read_text()
    assert "<html" in report and "mnist" in report  # rendered from the wheel's templates
    assert (work / "run" / "best.keras").is_file() and (work / "run" / "metrics.json").is_file()


def test_a_command_whose_extra_is_missing_names_the_extra_in_one_line(tmp_path):
    """`imgtrain serve` without FastAPI, `tune` without Optuna, `--backend jax` without JAX: one line each, exit 2."""
    cases = {
        ("fastapi",): (
            ["serve", str(tmp_path / "none")],
            "error: imgtrain serve needs the [serve] extra (fastapi not installed): pip install 'imgtrain[serve]'",
        ),
        ("optuna",): (
            ["tune", str(tmp_path / "none.yaml")],
            "error: imgtrain tune needs the [tune] extra (optuna not installed): pip install 'imgtrain[tune]'",
        ),
        ("jax",): (
            ["train", "--backend", "jax", "--out", str(tmp_path / "run")],
            "error: backend jax needs the [jax] extra (jax not installed): pip install 'imgtrain[jax]'",
        ),
    }
    for hidden, (args, line) in cases.items():
        block = "; ".join(f"sys.modules[{m!r}] = None" for m in hidden)
        proc = subprocess.run(
            [sys.executable, "-c", f"import sys; {block}; from imgtrain.cli import main; main()", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [line], (args, proc.stderr[-2000:])
    assert not (tmp_path / "run").exists()
