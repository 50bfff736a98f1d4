"""``miga app`` in a real browser (Playwright driving Debian's Chromium) on the exact Gaussian world: a two-row
timeline, Generate, frames and progress arrive, Stop checkpoints, the run is listed, Resume finishes it, the
downloaded MP4 has every frame; an invalid prompt shows its message and starts nothing, and so does a refused
MIGA switch, opening the closed accordion it sits in."""

import os
import re

import pytest

CHROMIUM = "/usr/bin/chromium"
FRAMES = 240
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM} (CI installs it)")
pytest.importorskip("gradio")
pytest.importorskip("playwright")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    os.environ["GRADIO_TEMP_DIR"] = str(root / "gradio")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    from miga.app.command import create, launch

    runs = str(root / "runs")
    os.makedirs(runs)
    demo = create(None, runs, checkpoint_every=16)
    _, url, _ = launch(demo, runs, prevent_thread_lock=True, quiet=True)
    yield url, runs
    demo.close()


@pytest.fixture(scope="module")
def page(app):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
            "--autoplay-policy=no-user-gesture-required"])
        page = browser.new_page(viewport={"width": 1300, "height": 1100}, accept_downloads=True)
        page.goto(app[0])
        yield page
        browser.close()


def text_box(page, elem_id):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def choose(page, elem_id, option):
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option).click()


def status_value(page) -> str:
    return text_box(page, "status").input_value()


def test_generate_stop_resume_download(app, page, tmp_path):
    from playwright.sync_api import expect

    from miga.video import read_video

    choose(page, "model", "gaussian (built in)")
    text_box(page, "frames").fill(str(FRAMES))
    text_box(page, "start-0").fill("0")
    text_box(page, "prompt-0").fill("a red circle bouncing")
    text_box(page, "start-1").fill("120")
    text_box(page, "prompt-1").fill("a blue square drifting")
    expect(page.locator("#preview")).to_contain_text("120–239")
    page.click("#generate")
    status = page.locator("#status textarea")
    expect(status).to_have_value(re.compile(rf"frame ([1-9]\d*)/{FRAMES} · "), timeout=30000)
    first = int(re.search(r"frame (\d+)/", status_value(page)).group(1))
    expect(page.locator("#latest img")).to_be_visible()
    expect(status).not_to_have_value(re.compile(rf"frame {first}/"), timeout=10000)  # the progress moves
    page.click("#stop")
    expect(status).to_have_value(re.compile(rf"stopped at frame (\d+)/{FRAMES}"), timeout=30000)
    stopped = int(re.search(r"stopped at frame (\d+)/", status_value(page)).group(1))
    assert 0 < stopped < FRAMES
    expect(page.locator("#runs")).to_contain_text("stopped at", timeout=10000)
    (name,) = os.listdir(app[1])
    expect(page.locator("#details")).to_contain_text(name, timeout=10000)

    page.click("#resume")
    expect(status).to_have_value(f"run {name}: complete, {FRAMES} frames", timeout=60000)
    expect(page.locator("#runs")).to_contain_text("complete", timeout=10000)
    expect(page.locator("#download")).to_have_text("Download MP4", timeout=10000)  # the whole video
    with page.expect_download() as info:
        page.click("#download")
    path = tmp_path / "video.mp4"
    info.value.save_as(path)
    frames, fps = read_video(path)
    assert len(frames) == FRAMES and fps == 8


def test_an_invalid_prompt_shows_its_message_and_starts_nothing(app, page):
    from playwright.sync_api import expect

    before = sorted(os.listdir(app[1]))
    choose(page, "model", "shapes (built in)")
    text_box(page, "prompt-1").fill("a purple hexagon")
    page.click("#generate")
    expect(page.locator("#prompt-1")).to_contain_text("unknown word 'hexagon'", timeout=20000)
    page.wait_for_timeout(1000)
    assert sorted(os.listdir(app[1])) == before


def test_a_refused_switch_opens_the_closed_switches_and_starts_nothing(app, page):
    """A MIGA switch's message is on its field: the closed "MIGA switches" accordion opens to show it."""
    from playwright.sync_api import expect

    before = sorted(os.listdir(app[1]))
    choose(page, "model", "shapes (built in)")
    text_box(page, "prompt-0").fill("a red circle bouncing on a blue background")
    text_box(page, "prompt-1").fill("a white square orbiting on a green background")
    page.get_by_text("MIGA switches").click()  # open, set, close again
    text_box(page, "guides").fill("16")
    page.get_by_text("MIGA switches").click()
    expect(page.locator("#guides")).to_be_hidden()
    page.click("#generate")
    expect(page.locator("#guides")).to_be_visible(timeout=20000)
    expect(page.locator("#guides")).to_contain_text("m_guid=16", timeout=20000)
    page.wait_for_timeout(1000)
    assert sorted(os.listdir(app[1])) == before
