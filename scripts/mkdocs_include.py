"""A MkDocs hook (mkdocs.yml `hooks:`): a docs page that is a file at the top of the repository.

docs/architecture.md, benchmarks.md and changelog.md read on GitHub as one sentence that links to the file
(ARCHITECTURE.md, ...), followed by an HTML comment GitHub does not show:

    <!-- include ARCHITECTURE.md from line 3 -->

In the site, this hook puts the file's lines from that one on in the page's place, after its title.
"""
from __future__ import annotations

import re
from pathlib import Path

MARKER = re.compile(r"<!-- include (\S+) from line (\d+) -->")


def on_page_markdown(markdown: str, page, config, files) -> str:
    found = MARKER.search(markdown)
    if not found:
        return markdown
    source = Path(config["config_file_path"]).parent / found.group(1)
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    title = markdown.splitlines()[0]
    return f"{title}\n\n" + "".join(lines[int(found.group(2)) - 1 :])
