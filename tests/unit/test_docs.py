"""The pages outside the documentation site (which `make docs` checks, strict): the README's and the
changelog's links lead to files that exist, and the README stays a page."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def relative_links(text: str) -> list[str]:
    return [target.split("#")[0] for target in re.findall(r"\]\(([^)\s]+)\)", text)
            if not re.match(r"[a-z]+:", target) and not target.startswith("#")]


@pytest.mark.parametrize("page", ["README.md", "CHANGELOG.md", "ARCHITECTURE.md", "BENCHMARKS.md"])
def test_every_relative_link_leads_to_a_file(page):
    links = relative_links((ROOT / page).read_text())
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, f"{page} links to {missing}"


def test_links_are_found():
    assert relative_links("[a](docs/x.md#y) [b](https://e.org) [c](#z)") == ["docs/x.md"]


def test_the_readme_is_a_page_and_every_docs_page_is_in_the_site():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150
    navigation = (ROOT / "mkdocs.yml").read_text()
    assert all(page.name in navigation for page in (ROOT / "docs").glob("*.md"))


def test_every_vggtune_name_the_docs_show_exists():
    """`vggtune.NAME` in the README and the docs is an attribute of the package, or one of its modules (once,
    docs/api.md showed `vggtune.predict`, which raised AttributeError)."""
    import importlib

    import vggtune

    pages = [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    names = {name for page in pages for name in re.findall(r"\bvggtune\.([A-Za-z_][A-Za-z_0-9]*)", page.read_text())}
    assert {"train", "load"} <= names
    missing = []
    for name in sorted(names):
        if hasattr(vggtune, name):
            continue
        try:
            importlib.import_module(f"vggtune.{name}")
        except ModuleNotFoundError:
            missing.append(name)
    assert not missing, f"the docs name vggtune.{missing}, which do not exist"


def test_the_demo_set_is_small_licensed_and_what_make_demo_trains_on():
    """`make demo` runs on a fresh clone without ../shared: on the committed demo set, with its licence."""
    demo = ROOT / "examples" / "pets"
    classes = sorted(p.name for p in demo.iterdir() if p.is_dir())
    assert classes == ["cat", "dog"] and not [p for p in demo.iterdir() if p.is_file()]   # nothing but classes
    images = [p for p in demo.rglob("*") if p.is_file()]
    assert len(images) >= 200 and all(p.suffix == ".jpg" for p in images)
    assert sum(p.stat().st_size for p in images) <= 5e6
    licence = (ROOT / "examples" / "pets-LICENSE.md").read_text()
    assert "CC BY-SA 4.0" in licence and "Parkhi" in licence
    assert re.search(r"^DATA \?= examples/pets$", (ROOT / "Makefile").read_text(), re.M)
