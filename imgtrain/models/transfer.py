"""Where a run's model starts: a pretrained backbone from `keras.applications` (models/backbones.py), or an earlier
run's model (`init_from`), with a new head when the classes differ.

`backbone_defaults(cfg)` and `init_defaults(cfg)` fill in what such a start implies before anything is written, so
config.yaml records what was in effect: a backbone's weights ("imagenet" unless told) and input size (the size its
weights were trained at), an earlier model's input size and channels (models/source.py asks these functions).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from imgtrain.core.config import TrainConfig
from imgtrain.core.errors import ConfigError

if TYPE_CHECKING:
    import keras


Origin = dict[str, Any]  # run.json's "init_from": {"path", "sha256", "head", "classes"}


class Dataset(Protocol):
    """What a model is built for: the images' shape and the classes (imgtrain.data.Dataset has them; models do not
    import the data package, their sibling layer)."""

    input_shape: tuple[int, int, int]
    class_names: list[str]

    @property
    def num_classes(self) -> int: ...


def backbone_names() -> list[str]:
    from imgtrain.models.backbones import BACKBONES

    return sorted(BACKBONES)


def backbone_defaults(cfg: TrainConfig) -> TrainConfig:
    """A registered model's config with a backbone's defaults filled in (a copy): its weights (imagenet unless told)
    and the input size its weights were trained at."""
    from imgtrain.models.backbones import BACKBONES

    update: dict[str, object] = {}
    if cfg.model in BACKBONES:
        size = BACKBONES[cfg.model].default_size
        update["weights"] = cfg.weights or "imagenet"
        if cfg.image_size is None:
            update["image_size"] = (size, size)
    elif cfg.weights is not None:
        raise ConfigError(
            f"weights {cfg.weights!r} applies to the pretrained backbones ({', '.join(backbone_names())}); "
            f"model {cfg.model!r} starts from random weights (init_from starts from an earlier run)"
        )
    return _check_stages(cfg.model_copy(update=update) if update else cfg)


def init_defaults(cfg: TrainConfig) -> TrainConfig:
    """An init_from run's config with the earlier model's input size and channels where unset (a copy)."""
    from imgtrain.core.saving import read_meta, resolve_model_path

    update: dict[str, object] = {}
    meta = read_meta(resolve_model_path(str(cfg.init_from)))
    parent, default = meta.get("model"), TrainConfig.model_fields["model"].default
    if parent and cfg.model != parent:  # the run trains the earlier model: config.yaml, reports and auto say so
        if cfg.model != default:
            raise ConfigError(
                f"init_from {str(cfg.init_from)!r} continues its model {parent!r}; model {cfg.model!r} would not be "
                "trained: leave model out (or build a fresh one without init_from)"
            )
        update["model"] = parent
    shape = meta.get("input_shape")
    if shape and cfg.image_size is None:
        update["image_size"] = (int(shape[0]), int(shape[1]))
    if shape and cfg.channels is None:
        update["channels"] = int(shape[2])
    return _check_stages(cfg.model_copy(update=update) if update else cfg)


def _check_stages(cfg: TrainConfig) -> TrainConfig:
    if (cfg.freeze_epochs or cfg.unfreeze) and not pretrained(cfg):
        raise ConfigError(
            f"freeze_epochs and unfreeze fine-tune a pretrained start: a backbone with weights "
            f"(imagenet or a file) or init_from (got model {cfg.model!r}, weights {cfg.weights!r})"
        )
    return cfg


def pretrained(cfg: TrainConfig) -> bool:
    """Whether the run starts from learned weights: an earlier run, or a backbone with weights."""
    return bool(cfg.init_from) or (cfg.model in backbone_names() and cfg.weights not in (None, "none"))


def file_sha256(path: str | Path) -> str:
    from imgtrain.core.hashing import sha256_files

    return sha256_files([Path(path)])


def new_head(model: keras.Model, num_classes: int) -> keras.Model:
    """`model` with its last Dense layer (imgtrain's "probs") replaced by a fresh softmax over `num_classes`."""
    import keras

    from imgtrain.models import HEAD

    names = [layer.name for layer in model.layers]
    last = model.get_layer(HEAD) if HEAD in names else model.layers[-1]
    if not isinstance(last, keras.layers.Dense):
        raise ConfigError(
            f"init_from: the model's last layer {last.name!r} is a {type(last).__name__}, not a Dense "
            "layer whose classes could be replaced"
        )
    outputs = keras.layers.Dense(num_classes, activation="softmax", name=HEAD, dtype="float32")(
        last.input
    )  # softmax in float32 under mixed precision
    return keras.Model(model.inputs, outputs, name=model.name)


def from_earlier_run(cfg: TrainConfig, ds: Dataset) -> tuple[keras.Model, Origin]:
    """(the earlier run's model, ready for this data, {"path", "sha256", "head", "classes"} for run.json)."""
    from imgtrain.core.saving import float32_copy, load_model, resolve_model_path

    src = resolve_model_path(str(cfg.init_from))
    model, meta = load_model(src)
    if tuple(model.input_shape[1:]) != tuple(ds.input_shape):
        raise ConfigError(
            f"init_from {src}: the model takes {tuple(model.input_shape[1:])} images, the data gives "
            f"{tuple(ds.input_shape)}; leave image_size and channels unset to use the model's"
        )
    if cfg.precision == "float32":
        model = float32_copy(model)  # a mixed-precision model continues in the precision this run asks for
    same = model.output_shape[-1] == ds.num_classes and list(meta.get("class_names") or []) == list(ds.class_names)
    if not same:
        model = new_head(model, ds.num_classes)
    return model, {
        "path": str(src),
        "sha256": file_sha256(src),
        "head": "kept" if same else "replaced",
        "classes": list(meta.get("class_names") or []),
    }
