"""The other half of the documents of tests/test_docs_run.py (a second file, so that the two halves run side by
side on `make test`'s two workers)."""

from __future__ import annotations

import pytest
from test_docs_run import DOCS, FIRST_HALF, run_document


@pytest.mark.parametrize("doc", [d for d in DOCS if d.name not in FIRST_HALF], ids=lambda p: p.name)
def test_the_code_blocks_of_a_document_run_as_written(doc, tmp_path, monkeypatch):
    run_document(doc, tmp_path, monkeypatch)
