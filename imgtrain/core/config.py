"""One typed config per run. Defaults live here; a YAML/TOML file and CLI flags only override them.

The resolved config is written into every run directory (config.yaml), so a run can be replayed with
`imgtrain train --config RUN_DIR/config.yaml`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Optional, Union, cast, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from imgtrain.core.errors import ConfigError

# test-time augmentation choices (evaluate.with_tta): "flip" averages each image's outputs with its mirror image's
Tta = Literal["none", "flip"]
TTA: tuple[str, ...] = get_args(Tta)  # ("none", "flip")

Monitor = Literal["val_accuracy", "val_loss", "accuracy", "loss"]


def higher_is_better(metric: str) -> bool:
    """Accuracies improve upwards, losses downwards: the one place that decides the direction of a metric
    (best checkpoint, early stopping's record, the best epoch of a run, the direction of a tune search)."""
    return "acc" in metric


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    # what to train
    dataset: str = Field("fashion_mnist", description="registered name, or folder:PATH, csv:FILE, cifar10:PATH")
    model: str = Field("cnn_bn", description="registered model name (`imgtrain models`)")
    model_options: dict[str, Any] = Field(default_factory=dict, description="keyword options of the model builder")
    augment: Literal["none", "shift", "flip", "flip_shift", "seed004"] = Field(
        "none", description="random augmentation layers placed in the model; active only in training"
    )
    weights: Optional[str] = Field(
        None,
        description="pretrained backbones (`imgtrain models`): imagenet (Keras' download and cache), none "
        "(random), or the path of a weights file for the backbone; None: imagenet for a backbone",
    )
    freeze_epochs: int = Field(
        0,
        ge=0,
        description="two-stage fine-tuning of a pretrained start (fastai's fine_tune): epochs that train only "
        "the head, everything before it frozen (BatchNormalization in inference mode); then the "
        "rest of the epochs train the body too. Each stage has its own schedule",
    )
    cache_features: bool = Field(
        True,
        description="frozen stage: compute the body's output once (kept on disk) and train the head on it, "
        "when nothing random acts before the head (no augmentation); streamed folders too",
    )
    unfreeze: int = Field(
        0,
        ge=0,
        description="after the frozen stage, train only the last N blocks of the body (and "
        "the head); 0: the whole body",
    )
    backbone_lr_mult: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="the body's learning rate as a multiple of the head's while a pretrained "
        "body trains (a backbone with weights, or init_from); e.g. 0.1 for a large "
        "ImageNet backbone",
    )
    init_from: Optional[str] = Field(
        None,
        description="start from an earlier run's model (run directory or .keras file): its head is kept when "
        "the classes match (training continues), replaced when they differ; image_size and "
        "channels default to that model's input",
    )

    # data
    val_split: float = Field(0.1, ge=0.0, lt=1.0, description="fraction of train held out for validation, stratified")
    test_split: float = Field(0.1, ge=0.0, lt=1.0, description="fraction carved for test when the data has no test set")
    image_size: Optional[tuple[int, int]] = Field(
        None, description="(height, width) in pixels; None keeps the data's own"
    )
    channels: Optional[Literal[1, 3]] = Field(None, description="1 grayscale or 3 RGB; None keeps the data's own")
    classes: Optional[list[Union[int, str]]] = Field(
        None,
        description="train on these classes only (names, or indices), e.g. [5, 6, 7, 8, 9]; renumbered in the "
        "dataset's class order",
    )
    train_limit: Optional[int] = Field(None, gt=0, description="use at most this many training images (stratified)")
    test_limit: Optional[int] = Field(None, gt=0, description="use at most this many test images (stratified)")
    decisions: Optional[str] = Field(
        None,
        description="a CSV of keep/relabel/drop decisions (audit.html downloads one): images dropped or relabelled "
        "as the data are read; your files are never changed",
    )
    fold: Optional[str] = Field(
        None,
        pattern=r"^[1-9][0-9]*/[1-9][0-9]*$",
        description="K/N: cross-validation fold K of N (stratified, seeded); the run trains on the other folds of "
        "the training images and tests on this one (imgtrain audit runs one per fold)",
    )
    stream: Optional[bool] = Field(
        None, description="decode image files per batch; None: only when they exceed 512 MiB"
    )
    allow_outside_root: bool = Field(
        False,
        description="folder and csv: read files that lead outside the dataset "
        "folder (symlinks out; in a CSV also ../ and absolute paths)",
    )

    # optimisation
    epochs: int = Field(15, gt=0, description="passes over the training set")
    batch_size: Union[Literal["auto"], int] = Field(
        "auto",
        description="images per gradient step; auto: 128, halved (to 16 at least) until an epoch has 25 steps "
        "(a folder of 900 photos gets 32); run.json records the choice",
    )
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    learning_rate: float = Field(2e-3, gt=0.0, description="peak learning rate (at lr_base_batch when lr_scaling)")
    lr_scaling: Literal["none", "linear", "sqrt"] = Field(
        "none",
        description="peak rate × batch_size/lr_base_batch (linear, Goyal et al. 2017) or its square root; "
        "for a global batch grown with the number of devices",
    )
    lr_base_batch: int = Field(128, gt=0, description="lr_scaling: the batch size at which learning_rate is the peak")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum / RMSprop momentum")
    weight_decay: float = Field(0.0, ge=0.0, description="decoupled weight decay (adamw, sgd)")
    schedule: Literal["constant", "step", "cosine", "onecycle"] = Field(
        "onecycle", description="learning-rate schedule over all steps of the run"
    )
    warmup_fraction: float = Field(0.25, ge=0.0, lt=1.0, description="onecycle: fraction of steps spent warming up")
    step_epochs: int = Field(5, gt=0, description="step: epochs between decays")
    step_gamma: float = Field(0.5, gt=0.0, le=1.0, description="step: factor applied every step_epochs")
    label_mode: Literal["sparse", "onehot"] = Field(
        "sparse", description="integer labels or one-hot vectors; label_smoothing > 0 makes it onehot (recorded so)"
    )
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="needs one-hot targets: sets label_mode onehot")
    class_weight: Union[Literal["none", "balanced"], dict[str, float]] = Field(
        "none", description="'balanced', or {class name or index: weight}"
    )

    # callbacks
    monitor: Monitor = Field("val_accuracy", description="metric for best checkpoint, early stopping and plateau")
    early_stopping: int = Field(0, ge=0, description="patience in epochs; 0 turns it off")
    reduce_lr_patience: int = Field(0, ge=0, description="ReduceLROnPlateau patience in epochs; 0 turns it off")
    reduce_lr_factor: float = Field(0.5, gt=0.0, lt=1.0)
    min_lr: float = Field(1e-5, ge=0.0)
    jit_compile: Optional[bool] = Field(
        None,
        description="XLA-compile the train step; None: off on TensorFlow, where that is 1.6x faster for these "
        "CNNs on CPU (Keras 3.15 + TF 2.21, seed 000 CNN: 4,573 vs 2,912 img/s), Keras' 'auto' on JAX",
    )
    precision: Literal["auto", "float32", "mixed_bfloat16", "mixed_float16"] = Field(
        "auto",
        description="compute dtype; variables stay float32. auto: mixed_bfloat16 on a CPU with AVX512_BF16 or "
        "AMX (1.5-2.4x faster here at the same accuracy) and on GPUs of compute capability 8+, "
        "mixed_float16 on 7.x GPUs, float32 otherwise and for depthwise-convolution backbones on "
        "a CPU; run.json records the choice and why (docs/speed.md)",
    )
    tensorboard: bool = Field(True, description="write TensorBoard logs under RUN_DIR/tensorboard")
    save_h5: bool = Field(False, description="also write the legacy best.h5")
    report: bool = Field(True, description="write the plots and report.html at the end of the run")
    tta: Tta = Field(
        "none",
        description="test-time augmentation when the run scores its test set: flip averages each image's "
        "outputs with its mirror image's (for data trained with flips, not digits)",
    )
    track: Literal["none", "mlflow"] = Field(
        "none",
        description="mlflow: log the config as params, each epoch's metrics, the test metrics, and the model "
        "and report as artifacts to an MLflow run (needs `pip install mlflow`; docs/tracking.md)",
    )
    tracking_uri: Optional[str] = Field(
        None,
        description="where MLflow tracks: http://HOST:PORT for a server, or a local store; None: "
        "$MLFLOW_TRACKING_URI, else MLflow's default, sqlite:///mlflow.db in the working directory (no server "
        "needed; MLflow 3 refuses its older file store, ./mlruns)",
    )
    experiment: str = Field("imgtrain", min_length=1, description="the MLflow experiment the run goes in")

    # run
    seed: int = Field(0, ge=0, description="seeds Python, NumPy and the backend")
    backend: Literal["tensorflow", "jax"] = Field(
        "tensorflow", description="Keras backend for this run; both are installed and tested (jax: data-parallel)"
    )
    out: Optional[str] = Field(None, description="run directory; default runs/<dataset>-<model>-<time>")
    verbose: Literal["auto", "bar", "epoch", "quiet"] = Field(
        "auto",
        description="progress: a bar with ETA on a terminal, a live table of the epochs in a Jupyter "
        "notebook, one line per epoch otherwise",
    )

    # several devices or processes (docs/distributed.md)
    distribute: Literal["none", "data-parallel"] = Field(
        "none",
        description="data-parallel: Keras' DataParallel over every device of every process (backend jax); "
        "batch_size stays the global batch",
    )
    num_processes: Optional[int] = Field(
        None, gt=0, description="processes in the job; None: $KERAS_DISTRIBUTION_NUM_PROCESSES, else 1"
    )
    process_id: Optional[int] = Field(
        None,
        ge=0,
        description="this process, 0 to num_processes-1 (0 writes the run directory); "
        "None: $KERAS_DISTRIBUTION_PROCESS_ID, else 0",
    )
    coordinator: Optional[str] = Field(
        None,
        description="HOST:PORT where process 0 listens; None: $KERAS_DISTRIBUTION_JOB_ADDRESSES, "
        "else $JAX_COORDINATOR_ADDRESS",
    )

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch(cls, value: Any) -> Any:
        if value == "auto":
            return value
        try:
            number = int(value)
        except (TypeError, ValueError, OverflowError):  # OverflowError: inf
            number = None
        if number is None or number != value and str(number) != str(value).strip() or number <= 0:
            raise ValueError(f"config batch_size: 'auto' or a whole number above 0 (got {value!r})")
        return number

    @model_validator(mode="before")
    @classmethod
    def _in_effect(cls, values: Any) -> Any:
        """Record what the run will do: label smoothing trains on one-hot targets, so label_mode says onehot."""
        if (
            isinstance(values, dict)
            and isinstance(values.get("label_smoothing"), (int, float))
            and values["label_smoothing"] > 0
            and values.get("label_mode", "sparse") == "sparse"
        ):
            values = {**values, "label_mode": "onehot"}
        return values

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        if self.monitor.startswith("val_") and self.val_split == 0:
            raise ValueError(f"monitor {self.monitor!r} needs val_split > 0; use monitor 'accuracy' or 'loss'")
        if self.distribute != "none" and self.backend != "jax":
            raise ValueError(
                f"distribute {self.distribute!r} runs on backend 'jax' (got {self.backend!r}): Keras 3's "
                "fit under TensorFlow's MultiWorkerMirroredStrategy fails (keras-team/keras#20585)"
            )
        if self.distribute == "none" and (self.num_processes or 0) > 1:
            raise ValueError(f"num_processes {self.num_processes} needs distribute 'data-parallel' (got 'none')")
        if self.process_id is not None and self.num_processes is not None and self.process_id >= self.num_processes:
            raise ValueError(
                f"process_id {self.process_id} is not below num_processes {self.num_processes}; "
                f"valid: 0 to {self.num_processes - 1}"
            )
        if self.reduce_lr_patience and self.schedule != "constant":
            raise ValueError(
                f"reduce_lr_patience needs schedule 'constant' (got {self.schedule!r}): "
                "a plateau cut and a schedule both set the learning rate"
            )
        return self


def _one_line(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "config"
        if e["type"] == "extra_forbidden":
            parts.append(_unknown_key(loc))
        elif e["type"] == "value_error":
            parts.append(e["msg"].removeprefix("Value error, "))
        else:
            parts.append(f"config {loc}: {e['msg']} (got {e['input']!r})")
    return "; ".join(parts)


def _unknown_key(key: str) -> str:
    """The one line for a key TrainConfig does not have: the close ones if any (a typo), else every key."""
    import difflib

    close = difflib.get_close_matches(key, TrainConfig.model_fields, n=3, cutoff=0.6)
    if close:
        return (
            f"unknown config key {key!r}; did you mean {' or '.join(map(repr, close))}? (`imgtrain config` lists all)"
        )
    return f"unknown config key {key!r}; valid keys: {', '.join(TrainConfig.model_fields)}"


def make_config(**values: Any) -> TrainConfig:
    try:
        return TrainConfig(**values)
    except ValidationError as err:
        raise ConfigError(_one_line(err)) from err


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"config file {str(path)!r}: unknown format {path.suffix!r}; valid: .yaml, .yml, .toml")
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"config file {str(path)!r} does not parse: {str(err).splitlines()[0]}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys to values")
    return data


def parse_assignment(text: str) -> tuple[list[str], Any]:
    """'model_options.width=64' -> (['model_options', 'width'], 64); values are read as YAML scalars."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set expects KEY=VALUE (got {text!r})")
    try:
        value = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    assignments: Sequence[str] = (),
    base: dict[str, Any] | None = None,
) -> TrainConfig:
    """`base` (a preset), then file values, then `overrides` (CLI flags), then `KEY=VALUE` assignments,
    validated together."""
    return make_config(**config_values(path, overrides, assignments, base))


def config_values(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    assignments: Sequence[str] = (),
    base: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The keys that `load_config` validates: only those given (defaults are not filled in)."""
    values: dict[str, Any] = {**(base or {}), **(read_config_file(path) if path else {})}
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    for text in assignments:
        keys, value = parse_assignment(text)
        node = values
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: {k!r} is not a mapping")
        node[keys[-1]] = value
    return values


def save_config(cfg: TrainConfig) -> str:
    """The resolved config as YAML text (tuples become lists so that the file stays plain YAML)."""
    text: str = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    return text


def describe() -> str:
    """Markdown table of every config key with its type, default and meaning (`imgtrain config`, docs/config.md)."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in TrainConfig.model_fields.items():
        kind = str(field.annotation)
        kind = kind.replace("typing.", "").replace("<class '", "").replace("'>", "")
        # the factories here take no arguments (none asks for the validated data)
        default = cast("Callable[[], Any]", field.default_factory)() if field.default_factory else field.default
        lines.append(f"| `{name}` | `{kind}` | `{default!r}` | {field.description or ''} |")
    return "\n".join(lines)


CONFIG_DOC_HEAD = """# Config keys

Every option of `imgtrain train`, as a key of a YAML/TOML config file, a `--set KEY=VALUE` flag, or a keyword
of `imgtrain.train(...)`. Unknown keys and wrong values are errors that name the valid choices.
This file is generated by `imgtrain config > docs/config.md`.
"""
