"""What `captioner up` and `captioner api` say at start-up: where the page and the API key are and
the first request to try, then, loudly, when no model is active and how to get one."""

from __future__ import annotations

from pathlib import Path

from captioner.keys import KEY_FILE
from core.settings import Settings
from store.db import Database
from store.registry import active_version, list_versions
from store.tables import version_name

DEMO_IMAGE = Path("held-out/images/val/000000.png")  # beside the demo's service folder
RULE = "=" * 78


def shown(path: Path) -> str:
    """A path as short as it can be said from here: relative to the current folder when under it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def startup_lines(settings: Settings, url: str) -> str:
    """The page's URL, where the API key is, and a first request to try."""
    image = settings.data_dir.parent / DEMO_IMAGE
    image_arg = shown(image) if image.is_file() else "IMAGE.png"
    lines = [
        f"captioner: serving {url} (data: {shown(settings.data_dir)}); Ctrl-C stops",
        f"  the page   {url}/  (paste the key once; /training trains models, /docs/ is the API)",
    ]
    if settings.embedded:
        key = shown(settings.data_dir / KEY_FILE)
        lines += [
            f"  API key    {key}  (an admin key; the CLIs and the client read CAPTIONER_API_KEY)",
            f"  try        export CAPTIONER_API_KEY=$(cat {key})",
        ]
    else:
        lines += [
            "  API key    make one: captioner keys create --tenant NAME --scope jobs,training",
            "  try        export CAPTIONER_API_KEY=KEY",
        ]
    lines += [
        f"             curl -H \"Authorization: Bearer $CAPTIONER_API_KEY\" -H 'Prefer: wait' "
        f"-F image=@{image_arg} {url}/v1/jobs",
        f"             captioner submit {image_arg} --wait --api {url}",
    ]
    return "\n".join(lines)


def no_model_warning(settings: Settings, url: str) -> str | None:
    """A warning block when the workers have nothing to serve (no active version and no
    MODEL_BUNDLE), saying how to get a model; None when they have one."""
    if settings.model_bundle is not None:
        return None
    db = Database(settings.database_url)
    try:
        with db.session() as session:
            if active_version(session) is not None:
                return None
            registered = [version_name(v.number) for v in list_versions(session)]
    finally:
        db.dispose()
    here = f"CAPTIONER_DATA_DIR={shown(settings.data_dir)} " if settings.embedded else ""
    lines = [
        RULE,
        "WARNING: no model is active, so every job will stay queued until one is.",
        "Get one (the inference workers load it within seconds, with no restart):",
        f"  - train one:   captioner runs start --shapes 1000 --watch --api {url}",
        f"                 (or on the page: {url}/training)",
        f"  - import one:  {here}captioner models import BUNDLE --promote",
        "                 (BUNDLE: a folder written by `captioner train`)",
        "  - the demo's:  stop this (Ctrl-C), run `make demo`, then `make up`",
        "                 (serves data/service: the demo's model and key)",
    ]
    if registered:
        lines.append(
            f"  - or promote one of the {len(registered)} registered: captioner models promote "
            f"{registered[0]} --api {url}"
        )
    return "\n".join([*lines, RULE])
