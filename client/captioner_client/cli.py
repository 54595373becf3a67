"""Command-line verbs over the API: `submit`, `jobs`, `models`, `runs`.

`add_commands(subparsers)` registers them on any argparse command (the `captioner` command does);
`main()` is the light distribution's own `captioner-client` command.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from captioner_client._client import MAX_BATCH, Client
from captioner_client._config import default_api_url
from captioner_client._errors import CaptionerError
from captioner_client._types import Batch, Job, ModelVersion, TrainingRun

Raw = argparse.RawDescriptionHelpFormatter
EXAMPLES = {  # after the verb's own name (its --help prints them after %(prog)s)
    "submit": ["cat.jpg dog.png --wait", "photos/*.jpg --wait --json > captions.jsonl",
               "--url https://example.com/cat.jpg --wait --attention-png heatmaps/"],
    "jobs list": ["", "--status failed --limit 50 --json"],
    "jobs show": ["3f2b9c1e-…", "3f2b9c1e-… --json"],
    "jobs cancel": ["3f2b9c1e-…"],
    "jobs correct": ['3f2b9c1e-… "a red circle above a blue square"'],
    "models list": ["", "--json"],
    "models promote": ["v3        (an admin key; an older version is a rollback)"],
    "runs start": ["--shapes 1000 --epochs 10 --watch",
                   "--shapes 1000 --base-version v3 --feedback-weight 20 --promotion always",
                   "--dataset 9c1e…-… --epochs 20 --promotion never"],
    "runs show": ["5d7a…-…", "5d7a…-… --json"],
    "runs cancel": ["5d7a…-…"],
}  # fmt: skip
HYPERPARAMETERS = [("epochs", int, "epochs at most"), ("batch-size", int, "images a step"),
                   ("learning-rate", float, "Adam's learning rate"), ("vocab-size", int,
                   "words kept"), ("seed", int, "random seed"), ("patience", int,
                   "early stopping: epochs without a better validation score")]  # fmt: skip


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `submit`, `jobs`, `models` and `runs` on `subparsers`; a `models` command that
    is there already gains `list` and `promote`."""
    _add_submit(subparsers)
    _add_jobs(_group(subparsers, "jobs", "jobs: list, show, cancel, correct"))
    _add_models(_group(subparsers, "models", "models: list, promote"))
    _add_runs(_group(subparsers, "runs", "training runs: start, show, cancel"))


def examples(key: str) -> str:
    """The --help epilog of a verb (`jobs list`), or of a group of verbs (`jobs`)."""
    lines = [f"  %(prog)s {line}".rstrip() for line in EXAMPLES.get(key, ())]
    if " " not in key:
        lines += [
            f"  %(prog)s {name.split()[1]} {line}".rstrip()
            for name, texts in EXAMPLES.items()
            if name.startswith(key + " ")
            for line in texts
        ]
    return "examples:\n" + "\n".join(lines)


def _group(subparsers, name: str, text: str) -> argparse._SubParsersAction:
    """The verbs of `name` (made, or found when the host command made it first)."""
    existing = subparsers.choices.get(name)
    if existing is None:
        parser = subparsers.add_parser(name, help=text, epilog=examples(name), formatter_class=Raw)
        return parser.add_subparsers(required=True, metavar="VERB")
    existing.epilog = examples(name)
    existing.formatter_class = Raw
    # argparse offers no public way back to a parser's subcommands.
    return next(a for a in existing._actions if isinstance(a, argparse._SubParsersAction))


def _verb(verbs, key: str, text: str, run: Callable) -> argparse.ArgumentParser:
    """The verb `key` ("jobs list": `list` on `verbs`) with --api and --api-key, its examples
    in --help."""
    verb = verbs.add_parser(
        key.split()[-1], help=text, description=text, epilog=examples(key), formatter_class=Raw
    )
    verb.add_argument(
        "--api",
        default=default_api_url(),
        metavar="URL",
        help="the API's base URL (default: CAPTIONER_API_URL or %(default)s)",
    )
    verb.add_argument(
        "--api-key",
        metavar="KEY",
        help="the API key (default: CAPTIONER_API_KEY, "
        "else the api-key file in CAPTIONER_DATA_DIR or ./captioner-data)",
    )
    verb.set_defaults(run=run)
    return verb


def _json_option(verb: argparse.ArgumentParser) -> None:
    verb.add_argument("--json", action="store_true", help="print the API's JSON, one object a line")


def _add_submit(subparsers) -> None:
    verb = _verb(subparsers, "submit", "caption images through the API", run_submit)
    verb.add_argument("images", type=Path, nargs="*", metavar="IMAGE", help="image files to send")
    verb.add_argument(
        "--url",
        action="append",
        default=[],
        metavar="URL",
        help="an http(s) image URL the service fetches (repeatable)",
    )
    verb.add_argument("--wait", action="store_true", help="wait for the captions")
    verb.add_argument(
        "--timeout",
        type=float,
        default=600,
        metavar="S",
        help="seconds to wait in all (default: %(default)s)",
    )
    verb.add_argument("--beam-size", type=int, metavar="N", help="beams searched (1: greedy)")
    verb.add_argument("--max-length", type=int, metavar="N", help="most words a caption")
    verb.add_argument(
        "--temperature",
        type=float,
        metavar="T",
        help="above 0: sample the words (0–2; the beam is then 1)",
    )
    verb.add_argument(
        "--seed",
        type=int,
        metavar="N",
        help="the sampling seed (the i-th image takes N + i): the same seed gives the same caption",
    )
    verb.add_argument(
        "--attention-png",
        type=Path,
        metavar="DIR",
        help="write each caption's heat maps to DIR/NAME.attention.png (waits)",
    )
    _json_option(verb)


def _add_jobs(verbs) -> None:
    listing = _verb(verbs, "jobs list", "the newest jobs first", run_jobs_list)
    listing.add_argument("--limit", type=int, default=20, metavar="N", help="jobs shown (≤ 100)")
    listing.add_argument(
        "--status",
        help="only jobs with this status (queued, running, succeeded, failed, canceled, aborted)",
    )
    _json_option(listing)
    show = _verb(verbs, "jobs show", "one job: status, caption or error", run_jobs_show)
    show.add_argument("id", metavar="ID", help="the job's id")
    _json_option(show)
    cancel = _verb(verbs, "jobs cancel", "cancel a queued job (it never runs)", run_jobs_cancel)
    cancel.add_argument("id", metavar="ID", help="the job's id")
    correct = _verb(
        verbs,
        "jobs correct",
        "say what a succeeded job's caption should have "
        "been (runs started with --feedback-weight learn from it)",
        run_jobs_correct,
    )
    correct.add_argument("id", metavar="ID", help="the job's id")
    correct.add_argument("caption", metavar="CAPTION", help="the right caption")


def _add_models(verbs) -> None:
    listing = _verb(
        verbs, "models list", "the registered versions, newest first (* serves)", run_models_list
    )
    _json_option(listing)
    promote = _verb(
        verbs, "models promote", "make a version the one served (an admin key)", run_models_promote
    )
    promote.add_argument("version", metavar="VERSION", help="the version, as v3")


def _add_runs(verbs) -> None:
    start = _verb(verbs, "runs start", "start a training run", run_runs_start)
    data = start.add_mutually_exclusive_group(required=True)
    data.add_argument("--shapes", type=int, metavar="N", help="train on N synthetic shapes images")
    data.add_argument(
        "--scenes",
        type=int,
        metavar="N",
        help="train on N synthetic scenes images (the harder set)",
    )
    data.add_argument("--dataset", metavar="ID", help="train on an uploaded dataset")
    start.add_argument(
        "--decoder",
        choices=["gru", "transformer"],
        help="the decoder architecture (default: the API's, gru)",
    )
    for name, kind, text in HYPERPARAMETERS:
        start.add_argument(f"--{name}", type=kind, metavar="N", help=f"{text} (default: the API's)")
    start.add_argument("--base-version", metavar="VERSION", help="a version to start from (v3)")
    start.add_argument(
        "--promotion",
        choices=["never", "always", "if_better"],
        help="whether the version trained serves (default: the API's)",
    )
    start.add_argument(
        "--feedback-weight",
        type=int,
        metavar="N",
        help="also learn from your caption corrections (jobs correct), each as N captions",
    )
    start.add_argument("--watch", action="store_true", help="follow the run until it ends")
    _json_option(start)
    show = _verb(verbs, "runs show", "one run: status, progress, history", run_runs_show)
    show.add_argument("id", metavar="ID", help="the run's id")
    _json_option(show)
    cancel = _verb(verbs, "runs cancel", "cancel a run (at once if queued)", run_runs_cancel)
    cancel.add_argument("id", metavar="ID", help="the run's id")


def client(args: argparse.Namespace) -> Client:
    """The client the verb's options name."""
    return Client(args.api, args.api_key)


def main(argv: list[str] | None = None) -> int:
    """The `captioner-client` command; returns the exit status."""
    root = argparse.ArgumentParser(
        prog="captioner-client", description=__doc__, formatter_class=Raw
    )
    add_commands(root.add_subparsers(required=True, metavar="COMMAND"))
    args = root.parse_args(argv)
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:
        return 130
    except (CaptionerError, httpx.HTTPError, OSError, ValueError) as exc:  # TimeoutError too
        print(f"captioner-client: error: {exc}", file=sys.stderr)
        return 1


def run_submit(args: argparse.Namespace) -> int:
    """`submit IMAGE… [--url URL…] [--wait]`: a line (or JSON object) per job; 1 if one failed."""
    if not args.images and not args.url:
        raise ValueError("give image files or --url")
    asked = {
        "beam_size": args.beam_size,
        "max_length": args.max_length,
        "temperature": args.temperature,
    }
    options = {k: v for k, v in asked.items() if v is not None}
    if args.seed is not None:
        options["seed"] = args.seed
    names = [str(path) for path in args.images] + args.url
    waits = args.wait or args.attention_png is not None
    with client(args) as api:
        submitted = submit_all(api, args.images, args.url, options, args.timeout if waits else 0)
        jobs = wait_all(api, submitted, args.timeout) if waits else jobs_of(submitted)
        for name, job in zip(names, jobs, strict=True):
            picture = save_png(api, job, name, args.attention_png)
            print(json.dumps(job.raw) if args.json else job_line(job, name, picture))
    return 1 if any(job.done and job.status != "succeeded" for job in jobs) else 0


def submit_all(
    api: Client, paths: list[Path], urls: list[str], options: dict, hold: float
) -> list[Job | Batch]:
    """One image as a job the API holds up to `hold` seconds (≤ 60); more as batches of up to
    100, images first, then URLs (a request each, and one request a poll while waiting). With
    a `seed`, the i-th image of all takes seed + i, across batches too."""
    if len(paths) + len(urls) == 1:
        image, url = (paths or [None])[0], (urls or [None])[0]
        return [api.submit(image, url=url, wait=hold, **options)]

    def from_(i: int) -> dict:  # the options of the batch whose first image is the i-th
        return options | ({"seed": options["seed"] + i} if "seed" in options else {})

    batches = [
        api.submit_batch(paths[i : i + MAX_BATCH], **from_(i))
        for i in range(0, len(paths), MAX_BATCH)
    ]
    return batches + [
        api.submit_batch(urls=urls[i : i + MAX_BATCH], **from_(len(paths) + i))
        for i in range(0, len(urls), MAX_BATCH)
    ]


def wait_all(api: Client, submitted: list[Job | Batch], timeout: float) -> list[Job]:
    """Every job once ended, in order, within `timeout` seconds in all (a bar on a terminal)."""
    deadline, jobs = time.monotonic() + timeout, []
    for item in submitted:
        left = max(deadline - time.monotonic(), 0.0)
        if isinstance(item, Job):
            jobs.append(item if item.done else api.wait(item, left))
        else:
            jobs += api.wait_all(item, left, progress=sys.stderr.isatty())
    return jobs


def jobs_of(submitted: list[Job | Batch]) -> list[Job]:
    """The jobs as submitted, in order."""
    return [job for item in submitted for job in (item.jobs if isinstance(item, Batch) else [item])]


def save_png(api: Client, job: Job, name: str, folder: Path | None) -> Path | None:
    """Write a succeeded job's heat maps to folder/STEM.attention.png, if a folder is given."""
    if folder is None or job.status != "succeeded":
        return None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{Path(name.split('?')[0]).stem or job.id}.attention.png"
    path.write_bytes(api.attention_png(job))
    return path


def job_line(job: Job, name: str = "", picture: Path | None = None) -> str:
    """One line for a job: its id, status, and caption (with its confidence, and a warning when
    the image is unlike the training images) or error (its code and why)."""
    outcome = job.caption.caption if job.caption else failure(job.error_code, job.error_message)
    line = f"{job.id}  {job.status:<9}  {name + ': ' if name else ''}{outcome}"
    if job.caption and job.caption.confidence is not None:
        line += f"  (confidence {job.caption.confidence:.0%})"
    if job.out_of_distribution:
        ood = job.caption.ood if job.caption else None
        line += "  ⚠ out of distribution: unlike the training images"  # as `captioner caption`
        line += f" (score {ood.score:.0f} > threshold {ood.threshold:.0f})" if ood else ""
    return line + (f"  [{picture}]" if picture else "")


def failure(code: str | None, message: str | None) -> str:
    """An error as `code: message` (either may be missing)."""
    return ": ".join(part for part in (code, message) if part)


def run_jobs_list(args: argparse.Namespace) -> None:
    """`jobs list`: the newest jobs first."""
    with client(args) as api:
        page = api.jobs(args.limit, status=args.status)
    for job in page.jobs:
        print(json.dumps(job.raw) if args.json else job_line(job))


def run_jobs_show(args: argparse.Namespace) -> None:
    """`jobs show ID`."""
    with client(args) as api:
        job = api.job(args.id)
    print(json.dumps(job.raw, indent=1) if args.json else job_line(job))


def run_jobs_cancel(args: argparse.Namespace) -> None:
    """`jobs cancel ID`."""
    with client(args) as api:
        print(job_line(api.cancel(args.id)))


def run_jobs_correct(args: argparse.Namespace) -> None:
    """`jobs correct ID CAPTION`."""
    with client(args) as api:
        correction = api.correct(args.id, args.caption)
    print(f"{correction.job_id}  {correction.model_caption!r} → {correction.caption!r}")


def model_line(model: ModelVersion) -> str:
    """One line for a version: * if it serves, its parent, its validation BLEU-4, and its
    calibration error and OOD threshold where it has them."""
    bleu = model.metrics.get("bleu4")
    score = f"bleu4={bleu:.3f}" if isinstance(bleu, float) else ""
    if model.calibration_error is not None:
        score += f" ece={model.calibration_error:.3f}"
    if model.ood_threshold is not None:
        score += f" ood>{model.ood_threshold:.3g}"
    return (
        f"{'*' if model.active else ' '} {model.version:<6} {model.decoder:<11} "
        f"{model.created_at:<26} from {model.parent or '-':<6} {score}"
    )


def run_models_list(args: argparse.Namespace) -> None:
    """`models list`: newest first, the active one starred."""
    with client(args) as api:
        models = api.models()
    for model in models:
        print(json.dumps(model.raw) if args.json else model_line(model))
    if not models and not args.json:
        print("no model versions yet: train one (runs start) or import a bundle", file=sys.stderr)


def run_models_promote(args: argparse.Namespace) -> None:
    """`models promote VERSION`."""
    with client(args) as api:
        print(model_line(api.promote(args.version)))


def run_line(run: TrainingRun) -> str:
    """One line for a training run: id, status, progress or outcome."""
    progress = run.progress or {}
    where = (
        f"epoch {progress.get('epoch')}/{progress.get('epochs')}"
        if progress.get("phase") == "training"
        else progress.get("phase", "")
    )
    error = run.raw.get("error") or {}
    outcome = run.model_version or failure(run.error_code, error.get("message")) or where or ""
    return f"{run.id}  {run.status:<9}  {outcome}"


def run_runs_start(args: argparse.Namespace) -> int:
    """`runs start --shapes N | --dataset ID`: the run's line; with --watch, each change."""
    names = {name: name.replace("-", "_") for name, _, _ in HYPERPARAMETERS}
    hyperparameters = {
        key: getattr(args, key) for key in names.values() if getattr(args, key) is not None
    }
    fields = {
        k: v for k, v in (("base_version", args.base_version), ("promotion", args.promotion)) if v
    }
    if args.feedback_weight:
        fields["feedback"] = {"weight": args.feedback_weight}
    if args.decoder:
        fields["model"] = {"decoder": args.decoder}
    dataset = {"type": "scenes", "size": args.scenes} if args.scenes else args.dataset
    show = (lambda r: print(json.dumps(r.raw))) if args.json else (lambda r: print(run_line(r)))
    with client(args) as api:
        run = api.start_run(dataset, shapes=args.shapes, hyperparameters=hyperparameters, **fields)
        run = api.watch_run(run, show) if args.watch else run
    if not args.watch:
        show(run)
    return 0 if run.status in ("queued", "running", "succeeded") else 1


def run_runs_show(args: argparse.Namespace) -> None:
    """`runs show ID`."""
    with client(args) as api:
        run = api.run(args.id)
    print(json.dumps(run.raw, indent=1) if args.json else run_line(run))


def run_runs_cancel(args: argparse.Namespace) -> None:
    """`runs cancel ID`."""
    with client(args) as api:
        print(run_line(api.cancel_run(args.id)))
