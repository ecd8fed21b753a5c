"""Every shipped workflow loads in the real ComfyUI frontend (the
comfyui-frontend-package the server serves) in headless Chromium: no missing
nodes, no error dialog, no uncaught page error, and the frontend's own
conversion to the API format equals the workflow's API twin."""
from __future__ import annotations

import json
import os
import shutil

import pytest

import comfy_host as host

CHROMIUM = os.environ.get("DREAM_ENGINE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
ARTIFACTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "artifacts")

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason="Debian chromium not installed (apt-get install -y chromium)")


@pytest.fixture(scope="module")
def page():
    from playwright.sync_api import sync_playwright

    server = host.get_server()
    # A first visit would open the template browser; mark the tutorial as done.
    server.post("/settings/Comfy.TutorialCompleted", True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        pg = browser.new_page(viewport={"width": 1600, "height": 1000})
        pg.page_errors = []
        pg.on("pageerror", lambda e: pg.page_errors.append(str(e)))
        pg.goto(server.url, wait_until="domcontentloaded", timeout=120_000)
        pg.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=120_000)
        pg.wait_for_timeout(1000)
        pg.keyboard.press("Escape")
        yield pg
        browser.close()


def visible_dialogs(pg) -> list[str]:
    return pg.evaluate("""() => [...document.querySelectorAll('.p-dialog, .comfy-modal')]
        .filter(d => d.offsetParent !== null && getComputedStyle(d).display !== 'none')
        .map(d => d.innerText.slice(0, 300))""")


@pytest.mark.parametrize("ui_path", host.workflow_files(), ids=[os.path.basename(p) for p in host.workflow_files()])
def test_workflow_loads_in_frontend(page, ui_path):
    with open(ui_path) as f:
        wf = json.load(f)
    assert visible_dialogs(page) == [], "a dialog was open before loading"
    errors_before = len(page.page_errors)
    page.evaluate("(wf) => window.app.loadGraphData(wf)", wf)
    page.wait_for_timeout(800)
    assert visible_dialogs(page) == [], f"dialog after loading {os.path.basename(ui_path)}"
    assert page.page_errors[errors_before:] == []
    types = page.evaluate("() => window.app.graph._nodes.map(n => [n.type, !!window.LiteGraph.registered_node_types[n.type], !!n.has_errors])")
    assert len(types) == len(wf["nodes"])
    assert all(reg and not err for _, reg, err in types), types
    api = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    got = {k: {"inputs": v["inputs"], "class_type": v["class_type"]} for k, v in api.items()}
    assert got == host.load_api(host.api_twin(ui_path))
    if os.path.basename(ui_path).startswith("3_"):
        os.makedirs(ARTIFACTS, exist_ok=True)
        page.screenshot(path=os.path.join(ARTIFACTS, "frontend_3_object_fusion.png"))


def test_conditioning_node_shows_what_the_model_saw():
    """Run the object-fusion workflow from the real frontend; the conditioning node then shows
    the LMM inputs, each image's encoded size and tokens (web/dream_engine.js). Saves a
    screenshot of the node to tests/artifacts/."""
    import uuid

    server = host.get_server()
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
