"""The light client's command-line verbs (`submit`, `jobs`, `models`, `runs`) as the `captioner`
command and the `captioner-client` script run them, against a real API and inference worker
serving the stand-in model."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from captioner.cli import main, parser
from harness.http import free_port
from harness.stack import Stack
from tests.helpers import STANDIN_WORDS, png, standin_stack

SCRIPT = Path(sys.executable).parent / "captioner-client"
VERBS = [["submit"], ["jobs", "list"], ["jobs", "show"], ["jobs", "cancel"], ["jobs", "correct"],
         ["models", "list"], ["models", "promote"], ["runs", "start"], ["runs", "show"],
         ["runs", "cancel"]]  # fmt: skip


@pytest.fixture(scope="module")
def stack(random_bundle, tmp_path_factory) -> Iterator[Stack]:
    """This module's service."""
    with standin_stack(random_bundle, tmp_path_factory.mktemp("cli-verbs")) as running:
        yield running


@pytest.fixture(scope="module")
def to_api(stack) -> list[str]:
    """The options that point a verb at the stack."""
    return ["--api", stack.client.base_url, "--api-key", stack.api_key]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """`captioner ARGV…` in this process: (exit status, stdout, stderr)."""
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def images(folder: Path, count: int) -> list[str]:
    """`count` small PNG files in `folder`."""
    paths = [folder / f"img{i}.png" for i in range(count)]
    for i, path in enumerate(paths):
        path.write_bytes(png((30 + i, 20)))
    return [str(path) for path in paths]


def test_submit_wait_json_prints_a_captioned_job_per_image(capsys, to_api, tmp_path):
    status, out, _ = run(
        capsys,
        "submit",
        *images(tmp_path, 2),
        "--wait",
        "--json",
        *to_api,
        "--attention-png",
        str(tmp_path / "maps"),
    )
    jobs = [json.loads(line) for line in out.splitlines()]
    assert status == 0 and len(jobs) == 2
    assert {job["status"] for job in jobs} == {"succeeded"}
    assert all(job["result"]["tokens"] == list(STANDIN_WORDS) for job in jobs)
    maps = sorted(p.name for p in (tmp_path / "maps").iterdir())
    assert maps == ["img0.attention.png", "img1.attention.png"]


def test_jobs_list_and_show_find_a_submitted_job(capsys, to_api, tmp_path):
    (path,) = images(tmp_path, 1)
    status, out, _ = run(capsys, "submit", path, "--wait", *to_api)
    job_id, state, name = out.split()[:3]
    assert status == 0 and len(job_id) == 36 and (state, name) == ("succeeded", f"{path}:")
    status, out, _ = run(capsys, "jobs", "list", "--limit", "5", *to_api)
    assert status == 0 and job_id in {line.split()[0] for line in out.splitlines()}
    status, out, _ = run(capsys, "jobs", "list", "--json", *to_api)
    assert job_id in {json.loads(line)["id"] for line in out.splitlines()}
    status, out, _ = run(capsys, "jobs", "show", job_id, "--json", *to_api)
    assert status == 0 and json.loads(out)["id"] == job_id
    status, out, _ = run(capsys, "jobs", "show", job_id, *to_api)
    assert out.split()[:2] == [job_id, "succeeded"] and " ".join(STANDIN_WORDS) in out


def test_an_api_error_is_one_line_and_exit_status_1(capsys, to_api):
    status, out, err = run(capsys, "jobs", "show", "00000000-0000-0000-0000-000000000000", *to_api)
    assert status == 1 and not out
    assert err.startswith("captioner: error: 404 job_not_found") and err.count("\n") == 1


def test_a_failed_url_job_prints_its_code_and_reason(capsys, to_api):
    url = f"http://127.0.0.1:{free_port()}/shapes.png"  # loopback is allowed here; nothing listens
    status, out, _ = run(capsys, "submit", "--url", url, "--wait", "--timeout", "30", *to_api)
    assert status == 1 and out.split()[1:3] == ["failed", f"{url}:"]
    assert "url_unreachable: " in out and "Connection refused" in out  # the job's error.message


def test_no_key_names_the_three_ways_to_give_one(capsys, stack, monkeypatch, tmp_path):
    monkeypatch.delenv("CAPTIONER_API_KEY", raising=False)
    monkeypatch.setenv("CAPTIONER_DATA_DIR", str(tmp_path))  # no api-key file there
    status, _, err = run(capsys, "jobs", "list", "--api", stack.client.base_url)
    assert status == 1 and err.startswith("captioner: error: 401 unauthorized: no API key was sent")
    for way in ("--api-key KEY", "CAPTIONER_API_KEY", "'Authorization: Bearer KEY'"):
        assert way in err
    assert "data/service/api-key" in err and str(tmp_path / "api-key") in err


def test_models_list_shows_the_registered_version(capsys, to_api):
    status, out, _ = run(capsys, "models", "list", *to_api)
    assert status == 0 and out.split()[:2] == ["v1", "gru"]  # no star: registered, not active
    status, out, _ = run(capsys, "models", "list", "--json", *to_api)
    assert [json.loads(line)["version"] for line in out.splitlines()] == ["v1"]


def test_a_run_starts_queued_and_is_canceled_with_no_trainer(capsys, to_api):
    status, out, _ = run(
        capsys,
        "runs",
        "start",
        "--shapes",
        "20",
        "--epochs",
        "1",
        "--promotion",
        "never",
        "--json",
        *to_api,
    )
    started = json.loads(out)
    assert status == 0 and started["status"] == "queued"
    assert started["dataset"] == {"type": "shapes", "size": 20, "seed": 0}
    assert started["hyperparameters"]["epochs"] == 1
    status, out, _ = run(capsys, "runs", "cancel", started["id"], *to_api)
    assert status == 0 and out.split()[:2] == [started["id"], "canceled"]
    status, out, _ = run(capsys, "runs", "show", started["id"], *to_api)
    assert out.split()[1] == "canceled"


def test_a_transformer_run_on_the_scenes_set_is_asked_for_by_flags(capsys, to_api):
    status, out, _ = run(
        capsys,
        "runs",
        "start",
        "--scenes",
        "40",
        "--decoder",
        "transformer",
        "--promotion",
        "never",
        "--json",
        *to_api,
    )
    started = json.loads(out)
    assert status == 0 and started["dataset"] == {"type": "scenes", "size": 40, "seed": 0}
    assert started["model"]["decoder"] == "transformer"
    run(capsys, "runs", "cancel", started["id"], *to_api)


def test_sampled_submissions_carry_their_temperature_and_seeds(capsys, to_api, tmp_path):
    paths = images(tmp_path, 3)
    status, out, _ = run(
        capsys, "submit", *paths, "--temperature", "0.8", "--seed", "5", "--wait", "--json", *to_api
    )
    jobs = [json.loads(line) for line in out.splitlines()]
    assert status == 0 and [job["options"]["seed"] for job in jobs] == [5, 6, 7]
    assert {(job["options"]["temperature"], job["options"]["beam_size"]) for job in jobs} == {
        (0.8, 1)
    }


def test_a_correction_is_kept_and_a_run_learns_from_it(capsys, to_api, tmp_path):
    (path,) = images(tmp_path, 1)
    job_id = run(capsys, "submit", path, "--wait", *to_api)[1].split()[0]
    status, out, _ = run(capsys, "jobs", "correct", job_id, "a red  circle", *to_api)
    assert status == 0 and out.strip() == f"{job_id}  'a stand-in caption' → 'a red circle'"
    status, out, _ = run(
        capsys,
        "runs",
        "start",
        "--shapes",
        "20",
        "--feedback-weight",
        "7",
        "--promotion",
        "never",
        "--json",
        *to_api,
    )
    started = json.loads(out)
    assert status == 0 and started["dataset"]["feedback"]["weight"] == 7
    run(capsys, "runs", "cancel", started["id"], *to_api)


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_each_verbs_help_shows_examples_and_every_option_is_explained(capsys, verb):
    with pytest.raises(SystemExit) as done:
        main([*verb, "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    examples = out.split("examples:\n", 1)[1]
    assert examples.startswith(f"  captioner {' '.join(verb)}")
    command = leaf(parser(), verb)
    assert all(action.help for action in command._actions)


def leaf(root: argparse.ArgumentParser, names: list[str]) -> argparse.ArgumentParser:
    """The parser of a subcommand path, `["jobs", "list"]`."""
    for name in names:
        action = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction))
        root = action.choices[name]
    return root


def test_models_keeps_import_beside_list_and_promote(capsys):
    with pytest.raises(SystemExit):
        main(["models", "--help"])
    out = capsys.readouterr().out
    assert "{import,list,promote}" in out and "captioner models promote v3" in out


def test_the_light_distributions_script_has_the_same_verbs(to_api):
    done = subprocess.run(
        [str(SCRIPT), "models", "list", *to_api], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.split()[0] == "v1", done.stderr
    helped = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert all(verb in helped.stdout for verb in ("submit", "jobs", "models", "runs"))


def test_a_jobs_line_shows_its_confidence_and_warns_of_an_image_unlike_the_training_ones():
    from captioner_client import Job, ModelVersion, Ood
    from captioner_client.cli import job_line, model_line

    ood = {"score": 41.2, "threshold": 17.4, "flagged": True}
    result = {"caption": "a red circle", "tokens": ["a", "red", "circle"], "confidence": 0.934}
    raw = {"id": "j1", "status": "succeeded", "result": result | {"ood": ood}}
    flagged = Job.from_json(raw | {"warnings": ["out_of_distribution"]})
    assert flagged.caption.confidence == 0.934 and flagged.caption.ood == Ood(41.2, 17.4, True)
    assert flagged.out_of_distribution and flagged.warnings == ("out_of_distribution",)
    line = job_line(flagged)
    assert line == (
        "j1  succeeded  a red circle  (confidence 93%)  ⚠ out of distribution: unlike the "
        "training images (score 41 > threshold 17)"
    )
    older = Job.from_json({"id": "j2", "status": "succeeded", "result": {"caption": "a circle"}})
    assert (older.caption.confidence, older.caption.ood, older.warnings) == (None, None, ())
    assert job_line(older) == "j2  succeeded  a circle"
    version = {"version": "v2", "active": True, "metrics": {"bleu4": 0.5}}
    limited = ModelVersion.from_json(version | {"calibration_error": 0.031, "ood_threshold": 1.5})
    assert model_line(limited).endswith("bleu4=0.500 ece=0.031 ood>1.5")
    assert model_line(ModelVersion.from_json(version)).endswith("bleu4=0.500")
