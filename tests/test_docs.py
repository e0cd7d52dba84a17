"""What the README and docs/ say a user can type works as written."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_dotted_name_the_docs_use_resolves_after_import_imgtrain():
    """`import imgtrain` then `imgtrain.plots.misclassified(...)` (docs/seeds.md) must work without importing
    `imgtrain.plots` first: each `imgtrain.a.b` name in the docs is looked up in a fresh interpreter."""
    names = sorted({m for doc in DOCS for m in re.findall(r"\bimgtrain(?:\.[A-Za-z_]\w*)+", doc.read_text())})
    assert "imgtrain.analysis.plots.misclassified" in names  # the docs still show the case the issue found
    script = (
        "import functools, imgtrain, sys\n"
        f"for name in {names!r}:\n"
        "    functools.reduce(getattr, name.split('.')[1:], imgtrain)\n"
        "print('ok', 'keras' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[0] == "ok"


def test_import_imgtrain_stays_light():
    proc = subprocess.run(
        [sys.executable, "-c", "import imgtrain, sys; imgtrain.analysis.plots; print('keras' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout.strip() == "False", proc.stderr[-2000:]
