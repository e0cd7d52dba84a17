"""imgtrain: train, evaluate and predict image classifiers on Keras 3.

    from imgtrain import load_dataset, build_model, train
    run = train(dataset="mnist", model="cnn_small", epochs=1, out="runs/mnist-1")
    run.metrics["test_accuracy"]   # 0.98+; run.model is a plain keras.Model

`import imgtrain` does not import Keras (only `build_model`, `train` and friends do, when called), so that each
run can choose its backend first. It does hold back TensorFlow's start-up banner (absl and oneDNN lines on stderr)
when TensorFlow is first imported, by imgtrain or by your own `import keras` after it, as the CLI does;
IMGTRAIN_DEBUG=1 shows it.
"""

import logging
from typing import TYPE_CHECKING, Any

from imgtrain.analysis.evaluate import evaluate
from imgtrain.analysis.predict import predict_files
from imgtrain.core.backend import quiet_tensorflow_import
from imgtrain.core.config import TrainConfig, load_config
from imgtrain.core.saving import load_model
from imgtrain.core.version import __version__
from imgtrain.data import load_dataset
from imgtrain.training.run import train

if TYPE_CHECKING:
    from pathlib import Path
    from types import ModuleType

    import keras
    import numpy as np
    import numpy.typing as npt

    from imgtrain.analysis.heatmaps import Explanation
    from imgtrain.auditing.run import AuditResult

# imgtrain's logger hierarchy (`imgtrain`, `imgtrain.run`: every run's messages) stays silent unless the application
# configures logging; a run's train.log is a handler of its own
logging.getLogger("imgtrain").addHandler(logging.NullHandler())
quiet_tensorflow_import()


def build_model(
    name: str, input_shape: tuple[int, ...] = (28, 28, 1), num_classes: int = 10, **options: Any
) -> "keras.Model":
    """A plain `keras.Model` from the registry (imports Keras); see `imgtrain.models.build_model`."""
    from imgtrain.models import build_model as _build

    return _build(name, input_shape, num_classes, **options)


def explain(
    model: "keras.Model",
    images: "np.ndarray",
    class_index: "npt.ArrayLike | None" = None,
    method: str = "auto",
    layer: str | None = None,
    batch_size: int = 64,
) -> "Explanation":
    """Heatmaps of why `model` decided (Grad-CAM, or saliency without convolutions); see
    `imgtrain.analysis.heatmaps.explain`. Returns an Explanation: .heatmaps (n, h, w) in [0, 1], .classes, .probs,
    .method, .layer."""
    from imgtrain.analysis.heatmaps import explain as _explain

    return _explain(model, images, class_index, method, layer, batch_size)


def audit(dataset: str, out: "str | Path | None" = None, *, folds: int = 5, **options: Any) -> "AuditResult":
    """Audit `dataset` for label issues, duplicates and leaks, outliers and odd images (needs the [audit] extra);
    see `imgtrain.auditing.run.audit`. Returns an AuditResult: .issues (a pandas DataFrame, issues.csv), .summary,
    .out (the directory with audit.html)."""
    from imgtrain.core.extras import require

    require("audit", "imgtrain.audit")
    from imgtrain.auditing.run import audit as _audit

    return _audit(dataset, out, folds=folds, **options)


def __getattr__(name: str) -> "ModuleType":
    """`imgtrain.training`, `imgtrain.models`, ...: every subpackage is reachable after `import imgtrain`, imported on
    first use (so that `import imgtrain` stays light and imports no Keras)."""
    import importlib
    from pathlib import Path

    here = Path(__file__).parent
    if (here / f"{name}.py").is_file() or (here / name / "__init__.py").is_file():
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'imgtrain' has no attribute {name!r}")


__all__ = [
    "__version__",
    "audit",
    "TrainConfig",
    "build_model",
    "evaluate",
    "explain",
    "load_config",
    "load_dataset",
    "load_model",
    "predict_files",
    "train",
]
