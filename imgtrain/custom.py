"""Models built in Python: `imgtrain.train(model=...)` with a `keras.Model` (for example a subclass with its own
`train_step`, built functionally as `MyModel(inputs, outputs)`) or a function `(input_shape, num_classes) -> Model`.

The run gets everything a registered model gets: the run directory, the loss, metrics and optimizer of the config
(a custom `train_step` reaches them as `self.compute_loss`, `self.metrics` and `self.optimizer`), callbacks,
checkpoints, resume, the test score and the report. config.yaml names the model `custom:<name>`; it cannot be
rebuilt from the config alone, so `imgtrain train --config` of such a run says to call `imgtrain.train(model=...)`.

best.keras is saved as a plain Functional model with the same layers and weights, so that it opens anywhere
without the user's class (`imgtrain evaluate`, `serve`, `export`, `explain`, plain `keras.models.load_model`);
last.keras keeps the user's class and the optimizer state, and a resume loads it back with that class.
"""
from __future__ import annotations

from .errors import ConfigError

PREFIX = "custom:"
REGISTERED_ONLY = {"freeze_epochs": 0, "unfreeze": 0, "init_from": None, "weights": None, "augment": "none"}


def is_custom(model) -> bool:
    """Whether train()'s `model` is a model or builder rather than a registered model's name."""
    return model is not None and not isinstance(model, str)


def name_of(model) -> str:
    """config.yaml's name for a model built in Python: custom:<class or function name>."""
    import keras

    if isinstance(model, keras.Model):
        return PREFIX + type(model).__name__
    if callable(model):
        return PREFIX + getattr(model, "__name__", type(model).__name__)
    raise ConfigError(f"model must be a registered name, a keras.Model or a function (input_shape, num_classes) -> "
                      f"keras.Model (got {type(model).__name__})")


def refuse_rebuild(name: str) -> None:
    """A config naming a model built in Python cannot rebuild it: one line that says what to do."""
    if name.startswith(PREFIX):
        raise ConfigError(f"model {name!r} was built in Python; train it again with imgtrain.train(model=...) "
                          "and the same config")


def check(cfg, model) -> None:
    """One-line errors, before anything is written, for settings that need a registered model."""
    import keras

    for key, default in REGISTERED_ONLY.items():
        if getattr(cfg, key) != default:
            raise ConfigError(f"{key} applies to registered models; a model built in Python brings its own layers "
                              f"(got {key} {getattr(cfg, key)!r})")
    if cfg.model_options:
        raise ConfigError(f"model_options apply to registered models (got {sorted(cfg.model_options)}); a model "
                          "built in Python takes its options where it is built")
    if isinstance(model, keras.Model) and cfg.distribute != "none":
        raise ConfigError("distribute needs the model built under the distribution: pass a function "
                          "(input_shape, num_classes) -> keras.Model instead of a built model")


def precision(cfg, model) -> tuple[str, str] | None:
    """(policy, why) for a built model: it computes in the dtype policy it was built with, which the run records;
    None for a builder, which is built under the run's precision."""
    import keras

    if not isinstance(model, keras.Model):
        return None
    from .export import precision_of

    built = precision_of(model)
    policy = "float32" if built == "float32" else built.split("+")[0]
    if cfg.precision not in ("auto", policy):
        raise ConfigError(f"precision {cfg.precision!r}: the model was built in Python computing in {built}; build it "
                          "under keras.mixed_precision.set_global_policy, or pass a function that builds it")
    return policy, "the dtype policy the model was built with in Python"


def build(model, cfg, ds):
    """The keras.Model to train: `model` itself, or what the builder returns, checked against the data."""
    import keras

    built = model if isinstance(model, keras.Model) else model(tuple(ds.input_shape), ds.num_classes)
    name = cfg.model
    if not isinstance(built, keras.Model):
        raise ConfigError(f"model {name!r}: the function returned a {type(built).__name__}, not a keras.Model")
    if not getattr(built, "inputs", None):
        raise ConfigError(f"model {name!r} has no inputs yet: build it functionally, e.g. MyModel(inputs, outputs) "
                          "with keras.Input, so that its runs can be saved, served, exported and explained")
    if len(built.inputs) != 1 or len(built.outputs) != 1:
        raise ConfigError(f"model {name!r} has {len(built.inputs)} inputs and {len(built.outputs)} outputs; "
                          "an image classifier has one of each")
    if tuple(built.input_shape[1:]) != tuple(ds.input_shape):
        raise ConfigError(f"model {name!r} takes {tuple(built.input_shape[1:])} images, the data gives "
                          f"{tuple(ds.input_shape)}")
    if built.output_shape[-1] != ds.num_classes:
        raise ConfigError(f"model {name!r} has {built.output_shape[-1]} outputs for {ds.num_classes} classes")
    return built


def portable(model):
    """`model` as a plain Functional model with the same layers (so the same weights), where its class is the user's
    own; a plain model as it is."""
    import keras

    if type(model).__module__.startswith("keras."):
        return model
    return keras.Model(model.inputs, model.outputs, name=model.name)


def load_last(path, model):
    """last.keras of a run of `model` (a resume), loaded with the user's class, registered or not."""
    import keras

    cls = type(model)
    objects = {cls.__name__: cls, keras.saving.get_registered_name(cls): cls}
    return keras.models.load_model(path, safe_mode=True, custom_objects=objects)
