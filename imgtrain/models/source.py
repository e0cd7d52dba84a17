"""Where a run's model comes from, chosen once: `model_source(cfg, model)` returns one `ModelSource`, and the run asks
it (check, precision, build, resume, portable form) instead of asking at each step what kind of model it has.

The sources:
- `Registered`: a name from the registry (`imgtrain models`), a pretrained backbone with its weights included;
- `EarlierRun`: `init_from` an earlier run's model (a run directory or a .keras file), its head kept when the
  classes match and replaced when they differ;
- `PythonModel` / `PythonBuilder`: a `keras.Model` built in Python (a subclass with its own `train_step`, say, built
  functionally as `MyModel(inputs, outputs)`) or a function `(input_shape, num_classes) -> keras.Model`, given as
  `train(model=...)`. config.yaml names such a model `custom:<name>`; it cannot be rebuilt from the config alone.
  best.keras is saved as a plain Functional model with the same layers and weights, so that it opens anywhere
  without the user's class; last.keras keeps the user's class and the optimizer state for a resume.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgtrain.core.config import TrainConfig
from imgtrain.core.errors import ConfigError
from imgtrain.models import transfer
from imgtrain.models.transfer import Dataset, Origin

if TYPE_CHECKING:
    import keras

PREFIX = "custom:"  # config.yaml's model name for a model built in Python
REGISTERED_ONLY = {"freeze_epochs": 0, "unfreeze": 0, "init_from": None, "weights": None, "augment": "none"}


class ModelSource(ABC):
    """The interface: what a run needs to know of where its model comes from. The defaults fit a registered model."""

    name: str  # config.yaml's `model`

    def resolve(self, cfg: TrainConfig) -> TrainConfig:
        """`cfg` with what this start implies filled in (a copy), after one-line checks; nothing written yet."""
        return cfg

    def precision(self, cfg: TrainConfig) -> tuple[str, str] | None:
        """(policy, why) when the model dictates its precision, else None (the run chooses)."""
        return None

    def kinds(self, cfg: TrainConfig) -> frozenset[str] | None:
        """The kinds of layers the model will contain (models/kinds.py), for precision auto; None: not known."""
        return None

    @abstractmethod
    def build(self, cfg: TrainConfig, ds: Dataset) -> tuple[keras.Model, Origin | None]:
        """(the model to train, where it came from for run.json: None for a fresh model)."""

    def resume(self, path: Path, model: keras.Model) -> keras.Model:
        """last.keras of an unfinished run of this model: weights and optimizer state."""
        import keras

        return keras.models.load_model(path, safe_mode=True)

    def portable(self, model: keras.Model) -> keras.Model:
        """The model as it is saved for others (best.keras): one that opens without imgtrain or the user's code."""
        return portable(model)

    def options(self) -> set[str]:
        """The keyword options its builder takes (model_options, and what `imgtrain tune` may search)."""
        return set()


class Registered(ModelSource):
    """A model of the registry by name; a pretrained backbone gets its weights and input size (models/transfer.py)."""

    def __init__(self, name: str) -> None:
        if name.startswith(PREFIX):
            raise ConfigError(
                f"model {name!r} was built in Python; train it again with imgtrain.train(model=...) and the same config"
            )
        self.name = name

    def resolve(self, cfg: TrainConfig) -> TrainConfig:
        return transfer.backbone_defaults(cfg)

    def kinds(self, cfg: TrainConfig) -> frozenset[str] | None:
        import json

        from imgtrain.models.kinds import registered_kinds

        size = cfg.image_size or (32, 32)  # the kinds do not depend on the size; 32: the backbones' smallest
        options = json.dumps(cfg.model_options, sort_keys=True)
        return registered_kinds(cfg.model, (int(size[0]), int(size[1]), cfg.channels or 3), options)

    def build(self, cfg: TrainConfig, ds: Dataset) -> tuple[keras.Model, Origin | None]:
        from imgtrain.models.registry import build_model

        extra = {"weights": cfg.weights} if cfg.weights else {}
        model = build_model(
            cfg.model, ds.input_shape, ds.num_classes, augment=cfg.augment, **extra, **cfg.model_options
        )
        return model, None

    def options(self) -> set[str]:
        from imgtrain.models.registry import MODELS

        return set(inspect.signature(MODELS.get(self.name)).parameters) - {"input_shape", "num_classes", "augment"}


class EarlierRun(ModelSource):
    """`init_from`: an earlier run's model continues (same classes) or gets a new head (other classes)."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.name, self.target = cfg.model, str(cfg.init_from)

    def resolve(self, cfg: TrainConfig) -> TrainConfig:
        return transfer.init_defaults(cfg)

    def kinds(self, cfg: TrainConfig) -> frozenset[str] | None:
        from imgtrain.core.saving import resolve_model_path
        from imgtrain.models.kinds import saved_kinds

        return saved_kinds(resolve_model_path(self.target))

    def build(self, cfg: TrainConfig, ds: Dataset) -> tuple[keras.Model, Origin | None]:
        return transfer.from_earlier_run(cfg, ds)


class FromPython(ModelSource):
    """What a model and a builder from Python share: the checks, the resume with the user's class, the name."""

    def __init__(self, model: Any, name: str) -> None:
        self.model, self.name = model, PREFIX + name

    def resolve(self, cfg: TrainConfig) -> TrainConfig:
        for key, default in REGISTERED_ONLY.items():
            if getattr(cfg, key) != default:
                raise ConfigError(
                    f"{key} applies to registered models; a model built in Python brings its own layers "
                    f"(got {key} {getattr(cfg, key)!r})"
                )
        if cfg.model_options:
            raise ConfigError(
                f"model_options apply to registered models (got {sorted(cfg.model_options)}); a model "
                "built in Python takes its options where it is built"
            )
        return cfg

    def build(self, cfg: TrainConfig, ds: Dataset) -> tuple[keras.Model, Origin | None]:
        return check_built(self._built(ds), cfg.model, ds), None

    @abstractmethod
    def _built(self, ds: Dataset) -> Any:
        """The object the user gave (a model) or what it builds for these data (a builder), not yet checked."""

    def resume(self, path: Path, model: keras.Model) -> keras.Model:
        """last.keras loaded with the user's class, registered with Keras or not (its train_step goes on)."""
        import keras

        cls = type(model)
        objects = {cls.__name__: cls, keras.saving.get_registered_name(cls): cls}
        return keras.models.load_model(path, safe_mode=True, custom_objects=objects)


class PythonModel(FromPython):
    """A keras.Model built in Python: trained as it is, in the dtype policy it was built with."""

    def resolve(self, cfg: TrainConfig) -> TrainConfig:
        cfg = super().resolve(cfg)
        if cfg.distribute != "none":
            raise ConfigError(
                "distribute needs the model built under the distribution: pass a function "
                "(input_shape, num_classes) -> keras.Model instead of a built model"
            )
        return cfg

    def precision(self, cfg: TrainConfig) -> tuple[str, str] | None:
        from imgtrain.core.backend import precision_of

        built = precision_of(self.model)
        policy = "float32" if built == "float32" else built.split("+")[0]
        if cfg.precision not in ("auto", policy):
            raise ConfigError(
                f"precision {cfg.precision!r}: the model was built in Python computing in {built}; build it under "
                "keras.mixed_precision.set_global_policy, or pass a function that builds it"
            )
        return policy, "the dtype policy the model was built with in Python"

    def _built(self, ds: Dataset) -> Any:
        return self.model


class PythonBuilder(FromPython):
    """A function (input_shape, num_classes) -> keras.Model, called under the run's precision and distribution."""

    def _built(self, ds: Dataset) -> Any:
        return self.model(tuple(ds.input_shape), ds.num_classes)


def model_source(cfg: TrainConfig, model: Any = None) -> ModelSource:
    """The source of the run's model: `model` from Python when given (not a name), else init_from, else the registry."""
    import keras

    if model is None or isinstance(model, str):
        return EarlierRun(cfg) if cfg.init_from else Registered(cfg.model)
    if isinstance(model, keras.Model):
        return PythonModel(model, type(model).__name__)
    if callable(model):
        return PythonBuilder(model, getattr(model, "__name__", type(model).__name__))
    raise ConfigError(
        "model must be a registered name, a keras.Model or a function (input_shape, num_classes) -> "
        f"keras.Model (got {type(model).__name__})"
    )


def check_built(built: Any, name: str, ds: Dataset) -> keras.Model:
    """`built` if it is a one-input, one-output keras.Model that fits the data; else a one-line error."""
    import keras

    if not isinstance(built, keras.Model):
        raise ConfigError(f"model {name!r}: the function returned a {type(built).__name__}, not a keras.Model")
    if not getattr(built, "inputs", None):
        raise ConfigError(
            f"model {name!r} has no inputs yet: build it functionally, e.g. MyModel(inputs, outputs) "
            "with keras.Input, so that its runs can be saved, served, exported and explained"
        )
    if len(built.inputs) != 1 or len(built.outputs) != 1:
        raise ConfigError(
            f"model {name!r} has {len(built.inputs)} inputs and {len(built.outputs)} outputs; "
            "an image classifier has one of each"
        )
    if tuple(built.input_shape[1:]) != tuple(ds.input_shape):
        raise ConfigError(
            f"model {name!r} takes {tuple(built.input_shape[1:])} images, the data gives {tuple(ds.input_shape)}"
        )
    if built.output_shape[-1] != ds.num_classes:
        raise ConfigError(f"model {name!r} has {built.output_shape[-1]} outputs for {ds.num_classes} classes")
    return built


def portable(model: keras.Model) -> keras.Model:
    """`model` as a plain Functional model with the same layers (so the same weights) where its class is the user's
    own; a model of Keras' own classes as it is."""
    import keras

    if type(model).__module__.startswith("keras."):
        return model
    return keras.Model(model.inputs, model.outputs, name=model.name)
