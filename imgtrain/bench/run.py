"""`imgtrain bench`: the seed notes' code against imgtrain's path, on the same models and data, in one process.

Run: `make bench` (all sections, writes benchmarks/results.json and benchmarks/results.md) or
`imgtrain bench --quick` (small sizes, ~2 min: checks that everything runs, not the speed).

Epochs of the two sides alternate (A, B, A, B, ...) so that a machine whose speed drifts (a shared 2-core VM here
swings between ~3,000 and ~5,000 img/s on one job) hurts both alike; throughput is the median over the epochs after
the first (warm-up). Side A is the seed code as the notes write it: float pixels divided by 255 in NumPy, a
Sequential model, `fit(x, y, batch_size=...)` with Keras' defaults. Side B is imgtrain: uint8 batches in a
(seed, epoch) order, the rescale inside the model, bfloat16 compute, a larger batch with a one-cycle schedule.
The "step alone" figure feeds imgtrain's model one fixed in-memory batch, over and over: the ceiling of any
training loop for that model here, which tells how much of a gap is the input pipeline and how much the kernels.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

from imgtrain.bench.common import matmul_flops
from imgtrain.bench.training import explain_speed, preset_runs, training_markdown, training_pairs
from imgtrain.core.auto import bf16_capped, cpu_info
from imgtrain.core.errors import ImgtrainError

# ----- the seed notes' code (side A) -----

# ----- the pieces that time things -----


# ----- time to accuracy: cold `imgtrain train --preset NAME` processes -----


# ----- the whole benchmark -----

SECTIONS = (
    "training",
    "folder",
    "transfer",
    "explain",
    "process",
    "audit",
)  # `--section`: what a run of the bench measures


def run_bench(
    quick: bool = False,
    presets: list[str] | None = None,
    repeats: int = 3,
    log: Callable[[str], object] = print,
    sections: Sequence[str] = SECTIONS,
) -> dict[str, Any]:
    import keras
    import tensorflow as tf

    cpu, flags = cpu_info()
    capped = bf16_capped("tensorflow", flags)
    if capped:  # its bfloat16 sides would abort (or crash) in oneDNN
        raise ImgtrainError(f"imgtrain bench times bfloat16 beside float32, which cannot run here: {capped}")
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "quick": quick,
        "machine": {
            "cpu": cpu,
            "cores": os.cpu_count(),
            "bf16": bool({"avx512_bf16", "amx_bf16"} & flags),
            "python": platform.python_version(),
            "keras": keras.__version__,
            "tensorflow": tf.__version__,
        },
    }
    if "training" in sections:
        n = 2048 if quick else 4096
        result["matmul_gflops"] = {
            "float32": matmul_flops(n, "float32") / 1e9,
            "bfloat16": matmul_flops(n, "bfloat16") / 1e9,
        }
        log(
            f"matmul {n}x{n}: {result['matmul_gflops']['float32']:.0f} GFLOP/s float32, "
            f"{result['matmul_gflops']['bfloat16']:.0f} GFLOP/s bfloat16"
        )
        result["training"] = training_pairs(quick, result["matmul_gflops"], log)
    if "folder" in sections:
        from imgtrain.bench.folder import folder_pipeline

        log("folder pipeline")
        result["folder"] = folder_pipeline(600 if quick else 3000, 64 if quick else 480, log)
    if "transfer" in sections:
        from imgtrain.bench.transfer import transfer_bench

        result["transfer"] = {"date": result["date"], "machine": result["machine"], **transfer_bench(quick, log)}
    if "explain" in sections:
        result["explain"] = {"date": result["date"], "machine": result["machine"], **explain_speed(log)}
    if "process" in sections:
        from imgtrain.bench.process import process_bench

        log("whole processes: the notes' scripts against imgtrain train")
        result["process"] = {"date": result["date"], "machine": result["machine"], **process_bench(quick, log)}
    if "audit" in sections:
        from imgtrain.bench.audit import audit_bench

        result["audit"] = {"date": result["date"], "machine": result["machine"], **audit_bench(quick, log)}
    if presets:
        log("time to accuracy (cold processes)")
        result["presets"] = preset_runs(presets, repeats, log)
    from imgtrain.core.resources import peak_rss_mib

    result["peak_rss_mib"] = peak_rss_mib()  # of this process: both sides' models and data
    return result


def merged(result: dict[str, Any], earlier: dict[str, Any] | None) -> dict[str, Any]:
    """`result` with the sections it did not measure taken from an earlier results.json (`--section` runs one
    part of the bench without losing the others' tables); each keeps the date it was measured."""
    if not earlier:
        return result
    kept = {k: v for k, v in earlier.items() if k not in result and k in (*SECTIONS, "matmul_gflops", "presets")}
    if "training" in kept:  # the header's date and machine are those of the seed tables
        kept.update({k: earlier[k] for k in ("date", "machine", "quick") if k in earlier})
    return {**result, **kept}


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"Measured {result['date']} on {m['cpu']} ({m['cores']} cores, bfloat16 "
        f"{'yes' if m['bf16'] else 'no'}), Keras {m['keras']}, TensorFlow {m['tensorflow']}"
        + (" — quick mode, small sizes" if result["quick"] else "")
        + "."
    ]
    if "training" in result:
        lines += training_markdown(result)
    if "folder" in result:
        from imgtrain.bench.folder import markdown as folder_markdown

        lines += folder_markdown(result["folder"])
    if "transfer" in result:
        from imgtrain.bench.transfer import markdown as transfer_markdown

        lines += transfer_markdown(result["transfer"])
    if "explain" in result:
        e = result["explain"]
        where = e.get("machine", {}).get("cpu", "?")
        lines += [
            "",
            f"Heatmaps ({e['method']}, seed 000's CNN as `{e['model']}`, 28×28, measured {e['date']} on "
            f"{where}): one "
            f"image {e['one_image_s'] * 1e3:.1f} ms, a batch of 64 {e['batch_64_s'] * 1e3:.0f} ms "
            "(after a warm-up call, best of 20).",
        ]
    if "process" in result:
        from imgtrain.bench.process import markdown as process_markdown

        lines += process_markdown(result["process"])
    if "audit" in result:
        from imgtrain.bench.audit import markdown as audit_markdown

        lines += audit_markdown(result["audit"])
    if result.get("presets"):
        lines += [
            "",
            "Time to accuracy, cold `imgtrain train --preset NAME` (median of "
            f"{len(next(iter(result['presets'].values()))['runs'])} runs):",
            "",
            "| preset | target | median test acc | median wall s | peak RSS MiB |",
            "|---|---|---|---|---|",
        ]
        for name, p in result["presets"].items():
            t = p["target"] or {}
            lines.append(
                f"| `{name}` | {t.get('accuracy', '-')} in ≤ {t.get('seconds', '-')} s | "
                f"{p['median_test_accuracy']:.4f} | {p['median_wall_s']:.1f} | "
                f"{max(r['peak_rss_mib'] or 0 for r in p['runs']):,.0f} |"
            )
    lines += ["", f"Peak RSS of the benchmark process: {result['peak_rss_mib'] or 0:,.0f} MiB."]
    return "\n".join(lines)
