"""Named recipes: `imgtrain train --preset NAME` starts from one of these configs (file values and flags still
override). Each states the target it was tuned for; `imgtrain bench --presets` measures time to accuracy from a
cold process (median of 3 runs) and README.md shows the figures.

Their learning rates were chosen on a validation split (10 % of the training set, `--set val_split=0.1`), the
test set untouched, from a doubling grid extended until the best rate was inside it; ties (within one validation
image) went to the lower rate. The chosen recipe then trains on all training images and is scored on test once
(docs/speed.md, "How the presets were chosen").
"""

from __future__ import annotations

from typing import Any

from imgtrain.core.registry import Registry

PRESETS: Registry[dict[str, Any]] = Registry("preset")

FAST_RUN = dict(val_split=0.0, monitor="loss", tensorboard=False, report=False)  # precision: auto, the default


def preset(name: str, about: str, target: dict[str, float], **config: Any) -> None:
    PRESETS.register({"about": about, "target": target, "config": {**FAST_RUN, **config}}, name=name)


preset(
    "mnist-99",
    "MNIST 99.0% in seconds: seed 000's CNN (dense 128), bfloat16, one one-cycle epoch with label smoothing",
    {"accuracy": 0.990, "seconds": 15},
    dataset="mnist",
    model="cnn_small",
    model_options={"dense": 128},
    epochs=1,
    batch_size=128,
    learning_rate=8e-3,
    schedule="onecycle",
    label_smoothing=0.1,
)
preset(
    "mnist-995",
    "MNIST 99.5%: ResNet-9 at widths 16/32/64 with shifts, four one-cycle epochs",
    {"accuracy": 0.995, "seconds": 60},
    dataset="mnist",
    model="resnet9",
    model_options={"widths": [16, 32, 64]},
    augment="shift",
    epochs=4,
    batch_size=256,
    optimizer="adamw",
    learning_rate=8e-3,
    weight_decay=5e-4,
    label_smoothing=0.1,
    schedule="onecycle",
)
preset(
    "fashion-91",
    "Fashion-MNIST 91% fast: seed 000's CNN with BatchNorm and dropout, bfloat16, two one-cycle "
    "epochs with label smoothing",
    {"accuracy": 0.910, "seconds": 30},
    dataset="fashion_mnist",
    model="cnn_small",
    model_options={"dropout": 0.3, "bn": True},
    epochs=2,
    batch_size=128,
    learning_rate=3e-3,
    schedule="onecycle",
    label_smoothing=0.1,
)
preset(
    "fashion-935",
    "Fashion-MNIST 93.5%: the small ResNet-9, horizontal flips, label smoothing, 16 epochs",
    {"accuracy": 0.935, "seconds": 300},
    dataset="fashion_mnist",
    model="resnet9",
    augment="flip",
    epochs=16,
    batch_size=256,
    optimizer="adamw",
    learning_rate=3.2e-2,
    weight_decay=5e-4,
    label_smoothing=0.1,
)


def preset_config(name: str) -> dict[str, Any]:
    return dict(PRESETS.get(name)["config"])
