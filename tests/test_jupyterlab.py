"""A student's session: JupyterLab opens a chapter, runs every cell, and a slider redraws its explorer.

JupyterLab serves a copy of notebooks/ (it autosaves what it runs), on 127.0.0.1 with a token, as root where
need be. Chromium drives it through Playwright; requests beyond localhost are aborted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from _browser import REPO, PageWatch, free_port, launch, screenshot_path, sync_playwright

NOTEBOOKS = REPO / "notebooks"
WIDGET_CODE = re.compile(r"Slider\(|\binteract(ive)?\(|_explorer\(")
# What a slider's cell shows apart from the controls: figures, printed text, HTML and Output widgets.
OUTPUT_SNAPSHOT_JS = """cell => {
    const parts = [];
    for (const img of cell.querySelectorAll('.jp-OutputArea-output img')) parts.push(img.src);
    for (const el of cell.querySelectorAll('.widget-output, .widget-html-content, .jp-OutputArea-output pre,'
                                           + ' .jp-RenderedHTMLCommon')) parts.push(el.innerText);
    return parts.join('\\n');
}"""


def chapter_with_a_slider() -> Path:
    """The first chapter (by number) whose code builds a slider or an explorer."""
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        if any(c["cell_type"] == "code" and WIDGET_CODE.search("".join(c["source"])) for c in cells):
            return path
    pytest.skip("no chapter in notebooks/ builds an ipywidgets slider yet")


def wait_for_server(url: str, process: subprocess.Popen, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer {url} within {timeout_s} s")


def wait_for_idle_kernel(base: str, token: str, timeout_s: float = 120) -> None:
    """Wait until the notebook's kernel has started and is idle (JupyterLab starts it on opening)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/api/kernels?token={token}", timeout=5) as response:
                kernels = json.load(response)
        except OSError:  # the server answers 500 now and then while the kernel is still starting: ask again
            time.sleep(1)
            continue
        if kernels and all(k["execution_state"] == "idle" for k in kernels):
            return
        time.sleep(1)
    raise TimeoutError(f"no idle kernel within {timeout_s} s")


def run_all_cells(page) -> None:
    """Run > Run All Cells, once more if no cell has started a few seconds later."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for _ in range(2):
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
        try:
            page.wait_for_function(
                "() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]"
                ".some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))",
                timeout=15_000,
            )
            return
        except PlaywrightTimeout:
            page.keyboard.press("Escape")
    raise AssertionError("Run All Cells started no cell")


@pytest.fixture
def jupyterlab(tmp_path):
    """(base URL, token, notebook path relative to the server root) for a running JupyterLab."""
    chapter = chapter_with_a_slider()
    root = tmp_path / "course"
    shutil.copytree(NOTEBOOKS, root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    settings = tmp_path / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    # Render every cell (no virtual scrolling), so that every prompt and output is in the page.
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    port, token = free_port(), "minimoe-test-token"
    env = dict(
        os.environ,
        NO_PROXY="127.0.0.1,localhost",
        JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
    )
    jupyter = Path(sys.executable).parent / "jupyter"
    log = (tmp_path / "jupyterlab.log").open("w")
    process = subprocess.Popen(
        [str(jupyter), "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_server(f"{base}/api/status?token={token}", process)
        yield base, token, chapter.name
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.timeout(900)
def test_a_slider_redraws_its_output_after_run_all(jupyterlab):
    base, token, notebook = jupyterlab
    entry = sync_playwright()
    with entry() as playwright:
        browser = launch(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        watch = PageWatch(page)
        page.goto(f"{base}/lab/tree/{notebook}?token={token}", wait_until="load")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
        wait_for_idle_kernel(base, token)
        run_all_cells(page)
        try:
            page.wait_for_function(
                """() => {
                    const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
                    return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
                }""",
                timeout=600_000,
                polling=1000,
            )
        finally:
            page.screenshot(path=screenshot_path("jupyterlab", "after_run_all.png"))
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
        errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        failure = re.compile(r"Traceback|^\w+(Error|Exception)\b", re.MULTILINE)
        tracebacks = [text for text in errors.all_inner_texts() if failure.search(text)]
        assert not tracebacks, tracebacks[:1]

        handle = page.locator(".widget-slider .noUi-handle").first
        handle.scroll_into_view_if_needed()
        cell = handle.locator("xpath=ancestor::div[contains(@class, 'jp-Cell')][1]")
        slider = handle.locator("xpath=ancestor::div[contains(@class, 'widget-slider')][1]")
        readout_before = slider.locator(".widget-readout").inner_text()
        output_before = cell.evaluate(OUTPUT_SNAPSHOT_JS)
        page.screenshot(path=screenshot_path("jupyterlab", "before_slider.png"))

        handle.focus()
        handle.press("ArrowRight")
        page.wait_for_function(
            f"([cell, before]) => ({OUTPUT_SNAPSHOT_JS})(cell) !== before",
            arg=[cell.element_handle(), output_before],
            timeout=60_000,
        )
        assert slider.locator(".widget-readout").inner_text() != readout_before
        page.screenshot(path=screenshot_path("jupyterlab", "after_slider.png"))
        assert all("favicon" in error for error in watch.console_errors), watch.console_errors
        browser.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_make_lab_opens_working_copies_as_any_user_without_warnings(tmp_path):
    """`make lab` works as root, says nothing about a missing nbgrader config, and serves copies in its lab folder:
    what JupyterLab saves never lands in the tracked notebooks/."""
    lab = tmp_path / "lab"
    before = {p.name for p in NOTEBOOKS.glob("*.ipynb")}
    port, token = free_port(), "minimoe-make-lab"
    env = dict(os.environ, NO_PROXY="127.0.0.1,localhost", JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"))
    args = (f"--no-browser --ip=127.0.0.1 --port={port} --IdentityProvider.token={token} "
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate")
    log_path = tmp_path / "make-lab.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(["make", "--no-print-directory", "lab", f"LAB_DIR={lab}", f"LAB_ARGS={args}"],
                                   cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_server(f"http://127.0.0.1:{port}/api/status?token={token}", process, timeout_s=120)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents?token={token}", timeout=10) as r:
                served = {item["name"] for item in json.load(r)["content"]}
        finally:
            os.killpg(process.pid, 15)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
    text = log_path.read_text()
    assert "Running as root is not recommended" not in text, text[-2000:]
    assert "nbgrader_config.py" not in text, text[-2000:]
    # The server's root is the lab folder, which holds a copy of every chapter (and nothing of notebooks/ itself).
    assert {p.name for p in lab.glob("*.ipynb")} == before and served == before, served
