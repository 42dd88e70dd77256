"""The whole UI workflow in a real headless Chromium (Debian's `chromium`, driven by Playwright):
open the project the server was started on (shown read-only), import three images, edit a
caption, start a tiny training, stop it, resume it, watch progress reach the end, see the LoRA
listed, generate an image with it and see it. The server runs as a user starts it, with the
tiny model's folder as its `--models-dir`.

`scripts/test.sh` installs both (`scripts/setup-browser.sh`). Where the browser is missing the
test is skipped, unless LORAKILN_E2E=required (as `.ci/run` sets), where that is a failure.
A screenshot of each stage is kept in `$LORAKILN_TEST_ARTIFACTS/ui-e2e` (default
`test-artifacts/ui-e2e` in the repository).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

CHROMIUM = os.environ.get("LORAKILN_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("LORAKILN_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))
#: The probe's flags (env/machines): no sandbox as root, and no background connections, which a
#: closed network refuses many at a time.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def _browser_or_skip() -> None:
    missing = []
    if not Path(CHROMIUM).is_file():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install playwright)")
    if missing:
        message = "browser test needs " + " and ".join(missing) + "; scripts/setup-browser.sh installs both"
        if os.environ.get("LORAKILN_E2E") == "required":
            pytest.fail(message)
        pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path: Path, tiny_sd1_file: Path) -> Iterator[tuple[str, Path]]:
    """`lorakiln ui --project <home>/anna --models-dir <tiny model's folder>` in its own process;
    yields (URL, home folder)."""
    _browser_or_skip()
    port = _free_port()
    home = tmp_path / "loras"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "LORAKILN_HOME": str(tmp_path / "lkhome")}
    log = (tmp_path / "ui.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "lorakiln", "ui", "--project", str(home / "anna"), "--port",
                             str(port), "--models-dir", str(tiny_sd1_file.parent)], stdout=log,
                            stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 300  # a cold start imports gradio and torch
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "ui.log").read_text()
            assert time.monotonic() < deadline, "the UI did not answer within 300 s"
            time.sleep(0.5)
        yield url, home
    finally:  # also when the start failed: never leave a UI (or its training) behind
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        _stop_trainings(home)


def _stop_trainings(home: Path) -> None:
    """Trainings run in their own sessions and outlive the UI by design; a failed test stops them."""
    from lorakiln.ui.runs import RunQueue

    for queue_file in home.glob("*/.lorakiln-runs/queue.json"):
        queue = RunQueue(queue_file.parent)
        for run in queue.runs():
            if run.status == "running":
                queue.stop(run.id)
                queue.wait(run.id, timeout=60)


def _images(folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for i, colour in enumerate([(200, 40, 40), (40, 160, 60), (50, 70, 200)]):
        img = Image.new("RGB", (64, 64), (230, 230, 230))
        ImageDraw.Draw(img).ellipse([12 + 4 * i, 12, 50, 50], fill=colour)
        img.save(folder / f"shot{i}.png")
        paths.append(folder / f"shot{i}.png")
    return paths


def _field(page, label: str):  # noqa: ANN001, ANN202 - Playwright's types stay out of the signature
    """The input or textarea of the gradio component labelled `label` (its label text, exactly)."""
    block = page.locator(".block").filter(has=page.get_by_text(label, exact=True)).last
    return block.locator("input:not([type=file]), textarea").first


def _wait_text(locator, text: str, timeout_s: float) -> None:  # noqa: ANN001
    """Wait until a rendered element (Markdown) shows `text`."""
    from playwright.sync_api import expect

    expect(locator).to_contain_text(text, timeout=timeout_s * 1000)


def _wait_value(locator, text: str, timeout_s: float) -> None:  # noqa: ANN001
    """Wait until a textbox's value contains `text` (a value is not text content)."""
    from playwright.sync_api import expect

    expect(locator).to_have_value(re.compile(re.escape(text)), timeout=timeout_s * 1000)


def test_project_to_generated_image_in_chromium(server: tuple[str, Path], tmp_path: Path,
                                                tiny_sd1_file: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, home = server
    shots = ARTIFACTS / "ui-e2e"
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    project = home / "anna"
    uploads = _images(tmp_path / "camera")

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(url)
        expect(page.get_by_text("lorakiln").first).to_be_visible()

        # 1. the project is the server's: shown, not editable
        folder = _field(page, "project folder")
        expect(folder).to_have_value(str(project.resolve()))
        expect(folder).not_to_be_editable()
        _field(page, "trigger word").fill("zwx")
        _field(page, "repeats").fill("5")
        page.screenshot(path=str(shots / "1-project.png"), full_page=True)

        # 2. import three images by upload
        page.locator("input[type=file]").first.set_input_files([str(p) for p in uploads])
        page.wait_for_timeout(1500)  # gradio uploads the files before the button can use them
        page.get_by_role("button", name="import uploads").click()
        _wait_value(_field(page, "import"), "with 3 image(s)", 60)
        dataset = project / "train" / "5_zwx"
        assert sorted(p.name for p in dataset.glob("*.png")) == ["shot0.png", "shot1.png", "shot2.png"]
        page.get_by_role("button", name="refresh gallery").click()
        thumbs = page.locator("#dataset-gallery button.thumbnail-item")
        expect(thumbs).to_have_count(3, timeout=60_000)
        page.screenshot(path=str(shots / "2-imported.png"), full_page=True)

        # 3. edit a caption
        thumbs.first.click()
        expect(_field(page, "image")).not_to_have_value("", timeout=30_000)
        chosen = Path(_field(page, "image").input_value())
        _field(page, "caption").fill("photo of zwx, a red circle")
        page.get_by_role("button", name="save caption").click()
        expect(page.get_by_text("saved", exact=False).first).to_be_visible()
        deadline = time.monotonic() + 30
        while not chosen.with_suffix(".txt").is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert chosen.with_suffix(".txt").read_text(encoding="utf-8") == "photo of zwx, a red circle"
        page.screenshot(path=str(shots / "3-caption.png"), full_page=True)

        # 4. the run TOML: load a prepared one, change the epochs in the form, start
        (project / "run.toml").write_text(
            f'[model]\npretrained_model = "{tiny_sd1_file}"\n[data]\ntrain_data_dir = "train"\nresolution = 64\n'
            'enable_bucket = false\n[network]\nnetwork_dim = 4\nnetwork_train_unet_only = true\n'
            '[train]\ntrain_batch_size = 1\nmax_train_epochs = 1\nseed = 1\n'
            '[output]\noutput_dir = "output"\noutput_name = "anna"\n', encoding="utf-8")
        page.get_by_role("tab", name="Train").click()
        page.get_by_role("button", name="load", exact=True).click()
        epochs = _field(page, "train.max_train_epochs")
        expect(epochs).to_have_value("1", timeout=30_000)
        _wait_value(_field(page, "total steps"), "optimizer steps: 15", 60)  # the load's own count has landed
        epochs.fill("8")  # 3 images × 5 repeats × 8 epochs = 120 steps: long enough to stop midway
        epochs.press("Tab")
        page.get_by_role("button", name="count steps").click()
        _wait_value(_field(page, "total steps"), "optimizer steps: 120", 60)
        page.get_by_role("button", name="start").click()
        status = page.locator("#run-status")
        _wait_text(status, "step ", 240)
        _wait_text(status, "running", 5)
        page.screenshot(path=str(shots / "4-training.png"), full_page=True)

        # 5. stop: the trainer saves a LoRA and a state; resume continues to the end
        page.get_by_role("button", name="stop").click()
        _wait_text(status, "0001-run: stopped", 240)
        page.screenshot(path=str(shots / "5-stopped.png"), full_page=True)
        page.get_by_role("button", name="resume").click()
        _wait_text(status, "0002-run: done", 600)
        _wait_text(status, "step 120/120", 30)
        saves = _field(page, "saved LoRAs")
        _wait_value(saves, "anna.safetensors", 30)
        assert (project / "output" / "anna.safetensors").is_file()
        page.screenshot(path=str(shots / "6-done.png"), full_page=True)

        # 6. generate with the LoRA and see the image
        page.get_by_role("tab", name="Test").click()
        page.get_by_role("button", name="from run TOML").click()
        expect(_field(page, "LoRA folder")).to_have_value(str((project / "output").resolve()), timeout=30_000)
        _field(page, "prompt").fill("photo of zwx, <lora:anna:1>")
        for label, value in (("steps", "2"), ("width", "64"), ("height", "64"), ("seed", "5")):
            _field(page, label).fill(value)
        page.get_by_role("button", name="generate", exact=True).click()
        _wait_text(page.locator("#test-message"), "00000-5.png", 300)
        expect(page.locator("#test-images img").first).to_be_visible(timeout=60_000)
        assert (project / "outputs" / "txt2img" / "00000-5.png").is_file()
        page.screenshot(path=str(shots / "7-generated.png"), full_page=True)
        browser.close()
    assert sorted(p.name for p in shots.glob("*.png")) == [
        "1-project.png", "2-imported.png", "3-caption.png", "4-training.png", "5-stopped.png", "6-done.png",
        "7-generated.png"]
