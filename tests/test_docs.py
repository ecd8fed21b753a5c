"""The README and the docs: the README is a storefront (short, a picture in its first
screen, the two commands CI runs), every relative link resolves, the tables that have a data
file are the ones generated from it, and the pictures are the ones the script composes.
"""
from __future__ import annotations

import os
import re
import sys

import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from scripts import docs_tables, make_images  # noqa: E402

README = os.path.join(ROOT, "README.md")
MARKDOWN = ([README] + [os.path.join(ROOT, "docs", f) for f in sorted(os.listdir(os.path.join(ROOT, "docs")))
                        if f.endswith(".md")]
            + [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(ROOT, "web", "docs")) for f in fs])
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def test_readme_is_a_storefront():
    lines = _read(README).splitlines()
    assert len(lines) < 200
    first_picture = next(i for i, line in enumerate(lines) if re.search(r"!\[[^\]]*\]\((docs/[^)]+\.png)\)", line))
    assert first_picture < 40
    picture = re.search(r"\((docs/[^)]+\.png)\)", lines[first_picture]).group(1)
    assert os.path.isfile(os.path.join(ROOT, picture))
    text = "\n".join(lines)
    # the two commands; .ci/run and the Makefile run exactly these targets
    assert "make demo" in text and "make test" in text
    assert "make test" in _read(os.path.join(ROOT, ".ci", "run"))
    assert "pip install -r" in text and "qwen-vl-utils" in text


def test_requirements_named_in_the_readme_are_the_file():
    """The README lists what requirements.txt installs (by name)."""
    reqs = [re.split(r"[<>=!~ ]", line)[0] for line in _read(os.path.join(ROOT, "requirements.txt")).splitlines()
            if line.strip() and not line.startswith("#")]
    install = _read(README).split("## Install", 1)[1].split("\n## ", 1)[0]
    assert reqs and all(r in install for r in reqs), reqs


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    s = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", s))


@pytest.mark.parametrize("path", MARKDOWN, ids=[os.path.relpath(p, ROOT) for p in MARKDOWN])
def test_relative_links_resolve(path):
    for target in LINK.findall(_read(path)):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
        assert os.path.exists(dest), f"{os.path.relpath(path, ROOT)} links to {target}, which does not exist"
        if anchor and dest.endswith(".md"):
            slugs = {_slug(h) for h in re.findall(r"^#+ (.+)$", _read(dest), re.M)}
            assert anchor in slugs, f"{os.path.relpath(path, ROOT)} links to {target}: no such heading"


def test_generated_tables_match_their_data():
    assert docs_tables.stale() == [], "run: .venv/bin/python -m scripts.docs_tables"


def test_table_generator_reads_the_data(tmp_path):
    """A changed score shows up in the generated table (the check is not vacuous)."""
    import json
    import shutil

    src, table = docs_tables.miniature_table()
    scores = tmp_path / "scores.json"
    shutil.copy(docs_tables.SCORES, scores)
    data = json.loads(scores.read_text())
    data["scores"]["artist"]["edit"], data["scores"]["edit"] = 0.125, 0.375  # artist's rule, presence rule
    scores.write_text(json.dumps(data))
    _, changed = docs_tables.miniature_table(str(scores))
    assert "| edit | 0.12 | 0.38 |" in changed and "| edit | 0.12 | 0.38 |" not in table
    doc = _read(os.path.join(ROOT, "docs", "miniature.md"))
    assert docs_tables.updated(doc, "miniature scores", src, changed) != doc


def test_pictures_are_the_composed_ones(tmp_path):
    assert make_images.main(["--out", str(tmp_path)]) == 0
    for rel in ("docs/strip.png", "web/icon.png", "web/banner.png"):
        made, shipped = Image.open(tmp_path / rel), Image.open(os.path.join(ROOT, rel))
        assert made.size == shipped.size, rel
    icon, banner = Image.open(os.path.join(ROOT, "web", "icon.png")), Image.open(os.path.join(ROOT, "web", "banner.png"))
    assert icon.width == icon.height <= 400
    assert banner.width * 9 == banner.height * 21


def test_registry_icon_and_banner_are_the_repository_files():
    """``[tool.comfy]`` Icon and Banner are URLs (the registry shows them from there): the raw
    address of files in this repository, under ``[project.urls] Repository``."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        cfg = tomllib.load(f)
    repo = cfg["project"]["urls"]["Repository"]
    owner_name = repo.removeprefix("https://github.com/")
    for key in ("Icon", "Banner"):
        url = cfg["tool"]["comfy"][key]
        m = re.fullmatch(rf"https://raw\.githubusercontent\.com/{re.escape(owner_name)}/main/(.+)", url)
        assert m and os.path.isfile(os.path.join(ROOT, m.group(1))), (key, url)
