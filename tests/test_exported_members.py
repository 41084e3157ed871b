"""The public API: every module's ``__all__`` is sorted, names what exists, and is complete."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import octave_bulk

KNOWN_GAPS: dict[str, set[str]] = {}
"""Module -> what its ``__all__`` lacks today. Exact: a new gap fails, and so does a fixed one
(then remove it here)."""


def _module_names() -> list[str]:
    # __main__ runs the CLI when imported.
    walked = pkgutil.walk_packages(octave_bulk.__path__, "octave_bulk.")
    return ["octave_bulk", *(info.name for info in walked if not info.name.endswith("__main__"))]


MODULES = _module_names()


def _order(name: str) -> tuple[int, str]:
    """isort-style (ruff's RUF022): CONSTANTS, then Classes, then functions."""
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)


def test_the_walk_finds_the_subpackages() -> None:
    assert {"octave_bulk.simulator.app", "octave_bulk.run.engine", "octave_bulk.cli"} <= set(
        MODULES
    )


@pytest.mark.parametrize("name", MODULES)
def test_all_is_sorted_exists_and_is_complete(name: str) -> None:
    module = importlib.import_module(name)
    gaps: set[str] = set()
    exported = getattr(module, "__all__", None)
    if exported is None:
        gaps.add("__all__")
        exported = []
    assert list(exported) == sorted(exported, key=_order), f"{name}.__all__ is not sorted"
    assert len(set(exported)) == len(exported), f"{name}.__all__ repeats a name"
    assert [n for n in exported if not hasattr(module, n)] == [], f"{name}.__all__"
    defined = {
        n
        for n, member in vars(module).items()
        if (inspect.isfunction(member) or inspect.isclass(member))
        and member.__module__ == name
        and not n.startswith("_")
    }
    gaps |= defined - set(exported)
    assert gaps == KNOWN_GAPS.get(name, set()), f"{name}: public but not in __all__"


def test_known_gaps_name_real_modules() -> None:
    assert set(KNOWN_GAPS) <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_every_module_and_export_has_a_docstring(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__doc__, name
    for export in getattr(module, "__all__", []):
        member = getattr(module, export)
        if inspect.isfunction(member) or inspect.isclass(member):
            assert member.__doc__, f"{name}.{export} has no docstring"
