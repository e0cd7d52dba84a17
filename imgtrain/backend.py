"""Choosing the Keras backend per run. Keras reads KERAS_BACKEND once, at its first import."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager

from .errors import ConfigError

BACKENDS = ("tensorflow", "jax")  # both installed by make and tested; torch is not offered


def use_backend(name: str) -> None:
    """Select `name` before Keras is imported; afterwards only the backend already loaded can be used."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up banner is noise to our users
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != name:
            raise ConfigError(f"backend {name!r} asked for, but Keras is already loaded with "
                              f"{keras.backend.backend()!r}; set KERAS_BACKEND={name} before importing keras")
        return
    os.environ["KERAS_BACKEND"] = name
    _import_keras_quietly()


@contextmanager
def precision(policy: str):
    """Keras' global dtype policy set to `policy` inside the block, then put back (a notebook keeps its own)."""
    import keras

    before = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(before)


def _import_keras_quietly() -> None:
    """Import Keras with file descriptor 2 held back: TensorFlow 2.21 prints absl/oneDNN banner lines at import
    that TF_CPP_MIN_LOG_LEVEL does not silence. They are shown only if the import fails."""
    import tempfile

    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            import keras  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def versions() -> dict[str, str]:
    import platform

    import keras
    import numpy

    out = {"python": platform.python_version(), "keras": keras.__version__, "numpy": numpy.__version__,
           "backend": keras.backend.backend(), "platform": platform.platform()}
    name = keras.backend.backend()
    out[name] = __import__(name).__version__
    from . import __version__

    out["imgtrain"] = __version__
    return out
