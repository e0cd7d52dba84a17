"""imgtrain: train, evaluate and predict image classifiers on Keras 3.

    from imgtrain import load_dataset, build_model, train
    run = train(dataset="mnist", model="cnn_small", epochs=1, out="runs/mnist-1")
    run.metrics["test_accuracy"]   # 0.98+; run.model is a plain keras.Model

`import imgtrain` does not import Keras (only `build_model`, `train` and friends do, when called), so that each
run can choose its backend first.
"""
__version__ = "0.1.0"

from .config import TrainConfig, load_config  # noqa: E402
from .data import load_dataset  # noqa: E402
from .evaluate import evaluate  # noqa: E402
from .predict import predict_files  # noqa: E402
from .saving import load_model  # noqa: E402
from .train import train  # noqa: E402


def build_model(name: str, input_shape=(28, 28, 1), num_classes: int = 10, **options):
    """A plain `keras.Model` from the registry (imports Keras); see `imgtrain.models.build_model`."""
    from .models import build_model as _build

    return _build(name, input_shape, num_classes, **options)


def explain(model, images, class_index=None, method: str = "auto", layer: str | None = None, batch_size: int = 64):
    """Heatmaps of why `model` decided (Grad-CAM, or saliency without convolutions); see `imgtrain.heatmaps.explain`.
    Returns an Explanation: .heatmaps (n, h, w) in [0, 1], .classes, .probs, .method, .layer."""
    from .heatmaps import explain as _explain

    return _explain(model, images, class_index, method, layer, batch_size)


def __getattr__(name: str):
    """`imgtrain.plots`, `imgtrain.report`, ...: every module of the package is reachable after `import imgtrain`,
    imported on first use (so that `import imgtrain` stays light and imports no Keras)."""
    import importlib
    from pathlib import Path

    here = Path(__file__).parent
    if (here / f"{name}.py").is_file() or (here / name / "__init__.py").is_file():
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'imgtrain' has no attribute {name!r}")


__all__ = ["TrainConfig", "build_model", "evaluate", "explain", "load_config", "load_dataset", "load_model", "predict_files",
           "train"]
