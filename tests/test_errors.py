"""One exception tree: every exception class of the project is defined in core.errors, drawn in
its docstring, and derives from CaptionerError."""

from __future__ import annotations

import importlib
import pkgutil

import core.errors
from core.errors import CaptionerError

PACKAGES = ("core", "store", "model", "api", "worker", "captioner")


def exception_classes() -> dict[str, list[type]]:
    """Exception classes defined in any module of the project, by name."""
    found: dict[str, list[type]] = {}
    for package in PACKAGES:
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, f"{package}."):
            if info.name.endswith(".__main__"):  # runs the command line when imported
                continue
            module = importlib.import_module(info.name)
            for value in vars(module).values():
                if (
                    isinstance(value, type)
                    and issubclass(value, BaseException)
                    and value.__module__ == module.__name__
                ):
                    found.setdefault(value.__name__, []).append(value)
    return found


def test_every_exception_is_in_the_one_tree():
    found = exception_classes()
    assert {name for name, classes in found.items() if len(classes) > 1} == set()  # unique names
    classes = [classes[0] for classes in found.values()]
    assert [c for c in classes if c.__module__ != "core.errors"] == []
    assert [c for c in classes if not issubclass(c, CaptionerError)] == []
    drawn = core.errors.__doc__
    assert [c.__name__ for c in classes if f" {c.__name__} " not in drawn] == []
