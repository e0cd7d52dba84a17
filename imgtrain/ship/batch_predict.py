"""Predictions for many files, streamed to a CSV: files decoded in threads a batch ahead, predicted a batch at a
time, rows appended and flushed after each batch, so memory does not grow with the number of files and a killed
run loses at most the batch it was writing. Run the same command again and it continues: the rows of every file
already written are kept (a file whose rows were cut off is written again), none twice. `shard` (K, N) scores every
N-th file from the K-th (1-based), so that N processes or machines split one folder.

The CSV has the columns of `imgtrain predict --format csv` (file, rank, class, index, probability, error, note):
a file's top-k rows, or one row with its error. Beside it, `NAME.json` records which model and settings wrote it;
continuing with another model is refused.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from imgtrain.analysis.predict import CSV_COLUMNS, csv_rows, decode_files, fill_top
from imgtrain.core.errors import ImgtrainError

if TYPE_CHECKING:
    import keras


def parse_shard(text: str) -> tuple[int, int]:
    """ "K/N" -> (K, N) with 1 <= K <= N; one line otherwise."""
    parts = text.split("/")
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or not 1 <= int(parts[0]) <= int(parts[1]):
        raise ImgtrainError(f"--shard {text!r}: K/N with 1 <= K <= N, e.g. 1/4 for the first of four shards")
    return int(parts[0]), int(parts[1])


def _identity(model_file: Path, class_names: list[str], top_k: int, shard: tuple[int, int], tta: str) -> dict[str, Any]:
    from imgtrain.core.hashing import sha256_files

    return {
        "model": str(model_file),
        "model_sha256": sha256_files([model_file]),
        "class_names": class_names,
        "top_k": top_k,
        "shard": f"{shard[0]}/{shard[1]}",
        "tta": tta,
    }


def completed(path: Path, top_k: int) -> tuple[set[str], int]:
    """(files whose rows are complete, byte length of the CSV up to the last of them). A file is complete with
    its `top_k` ranked rows or one error row; rows after the last complete file (cut off by a kill) are not."""
    data = path.read_bytes()
    lines = data.split(b"\n")[:-1]  # the text after the last newline is an unfinished line
    if not lines:
        return set(), 0
    keep = len(lines[0]) + 1  # the header
    done: set[str] = set()
    group: list[list[str]] = []
    offset = keep
    for line in lines[1:]:
        row = next(csv.reader([line.decode("utf-8", errors="replace")]))
        if group and row[0] != group[0][0]:
            group = []
        group.append(row)
        offset += len(line) + 1
        if (len(group) == 1 and row[5]) or [r[1] for r in group] == [str(i + 1) for i in range(top_k)]:
            done.add(row[0])
            keep = offset
            group = []
    return done, keep


def _open(out: Path, identity: dict[str, Any]) -> tuple[set[str], Any]:
    """(files done earlier, the CSV opened to append): a new file with its header, or an earlier one of the same
    model and settings trimmed to its last complete file."""
    side = out.with_name(out.name + ".json")
    if out.exists():
        earlier = json.loads(side.read_text()) if side.is_file() else None
        if earlier is None:
            raise ImgtrainError(f"{out} exists and was not written by imgtrain predict; choose another --output")
        keys = ("model_sha256", "class_names", "top_k", "shard", "tta")
        changed = [k for k in keys if earlier.get(k, "none" if k == "tta" else None) != identity[k]]
        if changed:
            what = "another model" if "model_sha256" in changed else f"other settings ({', '.join(changed)})"
            raise ImgtrainError(f"{out} holds predictions of {what}; choose another --output to keep both")
        done, keep = completed(out, identity["top_k"])
        os.truncate(out, keep)
        f = open(out, "a", newline="", encoding="utf-8")
        if keep == 0:  # killed before its header was written
            csv.writer(f, lineterminator="\n").writerow(CSV_COLUMNS)
        return done, f
    from imgtrain.core.saving import atomic_write_json

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(side, identity)
    f = open(out, "w", newline="", encoding="utf-8")
    csv.writer(f, lineterminator="\n").writerow(CSV_COLUMNS)
    f.flush()
    return set(), f


def _lines(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(t for r in rows for t in csv_rows(r))
    return buf.getvalue()


def _batches(chunks: list[list[str]], shape: tuple[int, int, int]) -> Iterator[tuple[list[Any], Any]]:
    """Decoded batches (decode_files) in order, two decoding ahead in threads (Pillow lets go of the GIL while it
    decodes)."""
    with ThreadPoolExecutor(2) as pool:
        ahead = deque(pool.submit(decode_files, c, shape) for c in chunks[:2])
        for b in range(len(chunks)):
            result = ahead.popleft().result()
            if b + 2 < len(chunks):
                ahead.append(pool.submit(decode_files, chunks[b + 2], shape))
            yield result


def predict_to_csv(
    model: keras.Model,
    model_file: Path,
    paths: list[str],
    class_names: list[str],
    out: Path,
    *,
    top_k: int = 3,
    batch_size: int = 256,
    shard: tuple[int, int] = (1, 1),
    tta: str = "none",
    progress: Callable[[int, int, float], object] | None = None,
) -> dict[str, Any]:
    """Write (or continue) `out` with `model`'s predictions (`model_file`: the file it was loaded from, which names
    it in NAME.json; `tta`: what `model` averages over, recorded there); {'files', 'kept', 'written', 'skipped',
    'notes', 'seconds'} of this shard."""
    k = max(1, min(top_k, len(class_names)))
    mine = paths[shard[0] - 1 :: shard[1]]
    done, f = _open(out, _identity(model_file, class_names, k, shard, tta))
    todo = [p for p in mine if p not in done]
    # batches on the same grid as an uninterrupted run, the one the cut fell in scored whole again: each file is
    # predicted in the same company, so a continued CSV is the same bytes on any CPU (float32 kernels round a row
    # differently with another batch around it: seen under ONEDNN_MAX_CPU_ISA=AVX2)
    grid = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
    shape = cast("tuple[int, int, int]", tuple(model.input_shape[1:]))  # (h, w, c) of an image model
    t0, written, skipped = time.perf_counter(), 0, 0
    notes: list[tuple[str, str]] = []
    try:
        for rows, x in _batches([c for c in grid if any(p not in done for p in c)], shape):
            if x is not None:
                fill_top(rows, np.asarray(model.predict_on_batch(x)), class_names, k)
            rows = [r for r in rows if r["file"] not in done]
            f.write(_lines(rows))
            f.flush()
            os.fsync(f.fileno())  # a kill after this loses nothing of this batch
            written += len(rows)
            skipped += sum(1 for r in rows if r["error"])
            notes += [(r["file"], r["note"]) for r in rows if r["note"]][: max(0, 10 - len(notes))]
            if progress:
                progress(written, len(todo), time.perf_counter() - t0)
    finally:
        f.close()
    return {
        "files": len(mine),
        "kept": len(mine) - len(todo),
        "written": written,
        "skipped": skipped,
        "notes": notes,
        "seconds": time.perf_counter() - t0,
    }


def terminal_progress(done: int, total: int, seconds: float) -> None:
    """One line on stderr, rewritten in place: files, rate, time left (nothing when stderr is not a terminal)."""
    if not sys.stderr.isatty():
        return
    rate = done / seconds if seconds > 0 else 0.0
    left = (total - done) / rate if rate > 0 else 0.0
    end = "\n" if done >= total else ""
    sys.stderr.write(f"\r{done:,}/{total:,} files  {rate:,.0f} img/s  {left:,.0f} s left   {end}")
    sys.stderr.flush()
