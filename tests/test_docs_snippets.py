"""The Python the README and docs/python.md show runs as written, on photos made here (the tiny network,
so that it takes seconds): a snippet that raised NameError on names it never defined went unnoticed.
The one snippet left out starts a server that runs until interrupted (test_serve.py starts it for real)."""
import re
from pathlib import Path

import pytest

from conftest import make_dataset, synthetic_image

ROOT = Path(__file__).resolve().parents[1]


def snippets(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), re.S)


def test_the_pages_have_snippets_to_run():
    assert len(snippets(ROOT / "README.md")) == 1 and len(snippets(ROOT / "docs" / "python.md")) >= 2


@pytest.mark.parametrize("page", ["README.md", "docs/python.md"])
def test_a_pages_python_runs_as_written(page, tmp_path, monkeypatch, tiny_weights):
    monkeypatch.chdir(tmp_path)
    make_dataset(tmp_path / "photos", n_per_class=12)
    make_dataset(tmp_path / "labelled", n_per_class=4)
    synthetic_image(0, 99).save(tmp_path / "new.jpg")
    synthetic_image(1, 98).save(tmp_path / "x.png")
    ran = 0
    for code in snippets(ROOT / page):
        if "vggtune.serve(" in code:
            continue
        exec(compile(code, f"{page} snippet", "exec"), {"__name__": "snippet"})
        ran += 1
    assert ran >= 1 and (tmp_path / "runs" / "pets" / "model.json").is_file()
