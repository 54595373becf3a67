"""The `captioner` and `captioner-client` commands say what to do: a server that is down is named
at once with how to start one, `captioner up` prints where the page and key are and warns when
no model is active, no library chatter reaches stderr without --verbose, and every option is
spelt as the API spells it (the old spellings still work, unshown)."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from captioner.cli import main, parser
from captioner.demo import use_it_now
from captioner_client import cli as client_cli
from harness.http import free_port
from tests.helpers import png, settings_free_env

NOISE = ("absl", "oneDNN", "cuda", "No hostname", "port.cc", "cpu_feature_guard", "superuser")
RENAMED = [  # (a command line, old spelling, new spelling, the value's name, a value)
    (["caption", "b", "i.png"], "--beam", "--beam-size", "beam_size", 3),
    (["caption", "b", "i.png"], "--sample-seed", "--seed", "seed", 7),
    (["eval", "b", "--data", "d"], "--beam", "--beam-size", "beam_size", 3),
    (["train", "--data", "d", "--out", "o"], "--lr", "--learning-rate", "learning_rate", 0.5),
    (["data", "shapes", "out"], "--n", "--size", "size", 12),
    (["data", "scenes", "out"], "--n", "--size", "size", 12),
    (["demo"], "--n", "--size", "size", 12),
]


def quiet_env() -> dict[str, str]:
    """This environment without the service's settings, nor the quiet TensorFlow logging that
    tests/conftest.py sets (the command must quiet it itself)."""
    env = settings_free_env()
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return env


@pytest.mark.parametrize("main_of", [main, client_cli.main], ids=["captioner", "captioner-client"])
def test_a_server_that_is_down_is_named_within_two_seconds(capsys, tmp_path, main_of):
    image = tmp_path / "red.png"
    image.write_bytes(png())
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    status = main_of(["submit", str(image), "--api", url, "--api-key", "k"])
    err = capsys.readouterr().err
    assert status == 1 and time.monotonic() - started < 2
    assert f"error: no captioner API answers at {url} ([Errno 111] Connection refused)" in err
    assert "`captioner up`" in err and "`make up`" in err and err.count("\n") == 1


@pytest.mark.parametrize(("argv", "old", "new", "dest", "value"), RENAMED)
def test_an_old_spelling_still_works_and_is_not_shown(capsys, argv, old, new, dest, value):
    for spelling in (old, new):
        args = parser().parse_args([*argv, spelling, str(value)])
        assert getattr(args, dest) == value
    with pytest.raises(SystemExit):
        main([*argv[: 2 if argv[0] == "data" else 1], "--help"])
    shown = capsys.readouterr().out
    assert re.search(rf"{new}(?![\w-])", shown) and not re.search(rf"{old}(?![\w-])", shown)


def options(root: argparse.ArgumentParser, *names: str) -> set[str]:
    """The value names of a subcommand's options (`beam_size`)."""
    for name in names:
        action = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction))
        root = action.choices[name]
    return {action.dest for action in root._actions}


def test_both_clis_spell_the_apis_fields_as_the_api_does():
    from api.schemas.jobs import Submission
    from api.schemas.training import Hyperparameters

    decoding = {"beam_size", "max_length", "temperature", "seed"}
    hyperparameters = set(Hyperparameters.model_fields)
    assert decoding <= set(Submission.model_fields)
    root = parser()
    assert decoding <= options(root, "submit") and decoding <= options(root, "caption")
    assert {"beam_size", "max_length"} <= options(root, "eval")
    assert hyperparameters <= options(root, "runs", "start") & options(root, "train")
    assert {"epochs", "batch_size", "patience", "size"} <= options(root, "demo")


def test_caption_prints_no_library_noise_unless_verbose(random_bundle_dir, tmp_path):
    image = tmp_path / "red.png"
    image.write_bytes(png())
    command = [sys.executable, "-m", "captioner", "caption", str(random_bundle_dir), str(image)]
    env = quiet_env()
    quiet = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert quiet.returncode == 0 and quiet.stdout.startswith(f"{image}: ")
    assert quiet.stderr == ""
    no_bundle = [*command[:4], str(tmp_path / "none"), str(image), "--verbose"]  # fails fast
    verbose = subprocess.run(no_bundle, capture_output=True, text=True, env=env, timeout=120)
    assert verbose.returncode == 1 and "absl" in verbose.stderr  # what the quiet run kept back
    assert verbose.stderr.splitlines()[-1].startswith("captioner: error: ")


def test_up_on_an_empty_registry_says_where_things_are_and_warns_once(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "up.log"
    env = quiet_env() | {"CAPTIONER_DATA_DIR": "data/service"}
    with log.open("wb") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "captioner", "up", "--port", str(port)],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=out, start_new_session=True,
        )  # fmt: skip
    try:
        said = wait_for(log, up, ("training@", " ready."), "waiting for a promotion")
    finally:  # the API, workers and beat: one process group, none of whose data is kept
        os.killpg(up.pid, signal.SIGKILL)
        up.wait(timeout=60)
    assert f"the page   {url}/" in said and "API key    data/service/api-key" in said
    assert f"-F image=@IMAGE.png {url}/v1/jobs" in said
    assert said.count("WARNING: no model is active") == 1
    for way in ("captioner runs start", "/training", "models import BUNDLE --promote", "make up"):
        assert way in said
    assert not [noise for noise in NOISE if noise in said], said


def wait_for(log: Path, process: subprocess.Popen, *marks, timeout: float = 90) -> str:
    """The log once it holds every mark (a tuple: all its parts on one line)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        lines = text.splitlines()
        if all(any(all(p in line for p in mark) for line in lines) for mark in map(_parts, marks)):
            return text
        assert process.poll() is None, f"captioner up exited:\n{text[-3000:]}"
        time.sleep(0.2)
    raise TimeoutError(f"not all of {marks} in:\n{log.read_text()[-3000:]}")


def _parts(mark: str | tuple[str, ...]) -> tuple[str, ...]:
    return mark if isinstance(mark, tuple) else (mark,)


def test_the_demo_ends_by_saying_how_to_use_it_now():
    said = use_it_now(Path("data"), Path.cwd() / "data" / "service" / "api-key")
    assert "`make up`" in said and "http://127.0.0.1:8000/" in said
    assert "data/service/api-key" in said and "CAPTIONER_DATA_DIR=data/service captioner up" in said
