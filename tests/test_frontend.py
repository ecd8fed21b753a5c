"""Every shipped workflow in the real ComfyUI frontend (the comfyui-frontend-package
the server serves), in headless Chromium:

* it loads with no missing node, no error dialog and no uncaught page error, and the
  frontend's own conversion to the API format equals the workflow's API twin;
* laid out as drawn: the bounds the frontend itself gives each node (``getBounding``,
  after the graph has settled) overlap no other node's, and every node lies inside
  one titled group (the note stays outside); one screenshot per workflow is kept in
  ``tests/artifacts/``;
* with the frontend's newer node renderer ("Nodes 2.0", setting
  ``Comfy.VueNodes.Enabled``): the Dream Engine nodes render every widget, nothing is
  logged as an error, the layout check holds, and a workflow queued from the page
  runs on the server;
* each node's help page (``web/docs``) opened from the canvas, in English and in Chinese,
  and the nodes' Chinese names (``locales/zh``) in a frontend that keeps a pack's
  translations (see the section below).
"""
from __future__ import annotations

import json
import os
import shutil
import time

import pytest

import comfy_host as host
from conftest import shared_server, small_model_set

CHROMIUM = os.environ.get("DREAM_ENGINE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
ARTIFACTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "artifacts")
# Large enough that the fitted view stays above the canvas's low-quality zoom (text is drawn).
VIEWPORT = {"width": 2560, "height": 1440}
VUE_NODES = "Comfy.VueNodes.Enabled"   # the "Modern Node Design (Nodes 2.0)" setting
DREAM_NODES = ("LoadDreamEngine", "DreamEngineInterleavedConditioning", "DreamEngineImageSegment",
               "DreamEngineBlendRatio")
NOTES = ("Note", "MarkdownNote")
WORKFLOW_IDS = [os.path.basename(p) for p in host.workflow_files()]

pytestmark = [pytest.mark.server,
              pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                 reason="Debian chromium not installed (apt-get install -y chromium)")]

# Node and group rectangles [x, y, w, h] in canvas units, read once two frames have been drawn.
MEASURE = """async () => {
    await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
    const g = window.app.graph;
    return {
        nodes: g._nodes.map(n => ({id: n.id, type: n.type, rect: Array.from(n.getBounding())})),
        groups: g._groups.map(gr => ({title: gr.title, rect: Array.from(gr._bounding)})),
    };
}"""


def _server():
    server = shared_server()
    # A first visit would open the template browser; mark the tutorial as done. The
    # minimap would cover part of the screenshots, and below a font size of a few pixels
    # the canvas draws nodes without text (level of detail): draw it at every zoom.
    server.post("/settings/Comfy.TutorialCompleted", True)
    server.post("/settings/Comfy.Minimap.Visible", False)
    server.post("/settings/LiteGraph.Canvas.MinFontSizeForLOD", 0)
    return server


def _open(browser, server):
    pg = browser.new_page(viewport=VIEWPORT)
    pg.page_errors, pg.console_errors = [], []
    pg.on("pageerror", lambda e: pg.page_errors.append(str(e)))
    # Requests to the internet fail offline (release notes, node registry); they are not the
    # page's own errors. Every other console error is.
    pg.on("console", lambda m: m.type == "error" and not m.text.startswith("Failed to load resource")
          and pg.console_errors.append(m.text))
    pg.goto(server.url, wait_until="domcontentloaded", timeout=120_000)
    pg.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=120_000)
    pg.wait_for_timeout(1000)
    pg.keyboard.press("Escape")
    return pg


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(browser):
    pg = _open(browser, _server())
    yield pg
    pg.close()


@pytest.fixture(scope="module")
def vue_page(browser):
    """A page opened with Nodes 2.0 switched on (stored on the server before the page
    loads, as the settings dialog stores it; switched back off once the page is open so
    other pages keep the classic renderer)."""
    server = _server()
    server.post(f"/settings/{VUE_NODES}", True)
    try:
        pg = _open(browser, server)
        assert pg.evaluate(f"() => window.app.extensionManager.setting.get('{VUE_NODES}')") is True
    finally:
        server.post(f"/settings/{VUE_NODES}", False)
    yield pg
    pg.close()


def visible_dialogs(pg) -> list[str]:
    return pg.evaluate("""() => [...document.querySelectorAll('.p-dialog, .comfy-modal')]
        .filter(d => d.offsetParent !== null && getComputedStyle(d).display !== 'none')
        .map(d => d.innerText.slice(0, 300))""")


def load(pg, ui_path) -> dict:
    with open(ui_path) as f:
        wf = json.load(f)
    assert visible_dialogs(pg) == [], "a dialog was open before loading"
    pg.evaluate("(wf) => window.app.loadGraphData(wf)", wf)
    pg.wait_for_timeout(800)
    return wf


def layout_problems(m: dict) -> list[str]:
    """Overlapping nodes, and nodes not wholly inside one group (notes may stand outside)."""
    def overlap(a, b):
        return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]

    def inside(a, g):
        return g[0] <= a[0] and g[1] <= a[1] and a[0] + a[2] <= g[0] + g[2] and a[1] + a[3] <= g[1] + g[3]

    nodes, groups = m["nodes"], m["groups"]
    out = [f"{a['type']} #{a['id']} overlaps {b['type']} #{b['id']}"
           for i, a in enumerate(nodes) for b in nodes[i + 1:] if overlap(a["rect"], b["rect"])]
    for n in nodes:
        touching = [g for g in groups if overlap(n["rect"], g["rect"])]
        holders = [g for g in touching if inside(n["rect"], g["rect"])]
        if n["type"] in NOTES and not touching:
            continue
        if len(holders) != 1 or len(touching) != 1:
            out.append(f"{n['type']} #{n['id']} is not inside exactly one group "
                       f"(inside {[g['title'] for g in holders]}, touching {[g['title'] for g in touching]})")
    return out


def screenshot(pg, name: str) -> str:
    pg.evaluate("() => window.app.extensionManager.command.execute('Comfy.Canvas.FitView')")
    pg.wait_for_timeout(400)
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, name)
    pg.screenshot(path=path)
    return path


@pytest.mark.parametrize("ui_path", host.workflow_files(), ids=WORKFLOW_IDS)
def test_workflow_loads_in_frontend(page, ui_path):
    """The UI workflow loads cleanly and converts to exactly its API twin."""
    errors_before = len(page.page_errors)
    wf = load(page, ui_path)
    assert visible_dialogs(page) == [], f"dialog after loading {os.path.basename(ui_path)}"
    assert page.page_errors[errors_before:] == []
    types = page.evaluate("() => window.app.graph._nodes.map(n => [n.type, !!window.LiteGraph.registered_node_types[n.type], !!n.has_errors])")
    assert len(types) == len(wf["nodes"])
    assert all(reg and not err for _, reg, err in types), types
    api = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    got = {k: {"inputs": v["inputs"], "class_type": v["class_type"]} for k, v in api.items()}
    assert got == host.load_api(host.api_twin(ui_path))


@pytest.mark.parametrize("ui_path", host.workflow_files(), ids=WORKFLOW_IDS)
def test_workflow_layout_as_rendered(page, ui_path):
    """No two nodes overlap as the frontend draws them; each node sits in one group."""
    errors_before = len(page.console_errors), len(page.page_errors)
    load(page, ui_path)
    m = page.evaluate(MEASURE)
    name = os.path.splitext(os.path.basename(ui_path))[0]
    screenshot(page, f"frontend_{name}.png")
    assert {g["title"] for g in m["groups"]} >= {"Models", "Prompt", "Sample", "Output"}
    assert layout_problems(m) == []
    assert visible_dialogs(page) == []
    assert (len(page.console_errors), len(page.page_errors)) == errors_before, \
        page.console_errors[errors_before[0]:] + page.page_errors[errors_before[1]:]


def test_layout_check_sees_overlaps():
    """The layout check itself: overlapping nodes and a node across a group edge are reported."""
    m = {"nodes": [{"id": 1, "type": "A", "rect": [0, 0, 100, 100]}, {"id": 2, "type": "B", "rect": [90, 90, 50, 50]},
                   {"id": 3, "type": "Note", "rect": [-500, 0, 100, 100]}],
         "groups": [{"title": "G", "rect": [-10, -10, 130, 130]}]}
    problems = layout_problems(m)
    assert any("overlaps" in p for p in problems)
    assert any("B #2 is not inside" in p for p in problems)
    assert not any("Note" in p for p in problems)


WIDGETS_MISSING = """(types) => {
        const out = {};
        for (const n of window.app.graph._nodes.filter(n => types.includes(n.type))) {
            const el = document.querySelector(`[data-node-id="${n.id}"]`);
            if (!el) { out[`${n.type} #${n.id}`] = ['no element']; continue; }
            const text = el.innerText;
            const areas = [...el.querySelectorAll('textarea')].map(t => t.value);
            out[`${n.type} #${n.id}`] = (n.widgets || []).filter(w => !w.options?.hidden)
                .filter(w => !text.includes(w.label ?? w.name) && !areas.includes(w.value)).map(w => w.name);
        }
        return out;
    }"""


def widget_report(pg) -> dict:
    """For each Dream Engine node drawn by Nodes 2.0: the widgets it should show that its
    DOM element does not (by label, or a text area holding the value), seen at 100 %
    zoom (below about 60 % Nodes 2.0 draws placeholders instead of widgets). The DOM
    nodes mount after the graph loads: wait (up to 30 s) until none is missing, then report."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    pg.evaluate("() => { window.app.canvas.ds.scale = 1; window.app.canvas.setDirty(true, true); }")
    try:
        pg.wait_for_function(f"(types) => Object.values(({WIDGETS_MISSING})(types)).every(m => m.length === 0)",
                             arg=list(DREAM_NODES), timeout=30_000)
    except PlaywrightTimeout:
        pass
    return pg.evaluate(WIDGETS_MISSING, list(DREAM_NODES))


@pytest.mark.parametrize("ui_path", host.workflow_files(), ids=WORKFLOW_IDS)
def test_workflow_in_nodes_2(vue_page, ui_path):
    """Nodes 2.0: each Dream Engine node shows all its widgets; no errors; layout holds."""
    pg = vue_page
    errors_before = len(pg.console_errors), len(pg.page_errors)
    load(pg, ui_path)
    assert pg.evaluate("() => document.querySelectorAll('[data-node-id]').length") == \
        pg.evaluate("() => window.app.graph._nodes.length")
    report = widget_report(pg)
    assert report and all(missing == [] for missing in report.values()), report
    m = pg.evaluate(MEASURE)
    name = os.path.splitext(os.path.basename(ui_path))[0]
    screenshot(pg, f"nodes2_{name}.png")
    assert layout_problems(m) == []
    assert visible_dialogs(pg) == []
    assert (len(pg.console_errors), len(pg.page_errors)) == errors_before, \
        pg.console_errors[errors_before[0]:] + pg.page_errors[errors_before[1]:]


def test_workflow_queued_from_nodes_2_runs(vue_page):
    """Workflow 3 (two images, fuse) queued with the frontend's own queue call in Nodes 2.0
    mode, its model widgets set to the small model set, runs to an image on the server."""
    pg = vue_page
    server = shared_server()
    load(pg, os.path.join(host.WORKFLOWS, "3_object_fusion.json"))
    values = {"unet_name": host.SMALL["unet_name"], "lora_name": host.SMALL["lora_name"],
              "vae_name": host.SMALL["vae_name"], "lmm": host.SMALL["lmm"], "adapter": host.SMALL["adapter"],
              "width": host.SMALL["size"], "height": host.SMALL["size"]}
    n_set = pg.evaluate("""(values) => { let k = 0;
        for (const n of window.app.graph._nodes) for (const w of n.widgets || [])
            if (w.name in values) { w.value = values[w.name]; k++; }
        return k; }""", values)
    assert n_set == len(values)
    before = set(server.get("/history"))
    pg.evaluate("async () => await window.app.queuePrompt(0, 1)")
    new = []
    for _ in range(600):          # polls until the server has an entry for it (one prompt)
        new = [k for k in server.get("/history") if k not in before]
        if new:
            break
        time.sleep(0.5)
    assert len(new) == 1, "the prompt queued from the page did not finish"
    entry = server.wait(new[0])
    assert entry["status"]["status_str"] == "success", host.execution_error(entry)
    images = server.output_images(entry)
    assert len(images) == 1 and os.path.isfile(images[0])
    assert entry["prompt"][2]["12"]["inputs"]["width"] == host.SMALL["size"]


def test_conditioning_node_shows_what_the_model_saw():
    """Run the object-fusion workflow from the real frontend; the conditioning node then shows
    the LMM inputs, each image's encoded size and tokens (web/dream_engine.js). Saves a
    screenshot of the node to tests/artifacts/."""
    import uuid

    server = shared_server()
    server.post("/settings/Comfy.TutorialCompleted", True)
    api = host.small_model_profile(host.load_api("3_object_fusion.json"), size=128)
    cond = host.nodes_of(api, "DreamEngineInterleavedConditioning")[0]
    api[cond]["inputs"]["prompt"] += f" {uuid.uuid4().hex[:6]}"  # never a cached result
    api[host.nodes_of(api, "KSampler")[0]]["inputs"]["steps"] = 2
    # its own browser, in its own thread: the sync API refuses to start while another test's
    # browser (the module fixture above) holds this thread's event loop
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as ex:
        ex.submit(_run_and_screenshot, server, api).result()


def _run_and_screenshot(server, api):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            pg = browser.new_page(viewport={"width": 1600, "height": 1000})
            errors = []
            pg.on("pageerror", lambda e: errors.append(str(e)))
            pg.goto(server.url, wait_until="domcontentloaded", timeout=120_000)
            pg.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=120_000)
            pg.wait_for_timeout(1000)
            pg.keyboard.press("Escape")
            pg.evaluate("(api) => window.app.loadApiJson(api, 'what_the_model_saw.json')", api)
            pg.wait_for_timeout(500)
            pg.evaluate("() => window.app.queuePrompt(0, 1)")
            get_text = """() => {
                const n = window.app.graph._nodes.find(n => n.type === 'DreamEngineInterleavedConditioning');
                const w = n && n.widgets && n.widgets.find(w => w.name === 'dream_engine_seen');
                return w ? w.value : null }"""
            pg.wait_for_function(f"() => ({get_text})()", timeout=300_000)
            shown = pg.evaluate(get_text)
            assert shown.startswith("positive: 'Combine the objects: disc<image 1: ")
            assert "\nnegative: " in shown and "tokens, r=0.3" in shown and "tokens, r=0.7" in shown
            assert "\npositive tokens: " in shown
            # the same text reached the server's history and log
            assert shown in server.log_text()
            box = pg.evaluate("""() => {
                const n = window.app.graph._nodes.find(n => n.type === 'DreamEngineInterleavedConditioning');
                window.app.canvas.selectNode(n); window.app.canvas.centerOnNode(n);
                window.app.canvas.setDirty(true, true); return true }""")
            assert box
            pg.wait_for_timeout(800)
            os.makedirs(ARTIFACTS, exist_ok=True)
            pg.screenshot(path=os.path.join(ARTIFACTS, "frontend_what_the_model_saw.png"))
            assert errors == []
        finally:
            browser.close()


# ------------------------------------------------------------------ help pages and translations
# The pack's help pages (web/docs) and Chinese translations (locales/zh) in the real frontend.
# The host's frontend (1.32.9) shows the help pages, in the frontend's language, but drops a
# pack's translations when it loads a language (its loadLocale replaces the messages merged
# from /i18n); 1.33.13 merges them again, so the node names are checked there, served by the
# same ComfyUI with --front-end-root (installed by scripts/setup_env.sh).
HELP_WORKFLOW = os.path.join(host.WORKFLOWS, "3_object_fusion.json")  # all four node types
LOCALES = os.path.join(host.ROOT, "locales")
NEWER_FRONTEND = os.path.join(host.ROOT, ".venv", "frontend-1.33.13", "comfyui_frontend_package", "static")

SELECT = """(type) => { const n = window.app.graph._nodes.find(n => n.type === type);
    window.app.canvas.deselectAll(); window.app.canvas.selectNode(n); window.app.canvas.centerOnNode(n);
    window.app.canvas.setDirty(true, true); return !!n }"""
HELP_SHOWN = """(title) => { const el = document.querySelector('.markdown-content');
    const h1 = el && el.querySelector('h1'); return !!h1 && h1.innerText.trim() === title }"""
HELP_CONTENT = """() => { const el = document.querySelector('.markdown-content'); return {
    text: el.innerText, strong: [...el.querySelectorAll('strong')].map(e => e.innerText.trim()),
    code: [...el.querySelectorAll('code')].map(e => e.innerText.trim()),
    headings: [...el.querySelectorAll('h2')].map(h => h.innerText.trim()), tables: el.querySelectorAll('table').length} }"""


def _zh(name: str) -> dict:
    with open(os.path.join(LOCALES, "zh", name), encoding="utf-8") as f:
        return json.load(f)


def _page_in_locale(browser, server, locale: str):
    """A page opened with ``Comfy.Locale`` stored on the server before it loads (as the
    settings dialog stores it); set back to English once the page is open."""
    server.post("/settings/Comfy.Locale", locale)
    try:
        return _open(browser, server)
    finally:
        server.post("/settings/Comfy.Locale", "en")


@pytest.fixture(scope="module")
def help_pages(browser):
    """The host's frontend in English and in Chinese, each with workflow 3 loaded."""
    server = _server()
    pages = {loc: _page_in_locale(browser, server, loc) for loc in ("en", "zh")}
    for pg in pages.values():
        load(pg, HELP_WORKFLOW)
    yield pages
    for pg in pages.values():
        pg.close()


def open_help(pg, node_type: str, title: str) -> tuple[dict, list]:
    """Select the node on the canvas and press the selection toolbox's info button, as a user
    does; returns what the node library's help panel shows and the help files the page fetched."""
    fetched = []

    def on_response(r):
        if "/docs/" in r.url:
            fetched.append((r.url.split("/extensions/", 1)[-1], r.status))

    pg.on("response", on_response)
    try:
        assert pg.evaluate(SELECT, node_type)
        pg.wait_for_timeout(300)
        pg.locator('[data-testid="info-button"]').first.click()
        pg.wait_for_function(HELP_SHOWN, arg=title, timeout=30_000)
        pg.wait_for_timeout(300)
        return pg.evaluate(HELP_CONTENT), fetched
    finally:
        pg.remove_listener("response", on_response)


def _help_screenshot(pg, name: str) -> None:
    os.makedirs(ARTIFACTS, exist_ok=True)
    pg.screenshot(path=os.path.join(ARTIFACTS, name))


@pytest.mark.parametrize("node_type", DREAM_NODES)
def test_node_help_page_in_the_frontend(help_pages, node_type):
    """English: the node's help page from web/docs, rendered in the node library with its
    sections, tables and every input of the node's definition."""
    pg = help_pages["en"]
    errors_before = len(pg.page_errors)
    info = shared_server().get(f"/object_info/{node_type}")[node_type]
    shown, fetched = open_help(pg, node_type, info["display_name"])
    assert (f"comfyui-dream-engine/docs/{node_type}.md", 200) in fetched, fetched
    with open(os.path.join(host.ROOT, "web", "docs", f"{node_type}.md"), encoding="utf-8") as f:
        sections = [line[3:].strip() for line in f if line.startswith("## ")]
    assert shown["headings"] == sections
    assert shown["tables"] >= 3
    inputs = [*info["input"]["required"], *info["input"].get("optional", {})]
    assert set(inputs) <= set(shown["strong"]), set(inputs) - set(shown["strong"])
    _help_screenshot(pg, f"help_{node_type}.png")
    assert pg.page_errors[errors_before:] == []


@pytest.mark.parametrize("node_type", DREAM_NODES)
def test_node_help_page_in_chinese(help_pages, node_type):
    """Chinese (``Comfy.Locale`` = zh): the frontend fetches web/docs/<node>/zh.md and shows it,
    every input under its Chinese name and its id."""
    pg = help_pages["zh"]
    d = _zh("nodeDefs.json")[node_type]
    shown, fetched = open_help(pg, node_type, d["display_name"])
    assert (f"comfyui-dream-engine/docs/{node_type}/zh.md", 200) in fetched, fetched
    for name, t in d["inputs"].items():
        assert t["name"] in shown["strong"] and name in shown["code"], name
    _help_screenshot(pg, f"help_zh_{node_type}.png")


def test_server_serves_the_translations_the_frontend_requests():
    """``GET /i18n`` (what every frontend version requests) holds the pack's Chinese node
    definitions and type names exactly as shipped."""
    served = shared_server().get("/i18n")["zh"]
    assert served["nodeDefs"] == {**served["nodeDefs"], **_zh("nodeDefs.json")}
    assert {k: served["dataTypes"][k] for k in _zh("main.json")["dataTypes"]} == _zh("main.json")["dataTypes"]


@pytest.fixture(scope="module")
def newer_frontend_server(tmp_path_factory):
    if not os.path.isfile(os.path.join(NEWER_FRONTEND, "index.html")):
        pytest.fail(f"no frontend in {NEWER_FRONTEND}: run scripts/setup_env.sh (it installs "
                    f"comfyui-frontend-package 1.33.13 there)", pytrace=False)
    base = str(tmp_path_factory.mktemp("newer-frontend"))
    host.prepare_base_dir(base, small_model_set(os.path.join(base, "small_models")))
    server = host.ComfyServer(base, extra_args=["--front-end-root", NEWER_FRONTEND]).start()
    yield server
    server.stop()


NODE_LABELS = """(types) => window.app.graph._nodes.filter(n => types.includes(n.type)).map(n => ({
    type: n.type, title: n.title,
    inputs: Object.fromEntries((n.inputs || []).map(i => [i.name, i.localized_name || i.label || i.name])),
    widgets: Object.fromEntries((n.widgets || []).filter(w => !w.options?.hidden).map(w => [w.name, w.label || w.name])),
    outputs: (n.outputs || []).map(o => o.localized_name || o.label || o.name) }))"""


def test_chinese_node_names_in_a_frontend_that_keeps_pack_translations(browser, newer_frontend_server):
    """Frontend 1.33.13 on the same ComfyUI: after switching the language to Chinese (the
    ``Comfy.Locale`` setting, as the settings dialog sets it), the pack's nodes, inputs and
    outputs show under their names in locales/zh; a screenshot is kept."""
    server = newer_frontend_server
    server.post("/settings/Comfy.TutorialCompleted", True)
    server.post("/settings/Comfy.Minimap.Visible", False)
    server.post("/settings/LiteGraph.Canvas.MinFontSizeForLOD", 0)
    pg = _open(browser, server)
    try:
        # the settings dialog's way: the setting store saves it on the server; node titles are
        # made when the page registers the nodes, so the page is reloaded, as after any switch
        pg.evaluate("async () => await window.app.extensionManager.setting.set('Comfy.Locale', 'zh')")
        assert json.loads(server.get("/settings/Comfy.Locale")) == "zh"
        pg.reload(wait_until="domcontentloaded", timeout=120_000)
        pg.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=120_000)
        pg.wait_for_timeout(1000)
        pg.keyboard.press("Escape")
        load(pg, HELP_WORKFLOW)
        defs = _zh("nodeDefs.json")
        nodes = pg.evaluate(NODE_LABELS, list(DREAM_NODES))
        assert {n["type"] for n in nodes} == set(DREAM_NODES)
        for n in nodes:
            d = defs[n["type"]]
            assert n["title"] == d["display_name"], n
            want = {k: v["name"] for k, v in d["inputs"].items()}
            assert {k: want[k] for k in n["inputs"]} == n["inputs"], n
            assert {k: want[k] for k in n["widgets"]} == n["widgets"], n
        cond = next(n for n in nodes if n["type"] == "DreamEngineInterleavedConditioning")
        assert cond["outputs"] == [defs["DreamEngineInterleavedConditioning"]["outputs"][k]["name"] for k in ("0", "1")]
        pg.evaluate(SELECT, "DreamEngineInterleavedConditioning")
        pg.evaluate("() => { window.app.canvas.ds.scale = 1; window.app.canvas.centerOnNode("
                    "window.app.graph._nodes.find(n => n.type === 'DreamEngineInterleavedConditioning'));"
                    " window.app.canvas.setDirty(true, true); }")
        pg.wait_for_timeout(600)
        _help_screenshot(pg, "frontend_zh_nodes.png")
        assert pg.page_errors == []
    finally:
        server.post("/settings/Comfy.Locale", "en")
        pg.close()
