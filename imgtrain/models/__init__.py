"""Models by name: `build_model("cnn_bn", input_shape=(28, 28, 1), num_classes=10)` returns a plain keras.Model.

Every model takes uint8-range pixels (0–255, any float or int dtype) of shape `input_shape` and rescales them
itself, so a saved model needs no preprocessing code beside it: decode, resize, feed. The registry is
models/registry.py; importing this package registers every builder module's models.
"""

from imgtrain.models import backbones, cnn, cost, mlp, resnet  # noqa: F401  (registers the models; cost counts FLOPs)
from imgtrain.models.registry import AUGMENTS, HEAD, MODELS, build_model, register_model, stem

__all__ = ["AUGMENTS", "HEAD", "MODELS", "build_model", "register_model", "stem"]
