"""Where settings come from besides flags and the environment: the ``--config`` TOML file.

:class:`TomlFile` is the pydantic-settings source of the file named in :data:`CONFIG_FILE`
(set by ``Settings.load`` for one build): an unknown key is a :class:`ConfigError` with the
closest known name and the reference file (:func:`settings_reference`); the API key never
belongs there. :func:`value_origin` names where a bad value came from, never the value.
"""

from __future__ import annotations

import contextvars
import difflib
import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from octave_bulk.errors import ConfigError

__all__ = ["CONFIG_FILE", "TomlFile", "settings_reference", "value_origin"]

CONFIG_FILE: contextvars.ContextVar[Path | None] = contextvars.ContextVar("config", default=None)
"""The config file of the settings being built (None: no file)."""


def settings_reference() -> Path | None:
    """``default.toml``, every setting with its default: in the installed package, else in
    the source tree's ``configs/`` (None when neither is there)."""
    package = Path(__file__).parents[1]  # the octave_bulk package
    for candidate in (package / "default.toml", package.parent / "configs" / "default.toml"):
        if candidate.is_file():
            return candidate
    return None


def value_origin(
    loc: tuple[int | str, ...], given: dict[str, Any], config: str | Path | None
) -> str:
    """Where a bad value came from, when not from a flag: `` (from OCTAVE_RATE)`` (never the
    value: an environment may hold secrets, and errors are printed to logs)."""
    name = str(loc[0]) if loc else ""
    if not name or name in given:
        return ""
    env = f"OCTAVE_{name.upper()}"
    if any(k.upper() == env for k in os.environ):
        return f" (from {env})"
    return f" (in {config})" if config else ""


class TomlFile(PydanticBaseSettingsSource):
    """The ``--config`` TOML file: unknown keys and a key in the file are config errors."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        path = CONFIG_FILE.get()
        self.data: dict[str, Any] = {}
        if path is None:
            return
        try:
            with open(path, "rb") as handle:
                self.data = tomllib.load(handle)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        known = set(settings_cls.model_fields)
        for key in self.data:
            if key == "api_key":
                raise ConfigError(
                    f"{path}: api_key does not belong in a config file; "
                    "set OCTAVE_API_KEY or use --api-key-file"
                )
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                reference = settings_reference()
                listed = f" (every setting, with its default: {reference})" if reference else ""
                raise ConfigError(f"{path}: unknown setting {key!r}{hint}{listed}")

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self.data)
