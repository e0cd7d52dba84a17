"""Two-stage fine-tuning of a pretrained start (fastai's `fine_tune`): the new head alone on a frozen body, then the
body too, all of it or its last blocks, at its own rate. `fit_stages` is the training loop of every run: one Keras
`fit` per stage (a run without `freeze_epochs` has one stage).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from imgtrain.core.config import TrainConfig
from imgtrain.models import HEAD
from imgtrain.models.transfer import pretrained

if TYPE_CHECKING:
    import keras
    import numpy as np

    from imgtrain.data.batches import ArrayBatches
    from imgtrain.data.dataset import Dataset
    from imgtrain.data.stream import ImageBatches
    from imgtrain.training.cluster import Cluster

    Batches = ArrayBatches | ImageBatches  # training batches (fit.fit_inputs with shuffle)
    ValData = ArrayBatches | ImageBatches | tuple[np.ndarray, np.ndarray] | None  # validation data, if any

# the block a backbone's layer belongs to, from Keras' names: MobileNetV3 expanded_conv_3_..., EfficientNet(V2)
# block2a_..., ResNet50V2 conv3_block1_..., ConvNeXt ..._stage_1_block_0_...
BLOCK = re.compile(r"expanded_conv(?:_\d+)?_|block\d+[a-z]_|conv\d_block\d+_|stage_\d+_block_\d+_")


@dataclass(frozen=True)
class Stage:
    number: int  # 1, 2
    start: int  # first epoch (0-based)
    end: int  # epoch after the last
    trains: str  # "head": everything before the head frozen; "body": the head and the unfrozen part of the body


def stages(cfg: TrainConfig) -> list[Stage]:
    """The run's stages: one (everything trains) unless freeze_epochs asks for a frozen first stage."""
    if not cfg.freeze_epochs:
        return [Stage(1, 0, cfg.epochs, "body")]
    head = Stage(1, 0, min(cfg.freeze_epochs, cfg.epochs), "head")
    return [head] + ([Stage(2, head.end, cfg.epochs, "body")] if cfg.epochs > head.end else [])


def body_blocks(model: keras.Model) -> list[list[keras.layers.Layer]]:
    """The layers before the head, grouped into blocks in order: a backbone's own blocks (BLOCK; its stem with the
    first, its top with the last), else each layer with weights on its own (a model from an earlier run)."""
    if "backbone" in [layer.name for layer in model.layers]:
        blocks: list[list[keras.layers.Layer]] = [[]]
        key: str | None = None
        for layer in model.get_layer("backbone").layers:
            found = BLOCK.search(layer.name)
            if found and found.group(0) != key and key is not None:
                blocks.append([])
            key = found.group(0) if found else key
            blocks[-1].append(layer)
        return blocks
    return [[layer] for layer in model.layers if layer.weights and layer.name != HEAD]


def set_trainable(model: keras.Model, stage: Stage, unfreeze: int) -> None:
    """Freeze what `stage` does not train. A frozen BatchNormalization runs in inference mode (Keras 3), so its
    moving statistics stay as they were (keras-team/keras#9965 is the pitfall this avoids)."""
    for layer in model.layers:
        layer.trainable = stage.trains == "body" and not unfreeze
    model.get_layer(HEAD).trainable = True
    if stage.trains == "body" and unfreeze:
        if "backbone" in [layer.name for layer in model.layers]:
            model.get_layer("backbone").trainable = True  # a nested model trains only what is trainable in it
            for layer in model.get_layer("backbone").layers:
                layer.trainable = False
        for block in body_blocks(model)[-unfreeze:]:
            for layer in block:
                layer.trainable = True


def _epochs(first: int, last: int) -> str:
    """ "epoch 3" or "epochs 3-5" (counted from 1)."""
    return f"epoch {first}" if first == last else f"epochs {first}-{last}"


def body_lr_mult(cfg: TrainConfig, stage: Stage) -> float:
    """The body's learning rate as a multiple of the head's in `stage`: backbone_lr_mult while a pretrained body
    trains, else 1."""
    return cfg.backbone_lr_mult if stage.trains == "body" and pretrained(cfg) else 1.0


def _cached_head(
    cluster: Cluster, ds: Dataset, model: keras.Model, onehot: int, begin: int, log: logging.Logger
) -> tuple[keras.Model, Batches, ValData] | None:
    """(the head, its training batches, its validation data) on the body's cached output, or None where the frozen
    stage must train through the body (features.py says when)."""
    import time

    from imgtrain.training.features import cacheable, split_features, split_model
    from imgtrain.training.fit import fit_inputs

    cfg = cluster.config
    if not (cfg.cache_features and not cluster.sharding and cacheable(model)):
        return None
    t0 = time.perf_counter()
    extractor, head = split_model(model)
    train = split_features(extractor, ds.train, ds.skipped)
    features = cast("np.ndarray", train.x)  # split_features returns a Split in memory
    batches = cast("Batches", fit_inputs(train, cfg, features.shape[1:], onehot, True, {}, begin))  # shuffled
    val: ValData = None
    if ds.val is not None and len(ds.val):
        val = fit_inputs(split_features(extractor, ds.val, ds.skipped), cfg, features.shape[1:], onehot, False, {})
    log.info(
        "frozen stage on cached features: %d values an image, %.1f s to compute or read",
        features.shape[-1],
        time.perf_counter() - t0,
    )
    return head, batches, val


def fit_stages(
    cluster: Cluster,
    ds: Dataset,
    model: keras.Model,
    data: tuple[Batches, ValData],
    callbacks: list[keras.callbacks.Callback],
    weights: dict[int, float] | None,
    first: int,
    last_epoch: int,
    saved_optimizer: keras.optimizers.Optimizer | None,
    log: logging.Logger,
) -> dict[str, list[float]]:
    """Keras' fit over epochs first..last_epoch, one call per stage (a frozen stage, then the body): each stage
    sets what trains, gets its own optimizer and schedule, and is compiled anew; a frozen stage trains the head
    on cached features where it can (_cached_head). A resumed run continues its stage with the checkpoint's
    optimizer state (`saved_optimizer`). A pretrained body's BatchNormalization keeps its statistics in every
    stage (batchnorm.frozen_statistics). Returns the merged history."""
    from imgtrain.training.batchnorm import frozen_statistics

    history: dict[str, list[float]] = {}
    with frozen_statistics(model) as held:
        if held:
            log.info("%d BatchNormalization layers of the pretrained body keep their statistics (inference mode)", held)
        for stage in stages(cluster.config):
            begin, end = max(first, stage.start), min(stage.end, last_epoch)
            if begin >= end:
                continue
            got = _fit_stage(
                cluster,
                ds,
                model,
                data,
                callbacks,
                weights,
                stage,
                begin,
                end,
                first,
                saved_optimizer if stage.start < first else None,
                log,
            )
            for key, values in got.items():
                history.setdefault(key, []).extend(values)
            if model.stop_training:  # early stopping, Ctrl-C or a pruned trial ends the run, whatever its stage
                break
    return history


def _fit_stage(
    cluster: Cluster,
    ds: Dataset,
    model: keras.Model,
    data: tuple[Batches, ValData],
    callbacks: list[keras.callbacks.Callback],
    weights: dict[int, float] | None,
    stage: Stage,
    begin: int,
    end: int,
    first: int,
    saved_optimizer: keras.optimizers.Optimizer | None,
    log: logging.Logger,
) -> dict[str, list[float]]:
    """One stage's `fit` over epochs begin..end; `saved_optimizer`: the state to continue from (a run resumed
    inside this stage). Returns its history."""
    from imgtrain.training.callbacks import EpochStats, Pinned, Resumable
    from imgtrain.training.fit import compile_model, progress_mode
    from imgtrain.training.schedules import make_optimizer, restore_optimizer

    cfg = cluster.config
    if cfg.freeze_epochs or cfg.unfreeze:
        set_trainable(model, stage, cfg.unfreeze)
    mult = body_lr_mult(cfg, stage)
    optimizer = make_optimizer(cfg, len(data[0]), epochs=stage.end - stage.start, body_mult=mult)
    if saved_optimizer is not None:
        restore_optimizer(optimizer, saved_optimizer, model.trainable_variables)
    onehot = compile_model(model, cfg, ds.num_classes, optimizer)
    cached = _cached_head(cluster, ds, model, onehot, begin, log) if stage.trains == "head" else None
    if len(stages(cfg)) > 1 or mult != 1.0:
        what = (
            "the head alone" + (" on cached features" if cached else "") if stage.trains == "head" else "head and body"
        )
        line = (
            f"stage {stage.number}: {_epochs(begin + 1, end)}, {what}, {len(model.trainable_weights)} trainable "
            f"weights" + (f", body learning rate x {mult:g}" if stage.trains == "body" else "")
        )
        log.info(line)
        if cluster.chief and progress_mode(cfg):  # above Keras' epoch lines, as fastai's fine_tune prints two tables
            print(line, flush=True)
    fitting, train_data, val = model, *data
    if cached:
        fitting, train_data, val = cached
        compile_model(fitting, cfg, ds.num_classes, optimizer)  # the same optimizer: the model saves its state
    for cb in callbacks:
        if isinstance(cb, Pinned):
            cb.pin = model
        if isinstance(cb, EpochStats):
            cb.stage = stage.number if cfg.freeze_epochs else None  # a frozen stage: say which is which
        if isinstance(cb, Resumable) and begin > first:  # a later stage starts where the last one left off
            cb.restore = cb.snapshot()
    train_data.start_at(begin)  # its epoch count follows Keras' on_epoch_end calls, which a new fit does not reset
    # shuffle=False: the batches already come in the (seed, epoch) order; Keras would reorder them with the
    # global NumPy generator, whose state a resumed process does not have
    got: dict[str, list[float]] = fitting.fit(
        train_data,
        validation_data=val,
        epochs=end,
        initial_epoch=begin,
        shuffle=False,
        validation_batch_size=cfg.batch_size if isinstance(val, tuple) else None,
        callbacks=callbacks,
        class_weight=weights,
        verbose=progress_mode(cfg) if cluster.chief else 0,
    ).history
    if fitting.stop_training:
        model.stop_training = True
    return got
