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
