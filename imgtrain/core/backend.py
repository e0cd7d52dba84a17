"""Choosing the Keras backend per run. Keras reads KERAS_BACKEND once, at its first import."""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import TYPE_CHECKING, Any

from imgtrain.core.errors import ConfigError

if TYPE_CHECKING:
    import keras

BACKENDS = ("tensorflow", "jax")  # both installed by make and tested; torch is not offered


def use_backend(name: str) -> None:
    """Select `name` before Keras is imported; afterwards only the backend already loaded can be used."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    if name == "jax":
        from imgtrain.core.extras import require

        require("jax", "backend jax")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up banner is noise to our users
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != name:
            raise ConfigError(
                f"backend {name!r} asked for, but Keras is already loaded with "
                f"{keras.backend.backend()!r}; set KERAS_BACKEND={name} before importing keras"
            )
        return
    os.environ["KERAS_BACKEND"] = name
    _import_keras_quietly()


@contextmanager
def precision(policy: str) -> Iterator[None]:
    """Keras' global dtype policy set to `policy` inside the block, then put back (a notebook keeps its own)."""
    import keras

    before = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(before)


@contextmanager
def stderr_held() -> Iterator[None]:
    """File descriptor 2 (where C++ libraries write, below Python's sys.stderr) into a temporary file for the block;
    what was written is shown only if the block raises."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _import_keras_quietly() -> None:
    """Import Keras with file descriptor 2 held back: TensorFlow 2.21 prints absl/oneDNN banner lines at import
    that TF_CPP_MIN_LOG_LEVEL does not silence. They are shown only if the import fails."""
    with stderr_held():
        import keras  # noqa: F401


class _QuietTensorFlow(importlib.abc.MetaPathFinder):
    """Finds nothing itself: on the first `import tensorflow` (by Keras or the user's own code) it wraps the real
    loader so that TensorFlow's start-up banner is held back as it is in the CLI, then steps aside."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != "tensorflow":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)  # once: the real finders answer from here on
        spec = importlib.util.find_spec(name)
        loader = spec.loader if spec else None
        if loader is not None and hasattr(loader, "exec_module"):
            run = loader.exec_module

            def exec_quietly(module: ModuleType) -> None:
                with stderr_held():
                    run(module)

            loader.exec_module = exec_quietly  # type: ignore[method-assign]
        return spec


def quiet_tensorflow_import() -> None:
    """Hold back TensorFlow's banner at its first import in this process (IMGTRAIN_DEBUG=1 leaves it alone)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the runtime's info lines after start-up
    if os.environ.get("IMGTRAIN_DEBUG") == "1" or "tensorflow" in sys.modules:
        return
    if not any(isinstance(f, _QuietTensorFlow) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlow())


def versions() -> dict[str, str]:
    import platform

    import keras
    import numpy

    out = {
        "python": platform.python_version(),
        "keras": keras.__version__,
        "numpy": numpy.__version__,
        "backend": keras.backend.backend(),
        "platform": platform.platform(),
    }
    name = keras.backend.backend()
    out[name] = __import__(name).__version__
    from imgtrain.core.version import __version__

    out["imgtrain"] = __version__
    return out


def _layers(model: keras.Model | keras.layers.Layer) -> Iterator[keras.layers.Layer]:
    """Every layer of `model`, nested models' layers included."""
    for layer in model.layers:
        yield layer
        yield from _layers(layer) if hasattr(layer, "layers") else ()


def precision_of(model: keras.Model) -> str:
    """The dtype policy the model computes in: "float32", or e.g. "mixed_bfloat16" (its float32 layers, such as the
    input and a float32 softmax, do not count)."""
    names = {layer.dtype_policy.name for layer in _layers(model)} - {"float32"}
    return "+".join(sorted(names)) or "float32"


@contextlib.contextmanager
def undistributed() -> Iterator[None]:
    """No Keras distribution meanwhile: what process 0 does alone (saving, scoring the test set, the report) must
    create its variables on its own devices, not on every process's (that would wait for the others)."""
    import keras

    previous = keras.distribution.distribution()
    if previous is None:
        yield
        return
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(previous)
