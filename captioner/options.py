"""Options the `captioner` commands share: --verbose on every command, and the old spellings of
renamed options, still accepted but no longer shown (one spelling per option: the API's)."""

from __future__ import annotations

import argparse


def renamed(command: argparse.ArgumentParser, old: str, new: str) -> None:
    """Accept `old` (as --beam) as a hidden spelling of the option `new` (--beam-size), which
    must be added first: it sets the same value, and --help shows only `new`."""
    option = command._option_string_actions[new]  # argparse has no public lookup by name
    command.add_argument(
        old, dest=option.dest, type=option.type, default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )


def verbose_everywhere(commands: argparse._SubParsersAction) -> None:
    """Give every command under `commands` (each leaf: `keys create`, not `keys`) --verbose."""
    for command in commands.choices.values():
        below = [a for a in command._actions if isinstance(a, argparse._SubParsersAction)]
        if below:
            verbose_everywhere(below[0])
        elif "--verbose" not in command._option_string_actions:
            command.add_argument(
                "--verbose",
                action="store_true",
                help="show the libraries' log lines too (TensorFlow's start-up, kombu's)",
            )
