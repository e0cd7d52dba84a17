"""Every code block of README.md and docs/*.md runs as written, top to bottom, in a fresh folder per document, at a
small size (Sybil parses the Markdown; a block a user cannot run here says why in a `<!-- skip: next "..." -->`).

- ```python blocks run in one namespace per document (`>>>` lines are doctests; their output is compared).
- ```console blocks: each `$ COMMAND` runs in bash; a documented output line starting with `error:` must be the
  command's last stderr line ("…" in it matching anything, such as a path) and the command must fail; every other
  command must succeed. `imgtrain serve` and
  `mlflow server` start in the background (the document's later blocks talk to them) and stop at its end.
- Small size: `imgtrain train`, `tune`, `lr-find` and `audit` commands, `imgtrain.train(...)` and
  `imgtrain.audit(...)` get `train_limit` 400 and `test_limit` 200 unless they set their own; nothing else changes.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import subprocess
import sys
import time
import unittest
from pathlib import Path

import httpx
import pytest
from conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# two halves of about the same time, one per test file, so that `pytest -n 2 --dist loadfile` runs them side by side
FIRST_HALF = {"README.md", "tune.md", "reliability.md", "report.md", "seeds.md", "config.md", "data.md", "audit.md"}
SMALL = {"train_limit": 400, "test_limit": 200}
SIZED = re.compile(r"^imgtrain (train|tune|lr-find|audit)\b")
BACKGROUND = re.compile(r"^(imgtrain serve|mlflow server)\b")
PORT = re.compile(r"(?:--port|-p)[ =](\d+)")


def commands(block: str) -> list[tuple[str, list[str]]]:
    """(command, its documented output lines) for each `$ ` line of a console block; `\\` continues a line."""
    found: list[tuple[str, list[str]]] = []
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.startswith("$ "):
            if found:
                found[-1][1].append(line)
            continue
        command = line[2:]
        while command.rstrip().endswith("\\") and i < len(lines):
            command = command.rstrip()[:-1] + " " + lines[i].strip()
            i += 1
        found.append((command.strip(), []))
    return found


def small(command: str) -> str:
    """`command` with the small size appended where it trains (a later --set wins over flags and files)."""
    if not SIZED.match(command):
        return command
    command, hash_, comment = command.partition(" # ")  # flags go before a trailing comment
    extra = [f"--set {k}={v}" for k, v in SMALL.items() if k not in command and k.replace("_", "-") not in command]
    return " ".join([command.rstrip(), *extra]) + (f"  {hash_.strip()} {comment}" if hash_ else "")


def same(documented: str, actual: str) -> bool:
    """Whether `actual` is the documented line, where "…" in it stands for any text (a path of the machine)."""
    return re.fullmatch(".*".join(map(re.escape, documented.split("…"))), actual) is not None


class Session:
    """One document's shell: its folder, its environment and the servers it started."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        bin_dir = str(Path(sys.executable).parent)
        self.env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}
        self.servers: list[subprocess.Popen] = []
        (folder / "configs").symlink_to(ROOT / "configs")  # the docs' commands run from the checkout's root

    def run(self, command: str, output: list[str]) -> None:
        if BACKGROUND.match(command):
            return self.start(command)
        if command.startswith("export "):  # the shell's variables last for the rest of the document
            proc = subprocess.run(["bash", "-c", f"{command} && env -0"], env=self.env, capture_output=True, check=True)
            self.env = dict(kv.split("=", 1) for kv in proc.stdout.decode().split("\0") if "=" in kv)
            return None
        t0 = time.perf_counter()
        proc = subprocess.run(
            ["bash", "-c", small(command)], cwd=self.folder, env=self.env, capture_output=True, text=True, timeout=600
        )
        print(f"{time.perf_counter() - t0:6.1f} s  $ {command}")  # pytest shows it with -s or on a failure
        errors = [line for line in output if line.startswith("error:")]
        said = proc.stderr.strip().splitlines()[-1:] if proc.stderr.strip() else []
        if errors:
            assert proc.returncode != 0 and said and same(errors[-1], said[0]), f"$ {command}\n{proc.stderr[-2000:]}"
        else:
            assert proc.returncode == 0, f"$ {command}\nexit {proc.returncode}\n{proc.stderr[-3000:]}"

    def start(self, command: str) -> None:
        log = open(self.folder / f"server-{len(self.servers)}.log", "w+")
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {command}"],
            cwd=self.folder,
            env=self.env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        self.servers.append(proc)
        port = int(m.group(1)) if (m := PORT.search(command)) else 8000
        deadline = time.time() + 120
        while time.time() < deadline:
            assert proc.poll() is None, f"$ {command} exited {proc.returncode}: {log.seek(0) or log.read()[-2000:]}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code < 500:
                    return
            except httpx.HTTPError:
                time.sleep(0.5)
        raise AssertionError(f"$ {command}: nothing answered on port {port} within 120 s")

    def stop(self) -> None:
        for proc in self.servers:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)


def _console(example) -> None:
    session: Session = example.namespace["_session"]
    for command, output in commands(example.parsed):
        session.run(command, output)


def run_document(doc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sybil import Sybil
    from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser, SkipParser

    import imgtrain

    monkeypatch.chdir(tmp_path)  # the document's Python runs where its commands do
    monkeypatch.setattr(imgtrain, "train", functools.partial(imgtrain.train, **SMALL))
    monkeypatch.setattr(imgtrain, "audit", functools.partial(imgtrain.audit, **SMALL))
    parser = Sybil(parsers=[PythonCodeBlockParser(), CodeBlockParser("console", _console), SkipParser()])
    document = parser.parse(doc)
    session = document.namespace["_session"] = Session(tmp_path)
    examples = list(document.examples())
    try:
        for example in examples:
            try:
                example.evaluate()
            except unittest.SkipTest:  # a `skip: next "why"` block: the document says why, the rest still runs
                pass
    finally:
        session.stop()
    assert examples or doc.name in ("config.md", "data.md", "speed.md"), f"{doc.name} has no code block to run"


@pytest.mark.parametrize("doc", [d for d in DOCS if d.name in FIRST_HALF], ids=lambda p: p.name)
def test_the_code_blocks_of_a_document_run_as_written(doc, tmp_path, monkeypatch):
    run_document(doc, tmp_path, monkeypatch)
