"""Every shell and Python example in README.md and docs/ runs, as a newcomer would run it after
`make demo`: in a folder that looks like the project's after the demo (`data/service/` with the
key and an active model, `data/held-out/` with new images, `examples/`), against `captioner up`
serving that folder, with the variables the README's "Use it now" sets (`API`, `AUTH`,
`CAPTIONER_API_KEY`).

A page's examples run in order, each in a fresh `bash -euo pipefail` (or Python), sharing the
page's own folder, so one example can use the files an earlier one made. `curl` fails on an
HTTP error (`--fail-with-body`), so an example that gets a 4xx fails its page. An example
preceded by `<!-- skip: why -->` is not run (the why says what it needs: a GPU, Docker, a
cluster, the internet, or minutes); `<!-- expect: TEXT -->` also requires TEXT in its output.
`pytest tests/test_examples.py -s` prints how many ran and were skipped, and why.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.http import free_port, wait_for_http
from tests.helpers import settings_free_env

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(
    r"^(?:<!-- (?P<mark>skip|expect): (?P<note>[^\n]*?) -->\n)?"
    r"```(?P<lang>sh|python)\n(?P<code>.*?)^```$",
    re.M | re.S,
)
# The port the docs name; the examples' service runs on a free one instead.
DOC_PORT = "127.0.0.1:8000"
CURL = 'curl() { command curl --silent --show-error --fail-with-body "$@"; }\n'
HELD_OUT_SEED = 12345  # as the demo's held-out images (captioner/demo.py)
TIMEOUT_S = 180


@dataclass(frozen=True)
class Example:
    page: str
    line: int
    lang: str
    code: str
    skip: str | None  # why it is not run
    expect: str | None  # text its output must hold


def examples(page: Path) -> list[Example]:
    """The page's sh and python blocks, in order, with their marks."""
    text = page.read_text(encoding="utf-8")
    found = []
    for match in BLOCK.finditer(text):
        mark, note = match["mark"], match["note"]
        found.append(
            Example(
                page=str(page.relative_to(ROOT)),
                line=text.count("\n", 0, match.start("lang")) + 1,
                lang=match["lang"],
                code=match["code"],
                skip=note if mark == "skip" else None,
                expect=note if mark == "expect" else None,
            )
        )
    return found


@dataclass(frozen=True)
class Newcomer:
    home: Path  # the project folder after `make demo`: data/, examples/
    url: str
    env: dict[str, str]


def after_the_demo(home: Path, bundle: Path, env: dict[str, str]) -> None:
    """What `make demo` leaves: an active model and a key in data/service, new images."""
    from model.shapes import write_shapes_dataset

    service = {**env, "CAPTIONER_DATA_DIR": str(home / "data" / "service")}
    command = [sys.executable, "-m", "captioner", "models", "import", str(bundle), "--promote"]
    subprocess.run(command, env=service, check=True, capture_output=True, timeout=120)
    write_shapes_dataset(home / "data" / "held-out", 4, HELD_OUT_SEED, val_fraction=1.0)
    (home / "examples").symlink_to(ROOT / "examples")


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory, random_bundle_dir) -> Newcomer:
    """`captioner up` on the demo's data folder, as `make up` starts it."""
    home = tmp_path_factory.mktemp("newcomer")
    env = settings_free_env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # venv activated
    after_the_demo(home, random_bundle_dir, env)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = home / "up.log"
    service = {
        **env,
        "CAPTIONER_DATA_DIR": str(home / "data" / "service"),
        "URL_ALLOW": "127.0.0.1",  # the docs' local webhook receiver
    }
    with log.open("wb") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "captioner", "up", "--port", str(port)],
            cwd=home, env=service, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_for_http(f"{url}/healthz", timeout=120, process=up, log=log)
        key = (home / "data" / "service" / "api-key").read_text().strip()
        wait_for_model(url, key, up, log)
        env.update(API=url, AUTH=f"Authorization: Bearer {key}", CAPTIONER_API_KEY=key)
        env["CAPTIONER_API_URL"] = url  # the client's default is the docs' port
        yield Newcomer(home, url, env)
    finally:
        stop(up)


def wait_for_model(url: str, key: str, up: subprocess.Popen, log: Path) -> None:
    """Until an inference worker serves the active version (its model loaded and warm)."""
    from captioner_client import Client

    with Client(url, api_key=key) as client:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert up.poll() is None, f"captioner up exited:\n{log.read_text()[-3000:]}"
            workers = client.request("GET", "/v1/workers")
            serving = [each["model_version"] for each in workers["workers"]]
            if workers["active"] and workers["active"] in serving:
                return
            time.sleep(0.5)
    raise TimeoutError(f"no worker served the model:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    """Stop a process and whatever it started in the background."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def run_example(example: Example, folder: Path, newcomer: Newcomer) -> str:
    """Run one example in the page's folder; its output, or AssertionError saying why not."""
    code = example.code.replace(DOC_PORT, newcomer.url.removeprefix("http://"))
    (folder / "curl.sh").write_text(CURL)
    env = {**newcomer.env, "BASH_ENV": str(folder / "curl.sh")}
    if example.lang == "sh":
        command = ["bash", "-euo", "pipefail", "-c", code]
    else:
        command = [sys.executable, "-c", code]
    log = folder / "output.txt"
    with log.open("w") as out:  # a file, not a pipe: a receiver left in the background keeps it
        process = subprocess.Popen(
            command, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        process.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{example.page}:{example.line} ran over {TIMEOUT_S} s") from None
    finally:
        stop(process)  # and whatever it left in the background
    output = log.read_text()
    where = f"{example.page}:{example.line} ({example.lang})"
    assert process.returncode == 0, f"{where} exited {process.returncode}:\n{code}\n{output}"
    if example.expect:
        assert example.expect in output, f"{where}: no {example.expect!r} in:\n{output}"
    return output


def page_folder(newcomer: Newcomer, page: str) -> Path:
    """A fresh folder for one page, holding what the project folder holds after the demo."""
    folder = newcomer.home / "pages" / page.replace("/", "_")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name in ("data", "examples"):
        (folder / name).symlink_to(newcomer.home / name)
    shutil.copy(
        sorted((newcomer.home / "data" / "held-out").rglob("*.png"))[0], folder / "shapes.png"
    )
    return folder


@pytest.mark.parametrize(
    "page",
    [page for page in PAGES if any(each.skip is None for each in examples(page))],
    ids=lambda page: str(page.relative_to(ROOT)),
)
def test_every_example_of_the_page_runs(page: Path, newcomer: Newcomer) -> None:
    """A page's examples, in order: each exits 0 (and prints what it is marked to expect)."""
    runnable = [each for each in examples(page) if each.skip is None]
    folder = page_folder(newcomer, str(page.relative_to(ROOT)))
    for example in runnable:
        run_example(example, folder, newcomer)


def test_examples_are_counted_and_skips_say_why() -> None:
    """Every skipped example names what it needs; print the counts (`-s` shows them)."""
    found = [each for page in PAGES for each in examples(page)]
    skipped = [each for each in found if each.skip is not None]
    assert all(len(each.skip) >= 10 for each in skipped), "a skip must say why"
    ran = len(found) - len(skipped)
    print(f"\nexamples: {len(found)} found, {ran} run, {len(skipped)} skipped")
    for why, count in Counter(each.skip for each in skipped).most_common():
        print(f"  skipped {count}: {why}")
    assert ran >= 2 * len(skipped), "most examples must run"


def test_an_unmarked_fence_is_not_left_out() -> None:
    """Every ``` fence that opens a shell or Python block is one BLOCK finds (no `bash`, `shell`
    or `console` spelling that would silently not run)."""
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        odd = re.findall(r"^```(bash|shell|console|py|python3|zsh)$", text, re.M)
        assert not odd, f"{page.name}: write ```sh or ```python, not {odd}"
