"""The node help pages (``web/docs``), the translations (``locales/``) and the search aliases
name exactly what the node schemas have, so that none of them can drift from the nodes.

Layouts read by ComfyUI: the frontend fetches ``/extensions/<pack>/docs/<node id>/<locale>.md``
and falls back to ``…/docs/<node id>.md`` (``WEB_DIRECTORY`` is ``web/``); the server serves
``locales/<lang>/main.json`` with ``nodeDefs.json`` merged under ``nodeDefs`` at ``/i18n``
(``app/custom_node_manager.py``), keyed by node id, then ``inputs`` by input name and
``outputs`` by output index. ``tests/test_frontend.py`` checks what the frontend shows.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re

import pytest

from conftest import pack_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCALES = os.path.join(ROOT, "locales")
HELP = os.path.join(ROOT, "web", "docs")
LANGS = sorted(d for d in os.listdir(LOCALES) if os.path.isdir(os.path.join(LOCALES, d)))
CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def schemas(pack):
    return {s.node_id: s for s in (cls.define_schema() for cls in pack_module("nodes").NODES)}


def _json(*parts):
    with open(os.path.join(*parts), encoding="utf-8") as f:
        return json.load(f)


def test_the_pack_ships_chinese():
    assert "zh" in LANGS
    assert not os.path.isdir(os.path.join(LOCALES, "en")), \
        "English comes from the schemas; an en locale would override them and drift"


@pytest.mark.parametrize("lang", LANGS)
def test_node_translations_name_exactly_the_schemas(schemas, lang):
    defs = _json(LOCALES, lang, "nodeDefs.json")
    assert set(defs) == set(schemas)
    for node_id, s in schemas.items():
        d = defs[node_id]
        assert d["display_name"].strip() and d["display_name"] != s.display_name, node_id
        assert d["description"].strip(), node_id
        assert set(d["inputs"]) == {i.id for i in s.inputs}, node_id
        for i in s.inputs:
            t = d["inputs"][i.id]
            assert t["name"].strip(), (node_id, i.id)
            assert ("tooltip" in t) == bool(i.tooltip), (node_id, i.id, "a tooltip exactly where the schema has one")
        assert set(d["outputs"]) == {str(k) for k in range(len(s.outputs))}, node_id
        for k, o in enumerate(s.outputs):
            assert d["outputs"][str(k)]["name"].strip()
            assert ("tooltip" in d["outputs"][str(k)]) == bool(o.tooltip), (node_id, k)
        if lang == "zh":
            assert CJK.search(d["display_name"]), d["display_name"]


@pytest.mark.parametrize("lang", LANGS)
def test_main_translations_name_the_pack_types_and_category(schemas, lang):
    main = _json(LOCALES, lang, "main.json")
    ours = {pack_module("nodes.engine").Engine.io_type, pack_module("nodes.segments").Segments.io_type}
    assert set(main["dataTypes"]) == ours
    assert set(main["nodeCategories"]) <= {part for s in schemas.values() for part in s.category.split("/")}


def _headings(md: str) -> list[str]:
    return re.findall(r"^## (.+)$", md, re.M)


@pytest.mark.parametrize("node_id", ["LoadDreamEngine", "DreamEngineInterleavedConditioning",
                                     "DreamEngineImageSegment", "DreamEngineBlendRatio"])
def test_help_page_covers_every_input_and_output(schemas, node_id):
    s = schemas[node_id]
    with open(os.path.join(HELP, f"{node_id}.md"), encoding="utf-8") as f:
        md = f.read()
    assert md.startswith(f"# {s.display_name}\n")
    assert _headings(md)[-3:] == ["Outputs" if len(s.outputs) > 1 else "Output", "Example", "Common errors"]
    for i in s.inputs:
        assert f"| **{i.id}** |" in md, (node_id, i.id)
    for o in s.outputs:
        assert f"| **{o.display_name}** |" in md, (node_id, o.display_name)
    for lang in LANGS:
        with open(os.path.join(HELP, node_id, f"{lang}.md"), encoding="utf-8") as f:
            tr = f.read()
        name = _json(LOCALES, lang, "nodeDefs.json")[node_id]["display_name"]
        assert tr.startswith(f"# {name}\n"), (lang, node_id)
        assert len(_headings(tr)) == len(_headings(md)), (lang, node_id, "the same sections as the English page")
        for i in s.inputs:
            assert f"`{i.id}` |" in tr, (lang, node_id, i.id)


def test_help_pages_are_only_for_the_pack_nodes(schemas):
    pages = {f[:-3] for f in os.listdir(HELP) if f.endswith(".md")}
    folders = {d for d in os.listdir(HELP) if os.path.isdir(os.path.join(HELP, d))}
    assert pages == set(schemas) and folders == set(schemas)
    for d in folders:
        assert sorted(os.listdir(os.path.join(HELP, d))) == [f"{lang}.md" for lang in LANGS]


REQUIRED_ALIASES = {"qwen2-vl", "multi image", "reference image", "interleaved", "image prompt"}


def test_search_aliases_only_where_the_schema_has_the_field(pack, monkeypatch):
    """Newer ComfyUI's ``io.Schema`` has ``search_aliases`` (a list of strings); 0.3.75's has
    not and refuses unknown keywords. The nodes pass the aliases only when the field exists:
    with the host's own schema they define as before, and with the host's schema extended by
    that one field (as newer ComfyUI declares it) every node carries its aliases."""
    from comfy_api.latest import io

    nodes = pack_module("nodes").NODES
    has_field = "search_aliases" in {f.name for f in dataclasses.fields(io.Schema)}
    for cls in nodes:
        s = cls.define_schema()
        assert bool(getattr(s, "search_aliases", None)) == has_field

    @dataclasses.dataclass
    class NewerSchema(io.Schema):
        search_aliases: list[str] = dataclasses.field(default_factory=list)

    monkeypatch.setattr(io, "Schema", NewerSchema)
    aliases = {cls.define_schema().node_id: cls.define_schema().search_aliases for cls in nodes}
    assert all(len(a) >= 4 and len(set(a)) == len(a) and all(x == x.lower() for x in a) for a in aliases.values())
    assert REQUIRED_ALIASES <= set(aliases["DreamEngineInterleavedConditioning"])
    assert REQUIRED_ALIASES <= set().union(*aliases.values())
