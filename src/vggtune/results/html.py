"""The HTML both pages (report.html, audit.html) are made of: one skeleton (`page`), one style sheet and
the few escaped pieces, so that a file name, a class or a reason is never read as markup."""

from __future__ import annotations

import base64
import datetime
import html
import io

from vggtune.fsutil import display_path
from vggtune.version import __version__

STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:1em 2em;color:#222}
h1{margin-bottom:0}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}td.n{text-align:right}img{max-width:100%;height:auto}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:12px}
figure{margin:0;border:1px solid #ddd;padding:6px;background:#fafafa}
figure img{display:block;margin:0 auto;max-height:240px;width:auto}figcaption{font-size:13px;word-break:break-all}
.wrong figcaption b{color:#b00}.warn{background:#fff4d6;padding:.5em;border-left:4px solid #e0a800}
.muted{color:#666}details{margin:.5em 0}
"""


def page(title: str, about: str, body: str) -> str:
    """A whole page: the title, a line of what it is about (HTML, already escaped) with when and by which
    version it was written, then `body`. Self-contained: nothing is fetched (the policy forbids it)."""
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>"
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'\">"
        f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>"
        f"<p class='muted'>{about}; written {datetime.datetime.now():%Y-%m-%d %H:%M} by vggtune "
        f"{__version__}</p>{body}</body></html>\n"
    )


def count(n: int, noun: str) -> str:
    """ "1 epoch", "2 epochs"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


TABLE_ROWS = 200  # longer lists are cut here; the CSV files in the run hold them all


def table(header: list[str] | None, rows) -> str:
    rows = list(rows)
    head = "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(value)}</td>" for value in row) + "</tr>" for row in rows[:TABLE_ROWS]
    )
    more = f"<p class='muted'>... and {len(rows) - TABLE_ROWS} more.</p>" if len(rows) > TABLE_ROWS else ""
    return f"<table>{head}{body}</table>{more}"


def img(data: bytes, alt: str, mime: str = "image/png") -> str:
    return f"<img src='data:{mime};base64,{base64.b64encode(data).decode()}' alt='{escape(alt)}'>"


def jpeg(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def escape(value) -> str:
    """Escaped for HTML; a file name that is not UTF-8 shows its odd bytes as \\x.. escapes."""
    return html.escape(display_path(str(value)), quote=True)
