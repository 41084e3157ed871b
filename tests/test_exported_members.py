"""The public API: __all__ lists are sorted and name what the modules define."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import octave_bulk


def test_package_all_is_sorted_and_importable() -> None:
    assert octave_bulk.__all__ == sorted(octave_bulk.__all__, key=lambda n: (not n.isupper(), n))
    for name in octave_bulk.__all__:
        assert getattr(octave_bulk, name) is not None


def test_every_module_has_a_docstring_and_valid_all() -> None:
    for info in pkgutil.walk_packages(octave_bulk.__path__, "octave_bulk."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        assert module.__doc__, info.name
        for name in getattr(module, "__all__", []):
            assert hasattr(module, name), f"{info.name}.{name}"
            member = getattr(module, name)
            if inspect.isfunction(member) or inspect.isclass(member):
                assert member.__doc__, f"{info.name}.{name} has no docstring"
