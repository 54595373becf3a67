"""The web page in a real browser: Debian's headless Chromium driven by Playwright, against the
API on a real stack (Postgres, Redis, moto S3, an inference worker and a training worker).

The inference worker serves the untrained random bundle, not the stand-in model: the stand-in's
attention is the same uniform map for every word, and the overlay must change from word to word.
Set CAPTIONER_SCREENSHOT=1 to rewrite docs/web-page.png (the README shows it).
"""

from __future__ import annotations

import io
import json
import os
import threading
import urllib.request
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from harness.stack import running_stack
from model.shapes import render_scene

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")  # Debian's; CI installs it (apt-get install chromium)
SCREENSHOT = ROOT / "docs" / "web-page.png"
SHOOT = os.environ.get("CAPTIONER_SCREENSHOT") == "1"  # rewrite SCREENSHOT (not in CI)
JOB_S = 30_000  # ms for a job to be captioned (the worker is up; the model runs on CPU)
RUN_S = 60_000  # ms for a 1-epoch run on 20 shapes images
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def site(request, tmp_path_factory) -> Iterator[tuple[str, str]]:
    """(base URL, admin key) of the API on a stack with an inference and a training worker. The
    worker serves the untrained random bundle; for the screenshot, the suite's trained bundle
    (minutes to train, but its captions read well)."""
    folder = tmp_path_factory.mktemp("web")
    if SHOOT:
        bundle = request.getfixturevalue("trained_bundle")
    else:
        bundle = talkative(request.getfixturevalue("random_bundle"), folder)
    with running_stack(
        folder, workers=["inference", "training"], model_bundle=bundle, batch_max_size=4
    ) as stack:
        yield stack.client.base_url, stack.api_key


def talkative(bundle, folder: Path) -> Path:
    """The untrained bundle saved with <end> made unlikely: an untrained decoder's first word
    is a near-tie, and an empty caption would leave the page no word to show."""
    from model.bundle import load_bundle, save_bundle
    from model.vocab import END_ID

    copy = load_bundle(save_bundle(bundle, folder / "untrained"))
    bias = copy.decoder.output_layer.bias
    bias.assign(bias.numpy() - 3.0 * (np.arange(bias.shape[0]) == END_ID))
    return save_bundle(copy, folder / "bundle")


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (as root: no sandbox)."""
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: CI installs it (apt-get install chromium)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    """A fresh browser context (its own sessionStorage) and page."""
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    page = context.new_page()
    page.set_default_timeout(JOB_S)
    yield page
    context.close()


@pytest.fixture(scope="module")
def scene() -> bytes:
    """A shapes scene as PNG: two coloured shapes."""
    image = render_scene(np.random.default_rng(3))[0]
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def open_page(page, site: tuple[str, str], path: str = "/", key: str | None = None) -> None:
    """Open the page at `path` and enter the API key (the admin's unless `key`)."""
    url, admin = site
    page.goto(f"{url}{path}")
    page.get_by_role("textbox", name="API key").fill(key or admin)
    page.get_by_role("button", name="Use key").click()


def upload(page, scene: bytes):
    """Pick the scene with the file input; the job's card once its caption is shown."""
    page.get_by_label("Choose images").set_input_files(
        files=[{"name": "scene.png", "mimeType": "image/png", "buffer": scene}]
    )
    card = page.locator(".job").first
    card.locator(".state[data-status='succeeded']").wait_for()
    card.locator(".word").first.wait_for()
    return card


def api(site: tuple[str, str], path: str) -> dict:
    url, key = site
    request = urllib.request.Request(f"{url}{path}", headers={"Authorization": f"Bearer {key}"})
    with _opener.open(request, timeout=30) as response:
        return json.load(response)


def answering(sent: list[dict]):
    """A route handler that keeps each POST's JSON body in `sent` and answers it 400 itself (no
    job or run is made); other methods go on to the API."""
    refusal = json.dumps({"title": "Bad Request", "detail": "answered by the test"})

    def answer(route) -> None:
        if route.request.method != "POST":
            route.fallback()
            return
        sent.append(route.request.post_data_json)
        route.fulfill(status=400, content_type="application/problem+json", body=refusal)

    return answer


def overlay_pixels(card) -> list[int]:
    """RGBA of a 16 × 16 sample of the overlay canvas's pixels."""
    return card.locator("canvas.overlay").evaluate(
        """canvas => {
            const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
            const out = [];
            for (let j = 0; j < 16; j++) for (let i = 0; i < 16; i++) {
                const x = Math.floor((i + 0.5) * canvas.width / 16);
                const y = Math.floor((j + 0.5) * canvas.height / 16);
                const at = (y * canvas.width + x) * 4;
                out.push(...data.data.slice(at, at + 4));
            }
            return out;
        }"""
    )


def sticking_out(page) -> list[str]:
    """Elements wider than the window (the page would scroll sideways), outside scroll boxes."""
    return page.evaluate("""() => [...document.querySelectorAll("body *")]
        .filter(e => !e.closest(".table-wrap")
                     && e.getBoundingClientRect().right > window.innerWidth + 0.5)
        .map(e => `${e.tagName}#${e.id}.${e.className}: ${e.getBoundingClientRect().right}`)""")


def watch_status(page) -> None:
    """Record every text of the aria-live status line in window.said."""
    page.evaluate("""() => {
        window.said = [];
        new MutationObserver(() => window.said.push(document.querySelector("#status").textContent))
            .observe(document.querySelector("#status"), {childList: true, characterData: true,
                                                         subtree: true});
    }""")


def test_the_pages_come_with_a_strict_content_security_policy(site):
    for path in ("/", "/training", "/web/app.js", "/web/style.css"):
        with _opener.open(f"{site[0]}{path}", timeout=10) as response:
            policy = response.headers["Content-Security-Policy"]
            assert "default-src 'self'" in policy and "script-src 'self'" in policy, path
            assert "unsafe-inline" not in policy and "http" not in policy, path
    with _opener.open(f"{site[0]}/web/app.js", timeout=10) as response:
        assert "javascript" in response.headers["Content-Type"]  # modules need a script type


def test_an_uploaded_image_is_captioned_live(page, site, scene):
    messages: list[str] = []
    page.on("console", lambda m: messages.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: messages.append(str(error)))
    open_page(page, site)
    watch_status(page)
    card = upload(page, scene)
    job = api(site, f"/v1/jobs/{card.get_attribute('data-job-id')}")
    assert job["status"] == "succeeded"
    assert card.locator(".word").all_inner_texts() == job["result"]["tokens"]
    said = " ".join(page.evaluate("window.said"))
    assert said.index(" queued.") < said.index(" succeeded."), said  # running: if polled then
    assert card.locator("img").evaluate("img => img.src.startsWith('blob:') && img.naturalWidth")
    link = card.get_by_role("link", name="Download attention (.npy)")
    assert link.get_attribute("download") == f"{job['id']}.attention.npy"
    recent = page.locator(f"#recent li[data-job-id='{job['id']}']")
    recent.wait_for()
    assert job["result"]["caption"] in recent.inner_text()
    assert "No registered version is active" in page.locator("#model").inner_text()
    assert not messages, messages  # no CSP violation, no script error, no failed call


def test_moving_across_the_words_redraws_the_attention_over_the_image(page, site, scene):
    open_page(page, site)
    page.get_by_label("Words at most").fill("6")
    card = upload(page, scene)
    words = card.locator(".word")
    assert 2 <= words.count() <= 6, card.inner_text()
    words.nth(0).hover()
    first = overlay_pixels(card)
    words.nth(1).hover()
    second = overlay_pixels(card)
    assert any(first[3::4]) and len(set(first[3::4])) > 1  # drawn, and hotter in some places
    assert first != second  # each word looked elsewhere
    assert words.nth(1).get_attribute("aria-pressed") == "true"
    words.nth(0).focus()
    assert overlay_pixels(card) == first
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.dataset.index") == "1"
    assert overlay_pixels(card) == second
    page.keyboard.press("ArrowLeft")
    assert overlay_pixels(card) == first


def test_an_image_url_is_captioned(page, site, scene, tmp_path):
    (tmp_path / "scene.png").write_bytes(scene)
    handler = partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        open_page(page, site)
        page.get_by_label("Image URL").fill(f"http://127.0.0.1:{server.server_port}/scene.png")
        page.get_by_role("button", name="Caption URL").click()
        card = page.locator(".job").first
        card.locator(".state[data-status='succeeded']").wait_for()
        assert card.locator(".word").count() >= 1
        assert any(overlay_pixels(card)[3::4])  # over a checkerboard: no image to show
    finally:
        server.shutdown()


def test_the_decoding_fields_start_at_the_documented_defaults(page, site):
    open_page(page, site)
    page.wait_for_function("document.querySelector('#max-length').value !== ''")
    fields = api(site, "/openapi.json")["components"]["schemas"]["JobForm"]["properties"]
    for label, name in (
        ("Words at most", "max_length"),
        ("Beams", "beam_size"),
        ("Temperature", "temperature"),
    ):
        field = page.get_by_label(label)
        assert float(field.input_value()) == fields[name]["default"], label
        assert float(field.get_attribute("max")) == fields[name]["maximum"], label
    seed = page.get_by_label("Seed")
    assert seed.input_value() == ""  # none: a random one when sampling
    assert float(seed.get_attribute("max")) == fields["seed"]["maximum"]


def test_a_sampled_job_carries_its_temperature_and_seed(page, site, scene):
    open_page(page, site)
    page.wait_for_function("document.querySelector('#beam-size').value !== ''")
    beams = page.get_by_label("Beams")
    beams.fill("4")
    page.get_by_label("Temperature").fill("0.8")
    assert beams.is_disabled() and beams.input_value() == "1"  # the API samples with one beam
    assert "Beams is 1" in page.locator("#sampling-hint").inner_text()
    page.get_by_label("Seed").fill("1234")
    page.get_by_label("Choose images").set_input_files(
        files=[{"name": "scene.png", "mimeType": "image/png", "buffer": scene}]
    )  # as form fields
    card = page.locator(".job").first
    card.locator(".state[data-status='succeeded']").wait_for()  # a sampled caption may be empty
    job = api(site, f"/v1/jobs/{card.get_attribute('data-job-id')}")
    assert job["options"] == {"beam_size": 1, "max_length": 20, "temperature": 0.8, "seed": 1234}
    shown = card.locator(".options").inner_text()
    assert "temperature 0.8" in shown and "seed 1234" in shown, shown
    recent = page.locator(f"#recent li[data-job-id='{job['id']}']")
    recent.wait_for()
    assert "temperature 0.8, seed 1234" in recent.inner_text()
    sampled = {"image_url": "http://127.0.0.1:9/scene.png", "max_length": 20, "temperature": 1.5}
    assert json_sent(page, "1.5", "7") == {**sampled, "seed": 7}  # numbers; no beam_size
    page.get_by_label("Temperature").fill("0")
    assert beams.is_enabled() and beams.input_value() == "4"  # the beams asked for before
    page.get_by_label("Seed").fill("4294967296")
    page.get_by_role("button", name="Caption URL").click()
    page.get_by_role("alert").filter(has_text="Seed must be a whole number").wait_for()


def json_sent(page, temperature: str, seed: str) -> dict:
    """The JSON body the URL form sends with this temperature and seed (the test answers it)."""
    sent: list[dict] = []
    answer = answering(sent)
    page.route("**/v1/jobs", answer)
    page.get_by_label("Temperature").fill(temperature)
    page.get_by_label("Seed").fill(seed)
    page.get_by_label("Image URL").fill("http://127.0.0.1:9/scene.png")
    page.get_by_role("button", name="Caption URL").click()
    page.get_by_role("alert").filter(has_text="answered by the test").wait_for()
    page.unroute("**/v1/jobs", answer)
    assert len(sent) == 1, sent
    return sent[0]


def test_a_wrong_key_gets_a_clear_message(page, site, scene):
    open_page(page, site, key="cap_not-a-key")
    page.get_by_label("Choose images").set_input_files(
        files=[{"name": "scene.png", "mimeType": "image/png", "buffer": scene}]
    )
    alert = page.get_by_role("alert")
    alert.wait_for()
    assert "401" in alert.inner_text() and "unknown or revoked" in alert.inner_text()


def test_a_correction_is_sent_and_acknowledged(page, site, scene):
    open_page(page, site)
    card = upload(page, scene)
    card.get_by_label("Correct this caption").fill("a red circle left of a blue square")
    card.get_by_role("button", name="Send correction").click()
    result = card.locator(".correction-result[data-outcome]:not([data-outcome=''])")
    result.wait_for()
    assert result.get_attribute("data-outcome") == "saved", result.inner_text()


# The validation score's points: solid 4-pixel squares in its colour (#2e8b57).
VALIDATION_DRAWN = """c => {
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    for (let i = 0; i < d.length; i += 4) {
        if (d[i] === 46 && d[i + 1] === 139 && d[i + 2] === 87 && d[i + 3] === 255) return true;
    }
    return false;
}"""


def test_the_training_page_starts_a_run_and_charts_its_progress(page, site):
    open_page(page, site, "/training")
    page.get_by_label("Epochs").fill("1")
    page.get_by_label("Batch size").fill("8")
    check_a_scenes_transformer_request(page)
    page.get_by_label("Generated shapes set").check()
    page.get_by_label("shapes set: images").fill("20")
    page.get_by_label("Decoder").select_option("gru")
    page.evaluate("""() => {
        window.states = [];
        const line = document.querySelector("#run-state");
        new MutationObserver(() => window.states.push(line.textContent))
            .observe(line, {childList: true, characterData: true, subtree: true});
    }""")
    with page.expect_request(lambda r: r.method == "POST" and "/v1/training-runs" in r.url) as sent:
        page.get_by_role("button", name="Start training run").click()
    asked = sent.value.post_data_json
    assert asked["dataset"] == {"type": "shapes", "size": 20}, asked
    assert asked["model"] == {"decoder": "gru"}, asked
    state = page.locator("#run-state")
    page.locator("#run-state[data-status='succeeded']").wait_for(timeout=RUN_S)
    states = page.evaluate("window.states")
    assert any(": running" in s for s in states), states  # seen while it ran
    chart = page.locator("#chart")
    assert int(chart.get_attribute("data-points")) >= 2  # the epoch's loss and its score
    assert chart.evaluate(
        "c => c.getContext('2d').getImageData(0, 0, c.width, c.height).data.some(v => v > 0)"
    )
    assert chart.evaluate(VALIDATION_DRAWN)
    assert page.locator("#chart-metric").inner_text() == "bleu4"
    assert "made v1" in state.inner_text()
    assert page.locator("#history tbody tr").count() == 1
    assert "token accuracy" in page.locator("#history thead").inner_text()
    accuracy = page.locator("#history tbody td.accuracy").inner_text()  # "—" for older workers
    assert accuracy == "—" or 0 <= float(accuracy) <= 1, accuracy
    assert "accuracy" not in page.locator("#history tbody td").last.inner_text()  # validation only
    check_the_curves_png(page)
    version = page.locator("#models tr[data-version='v1']")
    version.wait_for()
    assert page.get_by_role("button", name="Promote v1").is_visible()
    assert "decoder" in page.locator("#models thead").inner_text()
    assert version.locator("td.decoder").inner_text() == "GRU"
    page.set_viewport_size({"width": 360, "height": 740})
    assert not sticking_out(page)


def check_a_scenes_transformer_request(page) -> None:
    """The scenes set and a Transformer go into the run's request (the test answers the POST: no
    run is trained); typing a size picks that set."""
    sent: list[dict] = []
    answer = answering(sent)
    page.route("**/v1/training-runs", answer)
    page.get_by_label("scenes set: images").fill("30")
    assert page.get_by_label("Generated scenes set (harder)").is_checked()
    decoder = page.get_by_label("Decoder")
    decoder.focus()  # a native select: the keyboard chooses
    page.keyboard.press("ArrowDown")
    assert decoder.input_value() == "transformer"
    page.get_by_role("button", name="Start training run").click()
    page.get_by_role("alert").filter(has_text="answered by the test").wait_for()
    page.unroute("**/v1/training-runs", answer)
    asked = {"dataset": {"type": "scenes", "size": 30}, "model": {"decoder": "transformer"}}
    rest = {"hyperparameters": {"epochs": 1, "batch_size": 8}, "promotion": "never"}
    assert sent == [{**asked, **rest}]


def check_the_curves_png(page) -> None:
    """The "curves (PNG)" link of the watched run shows the API's picture of its curves."""
    link = page.get_by_role("link", name="curves (PNG)")
    shown = page.locator("#run-state").inner_text().split(":")[0].removeprefix("Run ")
    href = link.get_attribute("href")  # the run's id, of which the state line shows 8 characters
    assert href.startswith(f"/v1/training-runs/{shown}") and href.endswith("/curves.png"), href
    link.click()
    image = page.get_by_role("img", name="training loss, token accuracy")
    image.wait_for()
    page.wait_for_function("() => document.querySelector('#curves-image').naturalWidth > 0")
    assert image.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [800, 450]
    assert image.get_attribute("src").startswith("blob:")


def test_the_jobs_page_fits_a_narrow_screen(page, site, scene):
    open_page(page, site)
    card = upload(page, scene)
    words = card.locator(".word")
    words.nth(min(2, words.count() - 1)).hover()  # the shapes set's third word: a shape
    assert any(overlay_pixels(card)[3::4])
    if SHOOT:
        page.mouse.move(0, 0)  # the word stays chosen; no hover styling in the picture
        page.screenshot(path=str(SCREENSHOT), full_page=True)
    page.set_viewport_size({"width": 360, "height": 740})
    assert not sticking_out(page)
    assert card.locator("img").bounding_box()["width"] <= 360
    assert words.first.is_visible() and card.get_by_label("Correct this caption").is_visible()
