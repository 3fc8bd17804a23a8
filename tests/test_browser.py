"""The studio in a real browser: Debian's chromium driven by Playwright against ``python app.py``.

Skipped locally when chromium or playwright is missing; under CI (CI=true) their absence fails,
because .ci/run installs both.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = os.environ.get("CENSOR_SCREENSHOTS")  # set to docs/screenshots to refresh the README's pictures


def _require_browser():
    try:
        import playwright  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("playwright is not installed")
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            raise RuntimeError("chromium is missing; .ci/run should have installed it")
        pytest.skip("chromium is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_app(data_dir: Path, port: int, wait_s: float = 60) -> subprocess.Popen:
    """``python app.py`` on ``data_dir`` and ``port``, returned once it answers HTTP."""
    env = dict(os.environ, CENSOR_DATA_DIR=str(data_dir), GRADIO_SERVER_PORT=str(port),
               GRADIO_ANALYTICS_ENABLED="False", OMP_NUM_THREADS="1")  # see conftest
    env.pop("CENSOR_SECRET", None)  # the key comes from the data folder, as on a machine without a Space secret
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    started = time.time()
    while time.time() - started < wait_s:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}", timeout=1)
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("app.py exited:\n" + proc.stdout.read())
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"app.py did not start in {wait_s:.0f} s")


@pytest.fixture(scope="module")
def studio_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("studio")


@pytest.fixture(scope="module")
def server(studio_dir):
    _require_browser()
    port = _free_port()
    started = time.time()
    proc = _start_app(studio_dir, port)
    yield f"http://127.0.0.1:{port}", time.time() - started
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def browser():
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


def _shot(page, name):
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"), full_page=True)


def test_label_marks_survive_a_reload_and_keys_work(server, browser):
    url, startup_s = server
    assert startup_s < 20, f"the app took {startup_s:.1f}s to start"
    page = browser.new_page(viewport={"width": 1200, "height": 1000})
    t0 = time.time()
    page.goto(url)
    cells = page.locator("#label-grid .cell")
    cells.first.wait_for(timeout=15_000)
    first_grid_s = time.time() - t0
    assert cells.count() == 25
    for i in (0, 2, 4):
        cells.nth(i).click()
        page.wait_for_function(f"document.querySelectorAll('#label-grid .cell')[{i}].classList.contains('malign')")
    page.wait_for_function("document.querySelector('#counts').innerText.includes('malign 3')")
    _shot(page, "label")
    t0 = time.time()
    page.reload()
    page.locator("#label-grid .cell").first.wait_for(timeout=15_000)
    reload_s = time.time() - t0
    # a ratio, not a wall time (the <= 2 s target is measured on an idle machine by tests/browser_timing.py): the
    # first grid must not wait for work a reload skips (a baseline gallery, a model load)
    assert first_grid_s < 4 * reload_s + 1.0, f"first grid after {first_grid_s:.1f}s, a reload's after {reload_s:.1f}s"
    page.wait_for_function("document.querySelectorAll('#label-grid .cell.malign').length === 3")
    marked = page.evaluate("[...document.querySelectorAll('#label-grid .cell')].map(c => c.classList.contains('malign'))")
    assert [i for i, m in enumerate(marked) if m] == [0, 2, 4]
    # keyboard only: move to the 2nd image, mark it, then page forward
    page.locator("body").click(position={"x": 5, "y": 5})
    page.keyboard.press("ArrowRight")
    page.keyboard.press("m")
    page.wait_for_function("document.querySelectorAll('#label-grid .cell')[1].classList.contains('malign')")
    ids_before = page.evaluate("[...document.querySelectorAll('#label-grid .cell')].map(c => c.dataset.id)")
    page.keyboard.press("n")
    page.wait_for_function(f"document.querySelector('#label-grid .cell').dataset.id !== '{ids_before[0]}'")
    page.wait_for_function("document.querySelector('#counts').innerText.includes('viewed 50')")


def _set_slider(page, elem_id, value):
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def _label_two_for_training(page, members: int, iterations: int) -> None:
    """Mark two pool images malign and open the Train tab, its sliders set to ``members`` and ``iterations``."""
    cells = page.locator("#label-grid .cell")
    cells.first.wait_for(timeout=30_000)
    for i in (1, 3):
        cells.nth(i).click()
    page.wait_for_function("document.querySelectorAll('#label-grid .cell.malign').length >= 2")
    page.get_by_role("tab", name="Train", exact=True).click()
    _set_slider(page, "members", members)
    _set_slider(page, "iterations", iterations)


def _download(page, button, name: str, path: Path) -> Path:
    """Open the Share tab, press ``button`` and save the ``name`` it offers to ``path``."""
    page.get_by_role("tab", name="Share", exact=True).click()
    button.click()
    link = page.locator(f'#downloads a[download="{name}"]')
    link.wait_for(timeout=60_000)
    with page.expect_download() as dl:
        link.click()
    dl.value.save_as(path)
    return path


def _label_two_and_train(page) -> None:
    """Mark two pool images malign, then train a small reward (2 members, 20 iterations) in the Train tab."""
    _label_two_for_training(page, 2, 20)
    page.locator("#train-btn").click()
    page.wait_for_function("document.querySelector('#train-result').innerText.includes('Trained a')", timeout=120_000)


def test_train_censor_and_download_a_bundle(server, browser, tmp_path):
    url, _ = server
    page = browser.new_page(viewport={"width": 1200, "height": 1100}, accept_downloads=True)
    page.goto(url)
    _label_two_and_train(page)
    _shot(page, "train")
    page.get_by_role("tab", name="Censor", exact=True).click()
    _set_slider(page, "censor-steps", 5)
    _set_slider(page, "censor-count", 8)
    page.locator("#censor-btn").click()
    page.wait_for_function("document.querySelector('#censor-result').innerText.includes('malign images')",
                           timeout=120_000)
    assert page.locator("#censored img").count() >= 8
    text = page.locator("#censor-result").inner_text()
    assert "Automatic strength: ω =" in text and "Fidelity (no oracle)" in text, text  # the studio's defaults
    _shot(page, "censored")
    path = _download(page, page.locator("#share-btn"), "gallery_bundle.zip", tmp_path / "bundle.zip")
    import zipfile

    assert "manifest.json" in zipfile.ZipFile(path).namelist()

    # the bundle comes back in: the app reproduces the gallery and gives it a permalink
    page.locator("#bundle-in input[type=file]").set_input_files(str(path))
    page.wait_for_function("document.querySelector('#share-result').innerText.includes('Reproduced')",
                           timeout=120_000)
    result = page.locator("#share-result").inner_text()
    assert "Reproduced 8 of 8 images exactly" in result, result
    assert page.locator("#shared img").count() >= 8
    _shot(page, "share")
    token = result.split("?bundle=")[1].split()[0].strip("`.")
    shared = browser.new_page(viewport={"width": 1200, "height": 900})
    shared.goto(f"{url}/?bundle={token}")
    shared.wait_for_function("document.querySelector('#share-result') && "
                             "document.querySelector('#share-result').innerText.includes('Shared gallery')",
                             timeout=30_000)
    shared.locator("#shared img").first.wait_for(state="visible", timeout=10_000)  # the Share tab opened itself
    assert shared.locator("#shared img").count() >= 8


def test_a_hundred_images_with_the_keyboard_alone(server, browser):
    """Four pages of 25: move with arrows, mark with m, page with n; no mouse on the grid."""
    url, _ = server
    page = browser.new_page(viewport={"width": 1200, "height": 1000})
    page.goto(url)
    page.locator("#label-grid .cell").first.wait_for(timeout=15_000)
    page.locator("body").click(position={"x": 5, "y": 5})  # give the page keyboard focus, off the grid
    # generous waits on events only: a loaded machine (a benchmark beside the suite) takes seconds per page turn
    for p in range(4):
        first_id = page.evaluate("document.querySelector('#label-grid .cell').dataset.id")
        for key in ["ArrowRight", "ArrowRight", "m", "ArrowDown", "m"]:  # marks cells 2 and 7
            page.keyboard.press(key)
        page.wait_for_function("document.querySelectorAll('#label-grid .cell.malign').length === 2", timeout=60_000)
        if p < 3:
            page.keyboard.press("n")
            page.wait_for_function(f"document.querySelector('#label-grid .cell').dataset.id !== '{first_id}'",
                                   timeout=60_000)
    page.wait_for_function("document.querySelector('#counts').innerText.includes('viewed 100 · malign 8')",
                           timeout=60_000)


def test_rlhf_tab_runs_a_small_comparison_and_offers_its_adapters(server, browser):
    """The smallest comparison the tab allows (14 labels, 20 images): table, plot, adapters to pick."""
    url, _ = server
    page = browser.new_page(viewport={"width": 1200, "height": 1100})
    page.goto(url)
    page.locator("#label-grid .cell").first.wait_for(timeout=15_000)
    page.get_by_role("tab", name="RLHF", exact=True).click()
    _set_slider(page, "compare-budget", 14)
    _set_slider(page, "compare-n", 20)
    # distil (~3 of the run's ~5 minutes here) and RLHF (~1) are left out: the wiring is what is checked here; every
    # method runs through the same run_compare on the tiny UNet (test_compare)
    for slow in ("distil", "rlhf"):
        page.locator("#compare-methods").get_by_label(slow, exact=True).uncheck()
    page.locator("#compare-btn").click()
    page.wait_for_function("document.querySelector('#compare-result').innerText.includes('Fine-tuned adapters saved')",
                           timeout=600_000)  # (the progress text names the methods as it goes)
    table = page.locator("#compare-result").inner_text()
    assert "d3po+censored" in table and "can show a drop" in table, table  # 20 images: too few malign ones
    rows = {line.split("\t")[0] for line in table.split("\n") if "\t" in line}  # the table's rows, as the page shows them
    assert {"baseline", "censored", "d3po"} <= rows, rows
    assert not {"distil", "rlhf"} & rows, rows  # the unticked methods did not run
    assert "Fine-tuned adapters saved" in table
    page.locator("#compare-plot img").wait_for(state="visible", timeout=10_000)
    page.locator("#compare-grid img").wait_for(state="visible", timeout=10_000)
    page.locator("#compare-curve img").wait_for(state="visible", timeout=10_000)  # bags has a published curve
    _shot(page, "rlhf")
    page.get_by_role("tab", name="Censor", exact=True).click()
    page.locator("#censor-model input").click()
    page.get_by_role("option", name="d3po").wait_for(timeout=10_000)


def test_a_kill_and_restart_keeps_the_browsers_session(browser, tmp_path):
    """Issue 19: after kill -9 and a restart on the same data folder, the same browser (same origin, same
    localStorage) reloads into its own session, marks and all. Gradio's BrowserState encrypts the stored
    id with a key; a new random key per launch made every browser start an empty session."""
    _require_browser()
    port = _free_port()
    proc = _start_app(tmp_path / "data", port)
    try:
        page = browser.new_page(viewport={"width": 1200, "height": 1000})
        page.goto(f"http://127.0.0.1:{port}")
        cells = page.locator("#label-grid .cell")
        cells.first.wait_for(timeout=60_000)
        for i in (0, 3):
            cells.nth(i).click()
        page.wait_for_function("document.querySelector('#counts').innerText.includes('malign 2')", timeout=60_000)
        proc.kill()  # SIGKILL: no shutdown hooks
        proc.wait(10)
        proc = _start_app(tmp_path / "data", port, wait_s=120)
        page.reload()
        page.locator("#label-grid .cell").first.wait_for(timeout=60_000)
        page.wait_for_function("document.querySelector('#counts').innerText.includes('viewed 25 · malign 2')",
                               timeout=60_000)
        marked = page.evaluate("[...document.querySelectorAll('#label-grid .cell')].map(c => c.classList.contains('malign'))")
        assert [i for i, m in enumerate(marked) if m] == [0, 3]
    finally:
        proc.kill()
        proc.wait(10)


def _plant_gallery(folder: Path, seed) -> None:
    """A gallery folder as an import from before issue 19 left it: the uploader's manifest and images,
    and no record of what reproduced."""
    import json

    import numpy as np
    from PIL import Image

    from censor.core.settings import DEFAULT_GUIDANCE
    from censor.studio.manifest import guidance_settings_dict

    folder.mkdir(parents=True)
    settings = dict(guidance_settings_dict(DEFAULT_GUIDANCE), steps=5, seed=seed, count=3, method="ddim", eta=0.0,
                    adapter=None, auto=None)
    manifest = dict(settings=settings, seeds=[0, 1, 2], images={"baseline": 3, "censored": 3}, image_size=[28, 28],
                    reward_sha256="0" * 64)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    for i in range(3):
        Image.fromarray(np.full((28, 28), 60 * i, np.uint8)).save(folder / f"censored_{i:03d}.png")


def test_a_planted_phishing_link_renders_inert_and_unverified_images_stay_hidden(server, studio_dir, browser):
    """Issue 19: a ?bundle= link whose manifest's seed was Markdown showed a heading linking to a
    phishing page, and a link showed the uploaded images even when none reproduced."""
    url, _ = server
    phish = "0\n\n# [Your session expired: log in again](https://phish.example/login)\n<img src=x onerror=alert(1)>"
    _plant_gallery(studio_dir / "bundles" / "phishlink01", phish)
    _plant_gallery(studio_dir / "bundles" / "unverified1", 0)
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(f"{url}/?bundle=phishlink01")
    ready = "document.querySelector('#share-result') && document.querySelector('#share-result').innerText.trim()"
    page.wait_for_function(ready, timeout=60_000)
    result = page.locator("#share-result")
    assert result.locator("a, h1, h2, h3, img").count() == 0, result.inner_html()
    assert "phish.example" not in result.inner_html()
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(f"{url}/?bundle=unverified1")
    page.wait_for_function(ready, timeout=60_000)
    assert "None of its 3 images reproduced" in page.locator("#share-result").inner_text()
    assert page.locator("#shared img").count() == 0


# ---- issue 20: a three-minute session that feels like one ----------------------------------------

VIEWPORTS = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}


def _inside(page, selector: str, viewport: dict, vertical: bool = True) -> tuple[int, int]:
    """How many of ``selector``'s elements lie wholly inside the window (scrolled to the top), of how many."""
    boxes = page.evaluate(f"[...document.querySelectorAll('{selector}')].map(e => {{"
                          "const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; })")
    ok = [b for b in boxes if b[0] >= 0 and b[2] <= viewport["width"] + 0.5
          and (not vertical or (b[1] >= 0 and b[3] <= viewport["height"] + 0.5))]
    return len(ok), len(boxes)


@pytest.mark.parametrize("name", list(VIEWPORTS))
def test_grid_tabs_and_galleries_fit_the_window(server, browser, name):
    """Issue 20: row 5 of the grid was below the fold at 1280x800, a phone reached 10 of 25 images and
    hid tabs 3-6 behind a menu, and galleries clipped their last column."""
    url, _ = server
    vp = VIEWPORTS[name]
    page = browser.new_page(viewport=vp)
    page.goto(url)
    page.locator("#label-grid .cell").first.wait_for(timeout=30_000)
    page.wait_for_function("document.querySelectorAll('#label-grid .cell img').length === 25 && "
                           "[...document.querySelectorAll('#label-grid .cell img')].every(i => i.complete)")
    assert _inside(page, "#label-grid .cell", vp) == (25, 25)  # the whole grid, without scrolling
    tabs = page.get_by_role("tab")
    names = [tabs.nth(i).inner_text() for i in range(tabs.count()) if tabs.nth(i).is_visible()]
    assert names == ["Label", "Train", "Censor", "Share", "RLHF", "Samples"], names
    _shot(page, f"label_{name}")
    page.get_by_role("tab", name="Samples", exact=True).click()
    page.locator("#generate-btn").click()  # the Samples tab's default gallery
    page.wait_for_function("document.querySelectorAll('#gallery img').length >= 8", timeout=180_000)
    shown, total = _inside(page, "#gallery img", vp, vertical=False)
    assert shown == total >= 8, f"{total - shown} of {total} gallery images clipped"


def _colours(page, selector: str, prop: str) -> tuple[list[float], list[float]]:
    """``prop`` of the first ``selector`` and the first opaque background behind it, as RGB lists."""
    return page.evaluate(f"""(() => {{
        const rgb = s => s.match(/[\\d.]+/g).map(Number);
        let e = document.querySelector('{selector}');
        const fg = rgb(getComputedStyle(e)['{prop}']);
        while (e && (rgb(getComputedStyle(e).backgroundColor)[3] === 0)) e = e.parentElement;
        return [fg.slice(0, 3), e ? rgb(getComputedStyle(e).backgroundColor).slice(0, 3) : [255, 255, 255]];
    }})()""")


def _contrast(a, b) -> float:
    """WCAG 2 contrast ratio of two sRGB colours."""
    def lum(c):
        c = [v / 255 for v in c]
        c = [v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in c]
        return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]
    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_undo_page_marks_focus_and_the_page_after_a_reload(server, browser):
    """Issue 20: no undo, no page-wide marking, the focus ring vanished after each mark, Tab could not
    reach the grid and a reload went back to page 1. Shown images count as benign: the page says so."""
    url, _ = server
    page = browser.new_page(viewport=VIEWPORTS["desktop"])
    page.goto(url)
    cells = page.locator("#label-grid .cell")
    cells.first.wait_for(timeout=30_000)
    assert "counts as benign unless you mark it" in page.locator("#label-note").inner_text()
    n_malign = "document.querySelectorAll('#label-grid .cell.malign').length"
    for _ in range(40):  # Tab reaches the grid
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement && document.activeElement.classList.contains('label-grid')"):
            break
    else:
        pytest.fail("Tab never reached the label grid")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("m")
    page.wait_for_function(f"{n_malign} === 1 && document.querySelectorAll('#label-grid .cell')[1].classList.contains('malign')")
    # the ring is still on the image just marked, after the grid re-rendered
    assert page.evaluate("[...document.querySelectorAll('#label-grid .cell')].findIndex(c => c.classList.contains('focused'))") == 1
    page.keyboard.press("u")
    page.wait_for_function(f"{n_malign} === 0")
    page.locator("#page-malign").click()
    page.wait_for_function(f"{n_malign} === 25")
    page.wait_for_function("document.querySelector('#counts').innerText.includes('malign 25 · target 100')")
    page.locator("#undo-btn").click()
    page.wait_for_function(f"{n_malign} === 0")
    page.locator("#page-out").click()
    page.wait_for_function("document.querySelectorAll('#label-grid .cell.unsure').length === 25")
    page.wait_for_function("document.querySelector('#counts').innerText.includes('benign 0 · unsure 25')")
    # WCAG AA: helper text 4.5:1 against what is behind it, the unsure mark (a border) 3:1
    text, back = _colours(page, "#informative-first .info-text", "color")
    assert _contrast(text, back) >= 4.5, (text, back)
    border, back = _colours(page, "#label-grid .cell.unsure", "borderTopColor")
    assert _contrast(border, back) >= 3.0, (border, back)
    page.locator("#next-page").click()
    page.wait_for_function("document.querySelector('#page-info').innerText.includes('page 2')")
    page.reload()
    page.wait_for_function("document.querySelector('#page-info') && "
                           "document.querySelector('#page-info').innerText.includes('page 2')", timeout=30_000)


def test_training_shows_progress_greys_its_button_and_cancel_stops_the_server(server, browser):
    """Issue 20: training showed no progress for minutes, its button stayed clickable, and nothing could
    stop a job. Now the bar is visible, the button greys out, Cancel ends the server's work (the next
    job starts at once), and a reward from two marks says it cannot be trusted."""
    url, _ = server
    page = browser.new_page(viewport=VIEWPORTS["desktop"])
    page.goto(url)
    _label_two_for_training(page, 8, 2000)  # minutes of work: only Cancel ends it in time
    page.locator("#train-btn").click()
    page.wait_for_function("(() => { const e = [...document.querySelectorAll('#train-result .progress-text, "
                           "#train-result .progress-level, #train-result .eta-bar')]; "
                           "return e.some(x => x.getBoundingClientRect().height > 0); })()", timeout=60_000)
    assert page.locator("#train-btn").is_disabled()
    _shot(page, "train_progress")
    page.locator("#train-cancel").click()
    page.wait_for_function("document.querySelector('#train-result').innerText.includes('cancelled')", timeout=60_000)
    page.wait_for_function("!document.querySelector('#train-btn').disabled", timeout=30_000)
    _set_slider(page, "members", 2)
    _set_slider(page, "iterations", 20)
    page.locator("#train-btn").click()  # the gate's place was given back: this one runs, not refused
    page.wait_for_function("document.querySelector('#train-result').innerText.includes('Trained a')", timeout=120_000)
    text = page.locator("#train-result").inner_text()
    assert "⚠" in text and "malign" in text, text  # two marks: too few to trust


# ---- issue 21: region feedback -------------------------------------------------------------------

def _regions(page) -> list:
    """Per grid cell: its box's title text (None without a box)."""
    return page.evaluate("[...document.querySelectorAll('#label-grid .cell')].map(c => "
                         "c.querySelector('.region') ? c.title.split(', ').slice(1).join(', ') : null)")


def test_a_box_drawn_on_an_image_survives_a_reload_and_a_session_export(server, browser, tmp_path):
    """Issue 21: drag a box round the malign part, reload, the box is still there; b and Escape place
    and remove one from the keyboard; a downloaded session brings its boxes back when uploaded."""
    url, _ = server
    page = browser.new_page(viewport={"width": 1200, "height": 1000}, accept_downloads=True)
    page.goto(url)
    image = page.locator("#label-grid .cell img").first
    image.wait_for(timeout=30_000)
    # raw mouse events go to whatever is on top: wait until the image itself takes them (not the
    # translucent status overlay Gradio lays over the grid while the load events still run)
    image.hover(timeout=60_000)
    page.wait_for_function("(() => { const i = document.querySelector('#label-grid .cell img'); "
                           "const r = i.getBoundingClientRect(); "
                           "return document.elementFromPoint(r.left + 5, r.top + 5) === i; })()", timeout=60_000)
    r = image.bounding_box()
    page.mouse.move(r["x"] + 0.05 * r["width"], r["y"] + 0.05 * r["height"])
    page.mouse.down()
    page.mouse.move(r["x"] + 0.2 * r["width"], r["y"] + 0.2 * r["height"], steps=4)
    page.mouse.move(r["x"] + 0.3 * r["width"], r["y"] + 0.3 * r["height"], steps=4)
    page.mouse.up()
    first = "document.querySelectorAll('#label-grid .cell')[0]"
    page.wait_for_function(f"{first}.classList.contains('malign') && {first}.querySelector('.region:not(.drawing)')",
                           timeout=30_000)
    assert _regions(page)[0] == "box x 1-9, y 1-9" and page.locator("#label-grid .region").count() == 1
    page.wait_for_function("document.querySelector('#counts').innerText.includes('malign 1')", timeout=30_000)
    page.reload()
    page.locator("#label-grid .cell").first.wait_for(timeout=30_000)
    page.wait_for_function(f"{first} && {first}.querySelector('.region')", timeout=30_000)
    assert _regions(page)[0] == "box x 1-9, y 1-9"
    # the keyboard: to the 3rd image, b boxes its top-left corner, b again the top-right, Escape removes it
    page.locator("body").click(position={"x": 5, "y": 5})
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    third = "document.querySelectorAll('#label-grid .cell')[2]"
    page.keyboard.press("b")
    page.wait_for_function(f"{third}.title.includes('box x 0-9, y 0-9') && {third}.classList.contains('malign')",
                           timeout=30_000)
    page.keyboard.press("b")
    page.wait_for_function(f"{third}.title.includes('box x 19-28, y 0-9')", timeout=30_000)
    page.keyboard.press("Escape")
    page.wait_for_function(f"!{third}.querySelector('.region') && {third}.classList.contains('malign')", timeout=30_000)
    page.keyboard.press("b")
    page.wait_for_function(f"{third}.title.includes('box x 0-9, y 0-9')", timeout=30_000)
    # the session goes out as a zip and comes back as a new session, boxes and all
    path = _download(page, page.get_by_role("button", name="Download session"), "session_bundle.zip",
                     tmp_path / "session.zip")
    import json
    import zipfile

    boxes = [it.get("box") for it in json.loads(zipfile.ZipFile(path).read("session.json"))["items"]]
    assert [b for b in boxes if b] == [[1, 1, 9, 9], [0, 0, 9, 9]]
    page.locator("#session-in input[type=file]").set_input_files(str(path))
    page.wait_for_function("document.querySelector('#share-result').innerText.includes('Imported as a new session')",
                           timeout=60_000)
    page.get_by_role("tab", name="Label", exact=True).click()
    page.wait_for_function("document.querySelectorAll('#label-grid .region').length === 2", timeout=30_000)
    assert _regions(page)[0] == "box x 1-9, y 1-9" and _regions(page)[2] == "box x 0-9, y 0-9"
