"""The optional parts of imgtrain and the extra that installs each (pyproject.toml's optional-dependencies): a
command whose extra is missing says so in one line instead of failing on an import deep inside.

    pip install imgtrain             # train, evaluate, predict, explain, report, export to .keras/SavedModel/TFLite
    pip install 'imgtrain[serve]'    # imgtrain serve       pip install 'imgtrain[export]'   # ONNX export and check
    pip install 'imgtrain[jax]'      # backend jax, data-parallel runs
    pip install 'imgtrain[tune]'     # imgtrain tune        pip install 'imgtrain[mlflow]'   # track: mlflow
    pip install 'imgtrain[postgres]' # tune --storage postgresql://...
    pip install 'imgtrain[notebook]' # run.show() and the live progress table in Jupyter
    pip install 'imgtrain[audit]'    # imgtrain audit (cleanlab, faiss)
    pip install 'imgtrain[all]'      # every one of them
"""

from __future__ import annotations

import importlib.util
import sys

from imgtrain.core.errors import ImgtrainError

# extra -> the modules it brings (import names)
EXTRAS: dict[str, tuple[str, ...]] = {
    "serve": ("fastapi", "uvicorn", "python_multipart"),
    "export": ("tf2onnx", "onnx", "onnxruntime"),
    "jax": ("jax",),
    "tune": ("optuna",),
    "mlflow": ("mlflow",),
    "postgres": ("psycopg",),
    "notebook": ("IPython",),
    "audit": ("cleanlab", "faiss"),
}


def missing(extra: str) -> list[str]:
    """The modules of `extra` that cannot be imported here (found without importing them: jax or MLflow take
    seconds to import)."""
    return [name for name in EXTRAS[extra] if not _importable(name)]


def _importable(name: str) -> bool:
    if name in sys.modules:  # None there: a module that failed to import, or was blocked on purpose
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def require(extra: str, what: str) -> None:
    """One line naming the extra to install when `what` (a command or setting) needs modules this install lacks."""
    absent = missing(extra)
    if absent:
        raise ImgtrainError(
            f"{what} needs the [{extra}] extra ({', '.join(absent)} not installed): pip install 'imgtrain[{extra}]'"
        )
