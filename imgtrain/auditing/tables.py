"""The audit's files: issues.csv and issues.json (one row per flagged image, worst first within each issue type),
summary.json, and the review page audit.html."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas

    from imgtrain.data import Dataset

ISSUES = ("label", "leak", "duplicate", "outlier", "odd")  # the order of issues.csv
COLUMNS = [
    "issue",
    "split",
    "index",
    "path",
    "given",
    "suggested",
    "score",
    "detail",
    "match_split",
    "match_index",
    "match_path",
]


def issue_table(rows: list[dict[str, Any]]) -> pandas.DataFrame:
    """The rows in issues.csv's order: by issue type, then score (higher: more certainly an issue), then split and
    index, so that the order is the same on every run."""
    import pandas

    table = pandas.DataFrame(rows, columns=COLUMNS)
    table["order"] = table["issue"].map({k: i for i, k in enumerate(ISSUES)})
    table = table.sort_values(["order", "score", "split", "index"], ascending=[True, False, True, True], kind="stable")
    table = table.drop(columns="order").reset_index(drop=True)
    table["match_index"] = table["match_index"].astype("Int64")  # empty where the issue names no other image
    return table


def write_tables(out: Path, ds: Dataset, rows: list[dict[str, Any]], summary: dict[str, Any]) -> pandas.DataFrame:
    """issues.csv, issues.json, summary.json and audit.html in `out`; the issue table."""
    from imgtrain.auditing.page import write_page
    from imgtrain.core.saving import atomic_write, atomic_write_json

    table = issue_table(rows)
    atomic_write(out / "issues.csv", table.to_csv(index=False))
    atomic_write(out / "issues.json", table.to_json(orient="records", indent=1))
    atomic_write_json(out / "summary.json", summary)
    write_page(out, ds, table, summary)
    return table


def read_summary(out: Path) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
    return summary
