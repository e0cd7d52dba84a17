"""The HTML pages imgtrain writes (a run's report.html, a search's tune.html), rendered from the Jinja2 templates in
imgtrain/templates/: one place for the markup and the style, and escaping done by Jinja2's autoescape.

Each page is one self-contained file: the PNG figures are embedded as base64, nothing is fetched from elsewhere.
"""

from __future__ import annotations

import base64
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2

CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1150px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}img{max-width:100%;display:block;margin:.5em 0}
.headline{font-size:1.2em}.muted{color:#777}.best td{background:#eef7ee}
.warn{background:#fff6dd;border-left:4px solid #e0a000;padding:.3em .6em}"""


def cell(value: object, fmt: str = ".4f") -> str:
    """A table cell's text: floats to `fmt`, None as '-'."""
    if isinstance(value, float):
        return format(value, fmt)
    return "-" if value is None else str(value)


@cache
def _environment() -> jinja2.Environment:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("imgtrain.analysis", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["cell"] = cell
    env.filters["b64"] = lambda data: base64.b64encode(data).decode("ascii")
    return env


def render(template: str, **context: Any) -> str:
    """The page `template` (a file in imgtrain/templates/) filled with `context`."""
    return _environment().get_template(template).render(css=CSS, **context)
