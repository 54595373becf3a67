"""The `captioner` command: make data, train, caption, evaluate, and run the service."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from captioner.limits import limit_notes
from captioner.noise import import_tensorflow, quiet
from captioner.options import renamed, verbose_everywhere
from captioner.progress import TrainingBars, progress_bar
from core.decoders import DECODERS, described_defaults, with_defaults
from core.errors import ImageError
from core.images import open_image


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run one subcommand; returns the exit status."""
    args = parser().parse_args(argv)
    verbose = getattr(args, "verbose", False)  # the light client's verbs have none
    quiet(verbose)  # before TensorFlow is first imported
    try:
        if getattr(args, "tensorflow", False):
            import_tensorflow(verbose)
        return args.run(args) or 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - one clear line instead of a traceback
        if os.environ.get("CAPTIONER_DEBUG"):
            raise
        print(f"captioner: error: {exc}", file=sys.stderr)
        return 1


def parser() -> argparse.ArgumentParser:
    """The argument parser with all subcommands."""
    root = argparse.ArgumentParser(prog="captioner", description=__doc__)
    commands = root.add_subparsers(required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="make datasets").add_subparsers(required=True)
    for kind, text in (
        ("shapes", "the synthetic shapes set"),
        ("scenes", "the harder synthetic scenes set"),
    ):
        made = data.add_parser(kind, help=f"write {text} (COCO format)")
        made.add_argument("out", type=Path)
        made.add_argument("--size", type=int, default=1500, help="number of images")
        renamed(made, "--n", "--size")
        made.add_argument("--seed", type=int, default=0)
        made.add_argument("--val-fraction", type=float, default=0.2)
        made.set_defaults(run=run_data, kind=kind)

    train = commands.add_parser("train", help="train a model bundle on a COCO-format dataset")
    train.add_argument("--data", type=Path, required=True, help="dataset folder")
    train.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    _dataset_options(train)
    _encoder_option(train, "seed:0")
    train.add_argument("--epochs", type=int, default=20)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument(
        "--learning-rate",
        type=float,
        help=f"Adam learning rate (default: the decoder's: {described_defaults('learning_rate')})",
    )
    renamed(train, "--lr", "--learning-rate")
    train.add_argument("--vocab-size", type=int, default=5000, help="words kept")
    train.add_argument("--max-words", type=int, default=30, help="training captions cut to this")
    train.add_argument("--attention-reg", type=float, default=0.0, help="doubly stochastic λ")
    train.add_argument("--clip-norm", type=float, default=5.0, help="gradient norm cap")
    train.add_argument("--patience", type=int, default=3, help="early stopping, in epochs")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--work-dir", type=Path, help="checkpoints (default: OUT.work)")
    train.add_argument(
        "--no-output-bias",
        dest="output_bias",
        action="store_false",
        help="start the output bias at 0, not at the words' log frequencies",
    )
    _architecture_options(train)
    train.set_defaults(run=run_train, tensorflow=True)

    caption = commands.add_parser("caption", help="caption image files with a bundle")
    caption.add_argument("bundle", type=Path)
    caption.add_argument("images", type=Path, nargs="+")
    _decoding_options(caption)
    caption.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="0: the most likely words; above 0, sample (with --beam-size 1)",
    )
    caption.add_argument(
        "--seed",
        type=int,
        default=0,
        help="the sampling noise's seed: one seed, one caption",
    )
    renamed(caption, "--sample-seed", "--seed")
    _encoder_option(caption, "the bundle's")
    caption.add_argument("--attention-png", type=Path, metavar="DIR", help="write heatmap grids")
    caption.add_argument("--json", action="store_true", help="print one JSON object per image")
    caption.set_defaults(run=run_caption, tensorflow=True)

    evaluate = commands.add_parser("eval", help="score a bundle on a dataset split")
    evaluate.add_argument("bundle", type=Path)
    evaluate.add_argument("--data", type=Path, required=True)
    evaluate.add_argument("--split", default="val", choices=["train", "val", "test"])
    evaluate.add_argument("--limit", type=int, help="score only the first N images")
    _dataset_options(evaluate)
    _decoding_options(evaluate)
    _encoder_option(evaluate, "the bundle's")
    evaluate.add_argument("--json", action="store_true", help="print the scores as JSON")
    evaluate.set_defaults(run=run_eval, tensorflow=True)

    from captioner import demo, keys, service

    service.add_commands(commands)
    keys.add_commands(commands)
    demo.add_command(commands)
    verbose_everywhere(commands)  # not on the client's verbs: they load no library that chatters
    add_client_verbs(commands)
    return root


def add_client_verbs(commands) -> None:
    """The light client's verbs (submit, jobs, models list|promote, runs), if it is installed
    (`pip install -e ./client`); `models` is shared with `models import`."""
    try:
        from captioner_client import cli as client_cli
    except ModuleNotFoundError as exc:
        if exc.name not in ("captioner_client", "httpx"):
            raise
        return
    client_cli.add_commands(commands)


def _dataset_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--split-file", type=Path, help="Karpathy split file (dataset_coco.json)")
    command.add_argument("--cache", type=Path, help="feature cache folder")


def _architecture_options(command: argparse.ArgumentParser) -> None:
    """The decoder's architecture and sizes (model/config.py ModelConfig's defaults)."""
    from model.config import ModelConfig

    default = ModelConfig()
    group = command.add_argument_group("decoder architecture")
    group.add_argument("--decoder", choices=DECODERS, default=default.decoder)
    group.add_argument(
        "--embedding-dim",
        type=int,
        default=default.embedding_dim,
        help="word and image width (the Transformer's width)",
    )
    group.add_argument("--units", type=int, default=default.units, help="GRU state size")
    group.add_argument(
        "--attention-units", type=int, default=default.attention_units, help="GRU's attention size"
    )
    group.add_argument("--layers", type=int, default=default.layers, help="Transformer blocks")
    group.add_argument("--heads", type=int, default=default.heads, help="attention heads")
    group.add_argument(
        "--ff-units", type=int, default=default.ff_units, help="Transformer feed-forward size"
    )
    group.add_argument(
        "--dropout", type=float, default=default.dropout, help="Transformer dropout in training"
    )


def model_config_of(args: argparse.Namespace):
    """The ModelConfig that `_architecture_options` describe (vocab_size comes from the data)."""
    from model.config import ModelConfig

    return ModelConfig(
        decoder=args.decoder,
        embedding_dim=args.embedding_dim,
        units=args.units,
        attention_units=args.attention_units,
        layers=args.layers,
        heads=args.heads,
        ff_units=args.ff_units,
        dropout=args.dropout,
    )


def train_settings_of(args: argparse.Namespace) -> dict:
    """TrainConfig's fields as `captioner train`'s flags set them; a flag left out whose default
    depends on the decoder (--learning-rate) takes --decoder's (core/decoders.py)."""
    chosen = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "vocab_size": args.vocab_size,
        "max_caption_words": args.max_words,
        "attention_reg": args.attention_reg,
        "clip_norm": args.clip_norm or None,
        "seed": args.seed,
        "patience": args.patience,
        "output_bias": args.output_bias,
    }
    return with_defaults(chosen, args.decoder)


def _decoding_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--beam-size", type=int, default=1, help="beams searched (1: greedy)")
    renamed(command, "--beam", "--beam-size")
    command.add_argument("--max-length", type=int, help="most words per caption")


def _encoder_option(command: argparse.ArgumentParser, default: str) -> None:
    command.add_argument(
        "--encoder", help=f"encoder weights: imagenet, seed:N or a file (default: {default})"
    )


def run_data(args: argparse.Namespace) -> None:
    """`captioner data shapes|scenes OUT`."""
    from model.scenes import write_scenes_dataset
    from model.shapes import write_shapes_dataset

    write = {"shapes": write_shapes_dataset, "scenes": write_scenes_dataset}[args.kind]
    with progress_bar(args.size, "images") as bar:
        # The callback reports images done so far; tqdm's update takes the increment.
        write(
            args.out, args.size, args.seed, args.val_fraction, lambda done: bar.update(done - bar.n)
        )
    print(f"wrote {args.size} images and COCO annotations to {args.out}")


def run_train(args: argparse.Namespace) -> None:
    """`captioner train --data DIR --out BUNDLE`."""
    from model.data import check_images, load_dataset
    from model.encoder import DEFAULT_WEIGHTS, Encoder
    from model.training import Callbacks, TrainConfig, train

    splits = load_dataset(args.data, args.split_file)
    for role in ("train", "val"):
        if not splits.get(role):
            raise ValueError(f"{args.data} has no {role} split")
        check_images(splits[role])
    config = TrainConfig(**train_settings_of(args))
    encoder = Encoder(args.encoder or DEFAULT_WEIGHTS)
    with TrainingBars() as bars:
        bundle = train(
            splits,
            encoder,
            args.out,
            config,
            model_config_of(args),
            work_dir=args.work_dir,
            cache_dir=args.cache,
            callbacks=Callbacks(bars.progress, bars.epoch_end, bars.features),
        )
    print(f"bundle written to {args.out}")
    print(json.dumps(bundle.metrics["val"], indent=1))


def load_captioner(bundle_dir: Path, encoder_weights: str | None):
    """A Captioner for a bundle, on the encoder it names (or `encoder_weights`)."""
    from model.bundle import load_bundle
    from model.encoder import Encoder
    from model.inference import Captioner

    bundle = load_bundle(bundle_dir)
    return Captioner(bundle, Encoder(encoder_weights or bundle.encoder.weights))


def run_caption(args: argparse.Namespace) -> int:
    """`captioner caption BUNDLE IMAGE…`: one line (or JSON object) per image."""
    from core.plots import save_attention_png
    from model.images import preprocess
    from model.inference import Sampling

    captioner = load_captioner(args.bundle, args.encoder)
    sampling = Sampling.of([(args.temperature, args.seed)])
    failed = 0
    for path in args.images:
        try:
            image = open_image(path.read_bytes())
        except (OSError, ImageError) as exc:
            failed += 1
            print(f"{path}: error: {exc}", file=sys.stderr)
            continue
        (result,) = captioner.caption_batch(
            preprocess(image)[None], args.beam_size, args.max_length, sampling
        )
        picture = None
        if args.attention_png:
            picture = args.attention_png / f"{path.stem}.attention.png"
            save_attention_png(picture, image, result.tokens, result.attention)
        print(format_caption(path, result, picture, args.json))
    return 1 if failed else 0


def format_caption(path: Path, result, picture: Path | None, as_json: bool) -> str:
    """One output line for a captioned image."""
    ood = result.ood and {
        "score": round(result.ood.score, 3),
        "threshold": round(result.ood.threshold, 3),
        "flagged": result.ood.flagged,
    }
    if not as_json:
        notes = limit_notes(result.confidence, ood)
        return f"{path}: {result.text}" + (f"  [{picture}]" if picture else "") + notes
    return json.dumps(
        {
            "image": str(path),
            "caption": result.text,
            "tokens": result.tokens,
            "log_probs": [round(x, 5) for x in result.log_probs],
            "score": round(result.score, 5),
            "ended": result.ended,
            "attention_png": str(picture) if picture else None,
            "confidence": None if result.confidence is None else round(result.confidence, 4),
            "ood": ood,  # None for a bundle made before OOD scores
        }
    )


def run_eval(args: argparse.Namespace) -> None:
    """`captioner eval BUNDLE --data DIR`: BLEU-1…4, CIDEr-D, exact match, localisation."""
    from model.data import check_images, load_dataset
    from model.evaluation import caption_features, score
    from model.features import extract_features

    captioner = load_captioner(args.bundle, args.encoder)
    examples = load_dataset(args.data, args.split_file).get(args.split, [])[: args.limit]
    if not examples:
        raise ValueError(f"{args.data} has no {args.split} split")
    check_images(examples)
    cache = args.cache or args.bundle.with_name(args.bundle.name + ".work") / "features"
    with progress_bar(len(examples), f"features {args.split}") as bar:
        features = extract_features(captioner.encoder, examples, cache, progress=bar.update)
    results = caption_features(captioner.decoding, features, args.beam_size)
    scores = {"images": len(examples), **score(examples, results)}
    if args.json:
        print(json.dumps(scores))
    else:
        for key, value in scores.items():
            print(f"{key:>12}  {value if value is None or key == 'images' else round(value, 4)}")
