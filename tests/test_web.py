"""The web page in a real browser: Debian's headless Chromium driven by Playwright, against the
API on a real stack (Postgres, Redis, moto S3, an inference worker and a training worker).

The inference worker serves the untrained random bundle, not the stand-in model: the stand-in's
attention is the same uniform map for every word, and the overlay must change from word to word.
The bundle carries limits fitted as training fits them (on a small shapes set), so the worker
gives every caption a confidence and an OOD score: a shapes scene is not flagged, a photo is.
Both pages are checked at a phone's width (360 px) and a desktop's (1280 px): nothing scrolls
sideways, and axe-core (vendored: tests/data/axe.min.js) finds nothing serious or critical.
Set CAPTIONER_SCREENSHOT=1 to rewrite docs/web-page.png (the README shows it),
docs/web-page-phone.png and docs/training-page.png.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import struct
import threading
import time
import urllib.request
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from core.archives import pack_dataset
from harness.stack import running_stack
from model.shapes import render_scene, write_shapes_dataset

if TYPE_CHECKING:
    from model.limits import Limits

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")  # Debian's; CI installs it (apt-get install chromium)
SCREENSHOT = ROOT / "docs" / "web-page.png"
PHONE_SCREENSHOT = ROOT / "docs" / "web-page-phone.png"
TRAINING_SCREENSHOT = ROOT / "docs" / "training-page.png"
SHOOT = os.environ.get("CAPTIONER_SCREENSHOT") == "1"  # rewrite the screenshots (not in CI)
AXE = ROOT / "tests" / "data" / "axe.min.js"  # axe-core, vendored (see tests/data/README.md)
WIDTHS = {"phone": {"width": 360, "height": 740}, "desktop": {"width": 1280, "height": 900}}
EPOCHS, IMAGES = (4, 100) if SHOOT else (1, 20)  # the watched run's; more for the screenshot
JOB_S = 30_000  # ms for a job to be captioned (the worker is up; the model runs on CPU)
RUN_S = 60_000  # ms for a 1-epoch run on 20 shapes images
# The shapes set the served bundle's limits are fitted on: 30 train, 30 val images (15 to 25 s
# on 2 cores, mostly the encoder). Half for val: with 10 val images a fresh scene was often
# over the threshold (then the farthest of too few distances).
LIMITS_IMAGES, LIMITS_VAL = 60, 0.5
PHOTO = ROOT / "captioner" / "photos" / "astronaut.jpg"  # a photograph: unlike any shapes scene
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def stack(request, tmp_path_factory) -> Iterator:
    """A stack with an inference and a training worker. The worker serves the untrained random
    bundle with fitted limits; for the screenshots, the suite's trained bundle (minutes to train,
    but its captions read well)."""
    folder = tmp_path_factory.mktemp("web")
    if SHOOT:
        bundle = request.getfixturevalue("trained_bundle")
    else:
        random_bundle, encoder = map(request.getfixturevalue, ("random_bundle", "encoder"))
        bundle = talkative(random_bundle, encoder, folder)
    # A short training lease: the run's heartbeat (a quarter of it) brings a cancel within a
    # second, not five (no beat runs here, so no sweeper takes a lapsed lease back).
    with running_stack(
        folder,
        workers=["inference", "training"],
        model_bundle=bundle,
        batch_max_size=4,
        training_lease_s=4,
    ) as running:
        running.bundle = bundle
        yield running


@pytest.fixture(scope="module")
def site(stack) -> tuple[str, str]:
    """(base URL, admin key) of the API on the stack."""
    return stack.client.base_url, stack.api_key


def talkative(bundle, encoder, folder: Path) -> Path:
    """The untrained bundle saved with <end> made unlikely (an untrained decoder's first word
    is a near-tie, and an empty caption would leave the page no word to show) and with limits
    (confidence and OOD score) fitted on a shapes set."""
    from model.bundle import load_bundle, save_bundle
    from model.vocab import END_ID

    copy = load_bundle(save_bundle(bundle, folder / "untrained"))
    bias = copy.decoder.output_layer.bias
    bias.assign(bias.numpy() - 3.0 * (np.arange(bias.shape[0]) == END_ID))
    copy.limits = shapes_limits(copy, encoder, folder / "shapes")
    return save_bundle(copy, folder / "bundle")


def shapes_limits(bundle, encoder, folder: Path) -> Limits:
    """Limits fitted as `model.training.train` fits them, on a small shapes set drawn with seed
    0 (the tests' scene, drawn with seed 3, is none of its images). Serving needs only these, no
    metrics."""
    from model.data import load_dataset
    from model.features import extract_features
    from model.inference import Decoding
    from model.training import fit_bundle_limits

    write_shapes_dataset(folder, LIMITS_IMAGES, seed=0, val_fraction=LIMITS_VAL)
    splits = load_dataset(folder)
    train, val = splits["train"], splits["val"]
    limits, _ = fit_bundle_limits(
        Decoding(bundle),
        extract_features(encoder, train, folder / "features"),  # (30, 64, 2048)
        val,
        extract_features(encoder, val, folder / "features"),
    )
    return limits


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


@pytest.fixture
def checked_page(browser):
    """A page as `page`, whose context lets a test inject axe-core (it bypasses the pages'
    Content-Security-Policy, which the tests with `page` keep)."""
    context = browser.new_context(viewport={"width": 1000, "height": 900}, bypass_csp=True)
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


def upload(page, scene: bytes, name: str = "scene.png", mime: str = "image/png"):
    """Pick the scene (or another image) with the file input; the job's card once its caption
    is shown."""
    page.get_by_label("Choose images").set_input_files(
        files=[{"name": name, "mimeType": mime, "buffer": scene}]
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


def percent(confidence: float) -> int:
    """A confidence as the page rounds it (JavaScript's Math.round: halves up)."""
    return math.floor(confidence * 100 + 0.5)


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
    """What makes the page scroll sideways: the document wider than the window, or any element
    reaching past either edge, unless it is inside a box that scrolls sideways on purpose."""
    return page.evaluate("""() => {
        const width = window.innerWidth;
        const out = [];
        const wide = document.documentElement.scrollWidth;
        if (wide > width) out.push(`the document: ${wide} px wide in ${width}`);
        const scrolled = e => {
            for (let box = e.parentElement; box; box = box.parentElement) {
                if (["auto", "scroll"].includes(getComputedStyle(box).overflowX)) return true;
            }
            return false;
        };
        for (const e of document.querySelectorAll("body *")) {
            const r = e.getBoundingClientRect();
            if (r.width === 0 && r.height === 0) continue;  // not drawn
            if ((r.right > width + 0.5 || r.left < -0.5) && !scrolled(e)) {
                out.push(`${e.tagName}#${e.id}.${e.className}: ${r.left}..${r.right}`);
            }
        }
        return out;
    }""")


def serious_violations(page) -> list[str]:
    """What axe-core finds of impact "serious" or "critical" on the page as it is now."""
    if not page.evaluate("typeof axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE))
    found = page.evaluate("""async () => (await axe.run(document, {resultTypes: ["violations"]}))
        .violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                              nodes: v.nodes.slice(0, 3).map(n => n.target.join(" "))}))""")
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {v['nodes']}"
        for v in found
        if v["impact"] in ("serious", "critical")
    ]


def check_fits_and_is_accessible(page, width: str) -> None:
    """At `width` ("phone" or "desktop"): nothing scrolls sideways, axe finds nothing serious."""
    page.set_viewport_size(WIDTHS[width])
    assert not sticking_out(page), width
    assert not serious_violations(page), width


def collect_errors(page) -> list[str]:
    """A list that fills with console errors (a CSP violation, a failed call) and script errors."""
    messages: list[str] = []
    page.on("console", lambda m: messages.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: messages.append(str(error)))
    return messages


def watch_status(page) -> None:
    """Record every text of the aria-live status line in window.said."""
    page.evaluate("""() => {
        window.said = [];
        new MutationObserver(() => window.said.push(document.querySelector("#status").textContent))
            .observe(document.querySelector("#status"), {childList: true, characterData: true,
                                                         subtree: true});
    }""")


def pick_image(page, name: str, data: bytes, mime: str = "image/png") -> None:
    """Choose one file with the page's file input."""
    page.get_by_label("Choose images").set_input_files(
        files=[{"name": name, "mimeType": mime, "buffer": data}]
    )


def test_the_pages_come_with_a_strict_content_security_policy(site):
    for path in ("/", "/training", "/web/app.js", "/web/style.css"):
        with _opener.open(f"{site[0]}{path}", timeout=10) as response:
            policy = response.headers["Content-Security-Policy"]
            assert "default-src 'self'" in policy and "script-src 'self'" in policy, path
            assert "unsafe-inline" not in policy and "http" not in policy, path
    with _opener.open(f"{site[0]}/web/app.js", timeout=10) as response:
        assert "javascript" in response.headers["Content-Type"]  # modules need a script type


def test_an_uploaded_image_is_captioned_live(page, site, scene):
    messages = collect_errors(page)
    open_page(page, site)
    watch_status(page)
    card = upload(page, scene)
    job = api(site, f"/v1/jobs/{card.get_attribute('data-job-id')}")
    assert job["status"] == "succeeded"
    assert card.locator(".word").all_inner_texts() == job["result"]["tokens"]
    # The bundle knows its limits: a confidence, and no badge for a scene like its training ones
    assert job["result"]["ood"]["flagged"] is False and job["warnings"] == [], job["result"]
    assert card.locator(".ood-warning").is_hidden() and card.get_attribute("data-warning") == ""
    shown = f"confidence {percent(job['result']['confidence'])} %: the model's calibrated chance"
    confidence = card.locator(".confidence")
    assert confidence.is_visible() and confidence.inner_text().startswith(shown)
    said = " ".join(page.evaluate("window.said"))
    assert said.index(" queued.") < said.index(" succeeded."), said  # running: if polled then
    assert card.locator("img").evaluate("img => img.src.startsWith('blob:') && img.naturalWidth")
    assert card.locator(".steps li[data-step='done']").all_inner_texts() == [
        "sent",
        "queued",
        "running",
        "captioned",
    ]
    link = card.get_by_role("link", name="Download attention (.npy)")
    assert link.get_attribute("download") == f"{job['id']}.attention.npy"
    recent = page.locator(f"#recent li[data-job-id='{job['id']}']")
    recent.wait_for()
    assert job["result"]["caption"] in recent.inner_text()
    assert recent.locator("time").inner_text() in ("just now", *(f"{s} s ago" for s in range(60)))
    notice = page.locator("#model.warning")  # no version is promoted on this stack
    assert "No model version is active" in notice.inner_text()
    assert "captioner models import BUNDLE --promote" in notice.inner_text()
    assert notice.get_by_role("link", name="Training page").get_attribute("href") == "/training"
    notice.filter(has_text="serve the bundle they were started with").wait_for()  # admin key
    page.reload()  # the same browser session: the job reopens with its picture
    recent.get_by_role("button").click()
    again = page.locator(f".job[data-job-id='{job['id']}']")
    again.locator(".word").first.wait_for()
    assert again.locator("h3").inner_text() == "scene.png"
    assert again.locator("img").get_attribute("src").startswith("data:image/jpeg")
    assert any(overlay_pixels(again)[3::4])
    assert not messages, messages  # no CSP violation, no script error, no failed call


def test_a_recent_job_reopens_with_its_attention(page, site):
    jobs = api(site, "/v1/jobs?limit=10")["jobs"]
    job = next(j for j in jobs if j["status"] == "succeeded" and j["result"]["tokens"])
    open_page(page, site)  # a new browser session: it has no copy of the job's image
    page.locator(f"#recent li[data-job-id='{job['id']}']").get_by_role("button").click()
    card = page.locator(f".job[data-job-id='{job['id']}']")
    card.locator(".word").first.wait_for()
    assert card.locator(".word").all_inner_texts() == job["result"]["tokens"]
    assert card.locator(".state").inner_text() == "succeeded"
    assert any(overlay_pixels(card)[3::4])  # over a checkerboard of the image's shape
    assert card.locator(".figure.no-image").count() == 1
    card.get_by_role("button", name="Show the attention over the image (PNG)").click()
    picture = card.locator("img.api-picture")
    picture.wait_for()
    page.wait_for_function("() => document.querySelector('img.api-picture').naturalWidth > 0")
    assert card.locator("time").first.get_attribute("datetime") == job["timings"]["created_at"]


def test_a_queued_card_shows_its_image_and_live_progress(page, site, scene):
    """The API is answered by the test: the job stays queued."""
    job_id = "00000000-0000-4000-8000-000000000001"
    queued = {
        "id": job_id,
        "status": "queued",
        "options": {"beam_size": 3, "max_length": 20, "temperature": 0.0, "seed": None},
        "image": {"format": "png", "width": 299, "height": 299, "bytes": len(scene)},
        "result": None,
        "error": None,
        "timings": {"created_at": "2030-01-01T00:00:00Z"},
        "urls": {"self": f"/v1/jobs/{job_id}"},
    }
    answer = json.dumps(queued)
    page.route(
        "**/v1/jobs", lambda r: r.fulfill(status=202, body=answer, content_type="application/json")
    )
    page.route(
        f"**/v1/jobs/{job_id}", lambda r: r.fulfill(body=answer, content_type="application/json")
    )
    open_page(page, site)
    pick_image(page, "scene.png", scene)
    card = page.locator(".job").first
    card.locator(".state[data-status='queued']").wait_for()
    assert card.locator(".figure img").is_visible()  # the image, before any caption
    assert card.locator(".steps li[data-step='now']").inner_text() == "queued"
    assert card.get_by_role("progressbar").is_visible()
    card.locator(".elapsed").filter(has_text=re.compile(r"Queued for [1-9] s")).wait_for()
    assert "Options: max_length 20, beam_size 3" in card.locator(".options").inner_text()


def test_a_photo_is_flagged_and_its_card_warns_that_the_caption_is_probably_wrong(
    checked_page, site
):
    """The vendored photograph, captioned by the real worker: the bundle's limits flag it (its
    features are far from the shapes scenes'), the job carries the `out_of_distribution`
    warning, and the card shows the badge beside the confidence; the overlay still draws, the
    recent list marks the job, and axe finds nothing serious on the page."""
    page = checked_page
    open_page(page, site)
    card = upload(page, PHOTO.read_bytes(), "astronaut.jpg", "image/jpeg")
    job = api(site, f"/v1/jobs/{card.get_attribute('data-job-id')}")
    ood = job["result"]["ood"]
    assert ood["flagged"] is True and ood["score"] > ood["threshold"], ood
    assert job["warnings"] == ["out_of_distribution"]
    badge = card.get_by_role("note")
    assert badge.is_visible() and card.get_attribute("data-warning") == "out_of_distribution"
    assert "Unlike the training images: this caption is probably wrong" in badge.inner_text()
    confidence = card.locator(".confidence")
    shown = f"confidence {percent(job['result']['confidence'])} %"
    assert confidence.is_visible() and confidence.inner_text().startswith(shown)
    assert any(overlay_pixels(card)[3::4])  # the attention overlay still works
    recent = page.locator(f"#recent li[data-job-id='{job['id']}']")
    recent.wait_for()
    assert "unlike the training images" in recent.locator(".ood-mark").inner_text()
    assert not serious_violations(page)


def test_an_old_bundles_job_shows_no_confidence_and_no_badge(page, site, scene):
    """The API is answered by the test: the job succeeds at once, captioned by a bundle made
    before limits (result.confidence and result.ood null, no warnings), as a worker serving an
    old version answers; the stack's own bundle has limits. The card shows neither a confidence
    nor a badge, and still its words and overlay."""
    job_id = "00000000-0000-4000-8000-000000000002"
    tokens = ["a", "red", "circle"]
    old = {
        "id": job_id,
        "status": "succeeded",
        "options": {"beam_size": 3, "max_length": 20, "temperature": 0.0, "seed": None},
        "image": {"format": "png", "width": 299, "height": 299, "bytes": len(scene)},
        "result": {"caption": " ".join(tokens), "tokens": tokens, "model_version": "v1",
                   "token_log_probs": [-0.1] * 3, "attention_shape": [3, 64],
                   "confidence": None, "ood": None},
        "warnings": [],
        "error": None,
        "timings": {"created_at": "2030-01-01T00:00:00Z", "total_ms": 900.0, "queue_ms": 100.0},
        "urls": {"self": f"/v1/jobs/{job_id}", "attention": f"/v1/jobs/{job_id}/attention"},
    }  # fmt: skip
    weights = io.BytesIO()
    np.save(weights, np.random.default_rng(0).dirichlet(np.ones(64), 3).astype(np.float16))

    def answer(route) -> None:
        if route.request.method != "POST":
            route.fallback()
            return
        route.fulfill(status=202, body=json.dumps(old), content_type="application/json")

    page.route("**/v1/jobs", answer)
    page.route(
        f"**/v1/jobs/{job_id}/attention",
        lambda r: r.fulfill(body=weights.getvalue(), content_type="application/octet-stream"),
    )
    open_page(page, site)
    pick_image(page, "scene.png", scene)
    card = page.locator(f".job[data-job-id='{job_id}']")
    card.locator(".word").first.wait_for()
    assert card.locator(".word").all_inner_texts() == tokens
    assert card.locator(".ood-warning").is_hidden() and card.locator(".confidence").is_hidden()
    assert card.get_attribute("data-warning") == ""
    assert any(overlay_pixels(card)[3::4])


def test_a_refused_image_shows_its_error_on_its_card(page, site):
    open_page(page, site)
    pick_image(page, "notes.png", b"these are notes, not an image")
    card = page.locator(".job").first
    card.locator(".state[data-status='error']").wait_for()
    error = card.get_by_role("alert")
    assert "415" in error.inner_text() and "Not sent" in error.inner_text(), error.inner_text()
    assert page.locator("#error").is_hidden()  # on the card, not only at the top


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
    page.wait_for_function("document.querySelector('#max_length').value !== ''")
    fields = api(site, "/openapi.json")["components"]["schemas"]["JobForm"]["properties"]
    for label, name in (
        ("Words at most", "max_length"),
        ("Beams", "beam_size"),
        ("Temperature", "temperature"),
        ("Seed", "seed"),
    ):
        field = page.get_by_label(label)
        assert field.get_attribute("name") == field.get_attribute("id") == name, label
        assert name in page.locator(f"label[for='{name}']").inner_text()  # the API's spelling
        assert float(field.get_attribute("max")) == fields[name]["maximum"], label
        if name != "seed":
            assert float(field.input_value()) == fields[name]["default"], label
    assert page.get_by_label("Seed").input_value() == ""  # none: a random one when sampling
    assert page.get_by_label("Image URL").get_attribute("name") == "image_url"


def test_a_sampled_job_carries_its_temperature_and_seed(page, site, scene):
    open_page(page, site)
    page.wait_for_function("document.querySelector('#beam_size').value !== ''")
    beams = page.get_by_label("Beams")
    beams.fill("4")
    page.get_by_label("Temperature").fill("0.8")
    assert beams.is_disabled() and beams.input_value() == "1"  # the API samples with one beam
    assert "Beams is 1" in page.locator("#sampling-hint").inner_text()
    page.get_by_label("Seed").fill("1234")
    pick_image(page, "scene.png", scene)  # as form fields
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
    pick_image(page, "scene.png", scene)
    alert = page.locator(".job").first.get_by_role("alert")
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


def test_the_api_docs_link_back_to_the_page(page, site):
    page.goto(f"{site[0]}/docs/")
    for name, href in (("the jobs page", "/"), ("the training page", "/training")):
        assert page.get_by_role("link", name=name).get_attribute("href") == href


def drawn(colour: str) -> str:
    """A canvas check: some pixel is exactly `colour` ("#rrggbb"), as the chart's points are."""
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"""c => {{
        const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        for (let i = 0; i < d.length; i += 4) {{
            if (d[i] === {r} && d[i + 1] === {g} && d[i + 2] === {b} && d[i + 3] === 255) {{
                return true;
            }}
        }}
        return false;
    }}"""


def test_the_training_page_starts_a_run_and_charts_its_progress(checked_page, site):
    page = checked_page
    open_page(page, site, "/training")
    page.wait_for_function("document.querySelector('#learning_rate').value !== ''")
    page.get_by_label("Epochs").fill(str(EPOCHS))
    page.get_by_label("Batch size").fill("8")
    check_a_scenes_transformer_request(page)
    page.get_by_label("Generated shapes set").check()
    page.get_by_label("shapes set: images").fill(str(IMAGES))
    check_the_learning_rate_follows_the_decoder(page)  # ends on the GRU
    page.evaluate("""() => {
        window.states = [];
        const line = document.querySelector("#run-state");
        new MutationObserver(() => window.states.push(line.textContent))
            .observe(line, {childList: true, characterData: true, subtree: true});
    }""")
    with page.expect_request(lambda r: r.method == "POST" and "/v1/training-runs" in r.url) as sent:
        page.get_by_role("button", name="Start training run").click()
    asked = sent.value.post_data_json
    assert asked["dataset"] == {"type": "shapes", "size": IMAGES}, asked
    assert asked["model"] == {"decoder": "gru"}, asked
    state = page.locator("#run-state")
    page.locator("#run-state[data-status='succeeded']").wait_for(timeout=RUN_S * EPOCHS * 3)
    states = page.evaluate("window.states")
    assert any(": running" in s for s in states), states  # seen while it ran
    assert " left" not in state.inner_text() and "took" in state.inner_text()  # it ended
    assert page.get_by_role("button", name="Cancel run").is_hidden()
    chart = page.locator("#chart")
    assert int(chart.get_attribute("data-points")) >= 3  # the epoch's loss, accuracy and score
    assert chart.evaluate(drawn("#2e8b57"))  # the validation score
    assert chart.evaluate(drawn("#7b3fa0"))  # the token accuracy
    progress = page.locator("section[aria-labelledby='run-heading']")
    assert progress.locator("canvas, img").count() == 1  # one chart, not a picture of it too
    assert page.locator("#chart-metric").inner_text() == "bleu4"
    assert "made v1" in state.inner_text()
    assert page.locator("#history tbody tr").count() == EPOCHS
    assert "token accuracy" in page.locator("#history thead").inner_text()
    accuracy = page.locator("#history tbody td.accuracy").first.inner_text()  # "—": old workers
    assert accuracy == "—" or 0 <= float(accuracy) <= 1, accuracy
    assert "accuracy" not in page.locator("#history tbody td").last.inner_text()  # validation only
    check_the_curves_png(page)
    version = page.locator("#models tr[data-version='v1']")
    version.wait_for()
    assert "decoder" in page.locator("#models thead").inner_text()
    assert version.locator("td.decoder").inner_text() == "GRU"
    for width in ("desktop", "phone"):
        check_fits_and_is_accessible(page, width)
        box = page.get_by_role("button", name="Promote v1").bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= WIDTHS[width]["width"], box


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
    assert page.get_by_label("Learning rate").input_value() == "0.0005"  # the Transformer's
    page.get_by_role("button", name="Start training run").click()
    page.get_by_role("alert").filter(has_text="answered by the test").wait_for()
    page.unroute("**/v1/training-runs", answer)
    asked = {"dataset": {"type": "scenes", "size": 30}, "model": {"decoder": "transformer"}}
    hyperparameters = {"epochs": EPOCHS, "batch_size": 8, "learning_rate": 0.0005}  # its default
    assert sent == [{**asked, "hyperparameters": hyperparameters, "promotion": "never"}]


def check_the_learning_rate_follows_the_decoder(page) -> None:
    """The learning rate shows the chosen decoder's documented default, until one is typed."""
    rate, decoder = page.get_by_label("Learning rate"), page.get_by_label("Decoder")
    for chosen, shown in (("gru", "0.001"), ("transformer", "0.0005"), ("gru", "0.001")):
        decoder.select_option(chosen)
        assert rate.input_value() == shown, chosen
    rate.fill("0.002")
    decoder.select_option("transformer")
    assert rate.input_value() == "0.002"  # typed: kept
    rate.fill("")
    decoder.select_option("gru")
    assert rate.input_value() == "0.001"  # emptied: it follows the decoder again


def check_the_curves_png(page) -> None:
    """The watched run's curves as the API draws them come as a download, not a second chart."""
    with page.expect_download() as download:
        page.get_by_role("button", name="Download the curves (PNG)").click()
    shown = page.locator("#run-state").inner_text().split(":")[0].removeprefix("Run ")
    assert download.value.suggested_filename.startswith(shown), download.value.suggested_filename
    png = Path(download.value.path()).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (800, 450)  # IHDR: width, height


def test_a_running_run_can_be_canceled(page, site):
    open_page(page, site, "/training")
    page.get_by_label("Epochs").fill("1000")
    page.get_by_label("Batch size").fill("1")
    page.get_by_label("shapes set: images").fill("20")
    page.get_by_role("button", name="Start training run").click()
    page.locator("#run-state[data-status='running']").wait_for(timeout=RUN_S)
    with page.expect_response(lambda r: r.url.endswith("/cancel")) as answer:
        page.get_by_role("button", name="Cancel run").click()
    assert answer.value.status in (200, 202)  # 202: it stops before its next step
    page.locator("#run-state[data-status='canceled']").wait_for(timeout=RUN_S)
    assert page.get_by_role("button", name="Cancel run").is_hidden()
    assert " left" not in page.locator("#run-state").inner_text()


def test_a_dataset_is_uploaded_and_chosen_for_the_next_run(page, site, tmp_path):
    messages = collect_errors(page)
    write_shapes_dataset(tmp_path / "tiny", 10, seed=2, val_fraction=0.3)
    archive = pack_dataset(tmp_path / "tiny", tmp_path / "tiny.zip").read_bytes()
    open_page(page, site, "/training")
    chooser = page.get_by_label("Archive")
    chooser.set_input_files(
        files=[{"name": "bad.zip", "mimeType": "application/zip", "buffer": b"not a zip"}]
    )
    page.get_by_role("button", name="Upload dataset").click()
    refusal = page.locator("#upload-result .error")
    refusal.wait_for()
    assert "400" in refusal.inner_text(), refusal.inner_text()
    messages.clear()  # the refused upload's 400, which the console logs
    chooser.set_input_files(
        files=[{"name": "tiny.zip", "mimeType": "application/zip", "buffer": archive}]
    )
    page.get_by_label("Name").fill("tiny shapes")
    page.get_by_role("button", name="Upload dataset").click()
    page.locator("#upload-result .uploaded").wait_for()
    assert "10 images" in page.locator("#upload-result").inner_text()
    assert page.locator("#use-upload").is_checked()
    assert page.locator("#dataset option:checked").inner_text() == "tiny shapes (10 images)"
    assert not messages, messages


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("path", ["/", "/training"])
def test_the_pages_fit_the_screen_and_pass_axe(checked_page, site, path, width):
    page = checked_page
    page.set_viewport_size(WIDTHS[width])
    open_page(page, site, path)
    page.locator("#model.warning, #model[data-active]").wait_for()
    page.locator("#recent li, #models tbody tr").first.wait_for()  # the lists are filled
    assert not sticking_out(page)
    assert not serious_violations(page)


def test_the_jobs_page_fits_a_narrow_screen(checked_page, stack, site, scene):
    page = checked_page
    if SHOOT:
        promote_the_trained_bundle(stack, site)
    open_page(page, site)
    card = upload(page, scene)
    words = card.locator(".word")
    words.nth(min(2, words.count() - 1)).hover()  # the shapes set's third word: a shape
    assert any(overlay_pixels(card)[3::4])
    if SHOOT:
        page.mouse.move(0, 0)  # the word stays chosen; no hover styling in the picture
        page.screenshot(path=str(SCREENSHOT), full_page=True)
    check_fits_and_is_accessible(page, "desktop")  # with a job shown
    check_fits_and_is_accessible(page, "phone")
    assert card.locator("img").bounding_box()["width"] <= 360
    assert words.first.is_visible() and card.get_by_label("Correct this caption").is_visible()
    if SHOOT:
        page.screenshot(path=str(PHONE_SCREENSHOT), full_page=True)
        shoot_the_training_page(page, site)


def promote_the_trained_bundle(stack, site) -> None:
    """Register the served bundle as the active version, as after the quickstart, and wait until
    the inference worker serves it (the screenshots then show no warning)."""
    from worker.bundles import import_bundle

    version = import_bundle(stack.db, stack.blobs, stack.bundle, promote=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if any(w["model_version"] == version for w in api(site, "/v1/workers")["workers"]):
            return
        time.sleep(0.5)
    raise AssertionError(f"no worker serves {version} after 60 s")


def shoot_the_training_page(page, site) -> None:
    """docs/training-page.png: the watched run of the training test, on a desktop's width."""
    page.set_viewport_size(WIDTHS["desktop"])
    page.goto(f"{site[0]}/training")
    page.locator("#runs li:has(.badge[data-status='succeeded']) button").first.click()
    page.locator("#run-state[data-status='succeeded']").wait_for()
    page.locator("#model[data-active]").wait_for()
    page.screenshot(path=str(TRAINING_SCREENSHOT), full_page=True)
