"""The `auto` settings, chosen per run and recorded with their reason: `precision` (per machine and model) and
`batch_size` (per training-set size).

precision: the fastest compute dtype that this machine runs without losing accuracy.

bfloat16 where the hardware has bfloat16 arithmetic (a CPU with AVX512_BF16 or AMX, a GPU of compute capability
8.0 or later), float16 with loss scaling on older GPUs (7.x), float32 otherwise. Variables, the softmax and the loss
stay float32 under either mixed policy. The choice and its reason go to run.json and train.log; config.yaml records
the policy chosen, so a replay or a resumed run computes in the same dtype.

Measured on a 2-core Xeon with AMX (docs/speed.md, "precision: auto"): bfloat16 trains imgtrain's convolutional
models faster than float32 at the same validation accuracy; the MLP and the backbones built on depthwise
convolutions (MobileNet, EfficientNet, ConvNeXt) gain nothing or lose, so they keep float32 on a CPU.
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgtrain.core.errors import ConfigError

if TYPE_CHECKING:
    from imgtrain.core.config import TrainConfig

POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")
BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16"}  # /proc/cpuinfo flags of CPUs with bfloat16 dot products
# oneDNN's ISA ladder (ONEDNN_MAX_CPU_ISA caps what TensorFlow's kernels use): the first rung that computes bfloat16
# with each flag. Capped below it, a bfloat16 convolution finds no kernel ("could not create a primitive").
ONEDNN_ISAS = (
    "SSE41 AVX AVX2 AVX2_VNNI AVX2_VNNI_2 AVX512_CORE AVX512_CORE_VNNI AVX512_CORE_BF16 AVX512_CORE_FP16 "
    "AVX10_1_512 AVX512_CORE_AMX AVX10_1_512_AMX AVX512_CORE_AMX_FP16 AVX10_1_512_AMX_FP16"
).split()
BF16_FROM_ISA = {"avx512_bf16": "AVX512_CORE_BF16", "amx_bf16": "AVX512_CORE_AMX"}
# models that keep float32 on a CPU with bfloat16, by the layers they contain (models/kinds.py), and why (measured:
# docs/speed.md: the MLP; MobileNetV3 2x slower, EfficientNet and ConvNeXt no faster in bfloat16)
CONVOLUTIONS = frozenset(
    {"Conv1D", "Conv2D", "Conv3D", "Conv2DTranspose", "SeparableConv2D", "DepthwiseConv2D", "GroupedConv"}
)
DEPTHWISE = {"DepthwiseConv2D", "SeparableConv2D", "GroupedConv"}
DENSE_ONLY = "a network without convolutions is memory-bound: bfloat16 trains it no faster on a CPU and cost accuracy"
DEPTHWISE_WHY = (
    "its depthwise convolutions train no faster in bfloat16 than in float32 on a CPU (MobileNetV3: 2x slower)"
)


def float32_on_cpu(kinds: frozenset[str] | None) -> str | None:
    """Why a model with these layer kinds keeps float32 on a CPU with bfloat16, or None (None kinds: not known
    before it is built, as for a function that builds it: it is taken for a plain convolutional network)."""
    if kinds is None:
        return None
    if kinds & DEPTHWISE:
        return DEPTHWISE_WHY
    if not kinds & CONVOLUTIONS:
        return DENSE_ONLY
    return None


def cpu_info() -> tuple[str, set[str]]:
    """(model name, instruction-set flags) of the first CPU in /proc/cpuinfo; elsewhere what `platform` knows."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields.get("model name") or platform.processor() or platform.machine(), set(fields.get("flags", "").split())


def usable_flags(flags: set[str], max_isa: str | None) -> set[str]:
    """`flags` less the bfloat16 ones that oneDNN may not use under ONEDNN_MAX_CPU_ISA=`max_isa` (None, "ALL",
    "DEFAULT" or a name it does not know: no cap)."""
    cap = (max_isa or "").upper()
    if cap not in ONEDNN_ISAS:
        return flags
    return {f for f in flags if f not in BF16_FROM_ISA or ONEDNN_ISAS.index(cap) >= ONEDNN_ISAS.index(BF16_FROM_ISA[f])}


def gpu_capability(backend: str) -> tuple[str, float] | None:
    """(name, CUDA compute capability) of the first GPU the backend sees, or None on a CPU-only machine."""
    if backend == "jax":
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        return (gpus[0].device_kind, float(getattr(gpus[0], "compute_capability", 0) or 0)) if gpus else None
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    details = tf.config.experimental.get_device_details(gpus[0])
    major, minor = details.get("compute_capability", (0, 0))
    return details.get("device_name", gpus[0].name), major + minor / 10


def choose(
    model: str, flags: set[str], gpu: tuple[str, float] | None, kinds: frozenset[str] | None = None
) -> tuple[str, str]:
    """(policy, why) for `model`, whose layers are of `kinds` (models/kinds.py), on a machine with CPU `flags` (see
    cpu_flags) and `gpu` (see gpu_capability)."""
    if gpu is not None:
        name, capability = gpu
        if capability >= 8.0:
            return "mixed_bfloat16", f"GPU {name} (compute capability {capability:g}) has bfloat16 units"
        if capability >= 7.0:
            return "mixed_float16", f"GPU {name} (compute capability {capability:g}) has float16 tensor cores"
        return "float32", f"GPU {name} (compute capability {capability:g}) has no fast half-precision units"
    has = sorted(BF16_CPU_FLAGS & flags)
    if not has:
        return "float32", "this CPU has no bfloat16 instructions (avx512_bf16 or amx_bf16)"
    reason = float32_on_cpu(kinds)
    if reason:
        return "float32", f"{model}: {reason} (this CPU has {', '.join(has)})"
    return "mixed_bfloat16", f"this CPU has {', '.join(has)}"


# batch_size auto: the largest of these that still gives an epoch MIN_STEPS steps. Measured (docs/speed.md): on the
# MNIST-size sets batch 128 trains as fast as 256 per epoch's accuracy (256 is 1.3x the img/s but 0.1-0.9 points
# behind after 3 epochs at the same or sqrt-scaled rate); on a folder of 900 photos, 5 epochs of cnn_bn reached
# 0.65 validation accuracy at batch 128 (40 steps), 0.96 at 32 (140 steps).
AUTO_BATCHES = (128, 64, 32, 16)
MIN_STEPS = 25


def auto_batch(train_images: int) -> tuple[int, str]:
    """(batch size, why) for a training set of `train_images`."""
    batch = min(
        next((b for b in AUTO_BATCHES if train_images / b >= MIN_STEPS), AUTO_BATCHES[-1]), max(train_images, 1)
    )  # a set smaller than the smallest batch: one step of all of it
    why = f"{train_images} training images: {math.ceil(train_images / batch)} steps an epoch"
    if batch < AUTO_BATCHES[0]:
        why += f" (batch {AUTO_BATCHES[0]} would give only {math.ceil(train_images / AUTO_BATCHES[0])})"
    return batch, why


def cpu_flags(backend: str, flags: set[str] | None = None) -> set[str]:
    """This CPU's flags (or `flags`, read already) less those the backend's kernels may not use: TensorFlow's are
    oneDNN's, which ONEDNN_MAX_CPU_ISA caps."""
    flags = cpu_info()[1] if flags is None else flags
    return usable_flags(flags, os.environ.get("ONEDNN_MAX_CPU_ISA")) if backend == "tensorflow" else flags


def bf16_capped(backend: str, flags: set[str] | None = None) -> str | None:
    """Why oneDNN may not compute bfloat16 although this CPU has it (ONEDNN_MAX_CPU_ISA below the rung that does:
    a bfloat16 convolution then aborts with "could not create a primitive"), or None."""
    flags = cpu_info()[1] if flags is None else flags
    usable = cpu_flags(backend, flags)
    if BF16_CPU_FLAGS & (flags - usable) and not BF16_CPU_FLAGS & usable:
        return f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA')} keeps oneDNN from this CPU's " + ", ".join(
            sorted(BF16_CPU_FLAGS & (flags - usable))
        )
    return None


def resolve(
    cfg: TrainConfig,
    fixed: tuple[str, str] | None = None,
    kinds: Callable[[], frozenset[str] | None] = lambda: None,
) -> tuple[TrainConfig, dict[str, Any]]:
    """`cfg` with `precision: auto` replaced by this machine's choice (a copy), and the record for run.json:
    {"asked", "chosen", "why"}. An unfinished run in cfg.out resumes in the precision it started with. `fixed`:
    (policy, why) that the model imposes (one built in Python computes in the policy it was built with); `kinds`:
    the model's layer kinds, asked only where they matter (a CPU with bfloat16)."""
    if fixed is not None:
        return cfg.model_copy(update={"precision": fixed[0]}), {
            "asked": cfg.precision,
            "chosen": fixed[0],
            "why": fixed[1],
        }
    if cfg.precision != "auto":
        capped = bf16_capped(cfg.backend) if cfg.precision == "mixed_bfloat16" else None
        if capped and gpu_capability(cfg.backend) is None:
            raise ConfigError(f"precision mixed_bfloat16 cannot run here: {capped}; use precision float32 or auto")
        return cfg, {"asked": cfg.precision, "chosen": cfg.precision, "why": "set in the config"}
    started = _started_with(cfg.out, "precision")
    if started in POLICIES:
        policy, why = started, "the precision this unfinished run started with"
    else:
        flags = cpu_info()[1]  # /proc/cpuinfo read once
        usable, gpu = cpu_flags(cfg.backend, flags), gpu_capability(cfg.backend)
        policy, why = choose(cfg.model, usable, gpu, kinds() if gpu is None and BF16_CPU_FLAGS & usable else None)
        why = bf16_capped(cfg.backend, flags) or why
    return cfg.model_copy(update={"precision": policy}), {"asked": "auto", "chosen": policy, "why": why}


def resolve_batch(cfg: TrainConfig, train_images: int | None) -> tuple[TrainConfig, dict[str, Any]]:
    """`cfg` with `batch_size: auto` replaced (a copy) and its record for run.json. `train_images` None: not known
    yet (a data-parallel job fixes its global batch before the data are read), which takes the largest batch."""
    if cfg.batch_size != "auto":
        return cfg, {"asked": cfg.batch_size, "chosen": cfg.batch_size, "why": "set in the config"}
    started = _started_with(cfg.out, "batch_size")
    if isinstance(started, int):
        batch, why = started, "the batch size this unfinished run started with"
    elif train_images is None:
        batch, why = AUTO_BATCHES[0], "a data-parallel job's global batch"
    else:
        batch, why = auto_batch(train_images)
    return cfg.model_copy(update={"batch_size": batch}), {"asked": "auto", "chosen": batch, "why": why}


def _started_with(out: str | None, key: str) -> Any:
    """`key` of the config.yaml of the run in `out` (None if there is none): a resumed run keeps what it chose."""
    if not out or not (Path(out) / "config.yaml").is_file():
        return None
    import yaml

    try:
        saved = yaml.safe_load((Path(out) / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    return saved.get(key) if isinstance(saved, dict) else None
