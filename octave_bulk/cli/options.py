"""Command options made from :class:`Settings` fields: one source for names, help texts,
choices and defaults (a flag, ``OCTAVE_<NAME>`` and the TOML key all name one field).

Every generated option defaults to None, meaning "not given": the environment, then the
config file, then the field's default decide (see :meth:`Settings.load`).
"""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import click

from octave_bulk.settings.model import Settings

__all__ = [
    "INPUT_FIELDS",
    "RUN_FIELDS",
    "config_option",
    "key_file_option",
    "settings_option",
    "settings_options",
]

RUN_FIELDS = (
    "agent_type", "agent_oid", "experiment_oid", "url", "prospect_limit", "prospect_minimal",
    "search_context",
    "where", "context_from", "base_url", "rate", "concurrency", "adaptive", "timeout",
    "call_deadline", "max_response_bytes",
    "max_attempts", "output_format", "lang", "context", "instructions", "max_calls", "budget",
    "limit", "dry_run", "retry_failed", "key", "resend_guard", "allow_resend", "allow_overdraft",
    "fail_on", "fail_on_rejects",
    "progress", "log_format",
    "metrics_textfile", "log_file", "ledger",
    "mode", "async_body", "callback_url", "callback_listen", "resubmit_expired", "poll_rate",
    "detach",
)  # fmt: skip
"""The settings ``run`` takes as flags, in help order."""

INPUT_FIELDS = (
    "profile", "map", "input_format", "encoding", "delimiter", "skip_lines", "max_field_bytes",
)  # fmt: skip
"""The settings that say how to read and map the input (``run`` and ``validate``)."""

_FLAG_NAMES = {"agent_oid": "--agent", "experiment_oid": "--experiment", "input_format": "--format"}
_ON_OFF_FLAGS = {
    "dry_run",
    "retry_failed",
    "fail_on_rejects",
    "allow_resend",
    "resubmit_expired",
    "allow_overdraft",
    "detach",
}  # given or not; the others of type bool are --x/--no-x
_DEFAULT_SHOWN = {
    "poll_rate": "found",
    "rate": "none",
    "progress": None,
    "encoding": None,
    "delimiter": None,
}


def _base_type(annotation: Any) -> Any:
    """``X | None`` -> ``X``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        return rest[0] if len(rest) == 1 else str
    return annotation


def _default_text(name: str, default: Any) -> str | None:
    if name in _DEFAULT_SHOWN:
        return _DEFAULT_SHOWN[name]
    if default is None or default == () or isinstance(default, bool):
        return None if not isinstance(default, bool) else ("on" if default else "off")
    if isinstance(default, enum.Enum):
        return str(default.value)
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


def settings_option(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The click option for one Settings field (the parameter is named after the field)."""
    field = Settings.model_fields[name]
    kind = _base_type(field.annotation)
    flag = _FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
    help_text = f"{field.description} Env OCTAVE_{name.upper()}."
    shown = _default_text(name, field.get_default(call_default_factory=True))
    if shown is not None:
        help_text += f" [default: {shown}]"
    extra: dict[str, Any] = {}
    if kind is bool and name in _ON_OFF_FLAGS:
        return click.option(flag, name, is_flag=True, default=None, help=help_text)
    if kind is bool:
        flags = f"{flag}/--no-{flag.removeprefix('--')}"
        return click.option(flags, name, default=None, help=help_text)
    if typing.get_origin(kind) is Literal:
        extra["type"] = click.Choice([str(c) for c in typing.get_args(kind)])
    elif isinstance(kind, type) and issubclass(kind, enum.Enum):
        extra["type"] = click.Choice([str(m.value) for m in kind])
    elif typing.get_origin(kind) is tuple:
        extra["multiple"] = True
    elif kind in (int, float):
        extra["type"] = kind
    elif kind is Path:
        extra["type"] = click.Path(dir_okay=False)
    if name in ("rate", "poll_rate"):
        extra.pop("type", None)  # "2/s", "90/min" or "none": Settings parses it
    return click.option(flag, name, default=None, help=help_text, **extra)


def settings_options(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Options for several fields, in the order given."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for name in reversed(names):
            command = settings_option(name)(command)
        return command

    return decorate


def config_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--config``: where settings come from, not a setting."""
    return click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False),
        help="TOML file with settings (flags win over env, env over the file).",
    )(command)


def key_file_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--api-key-file``: the key is never a flag's value (it would show in ``ps``)."""
    return click.option(
        "--api-key-file",
        type=click.Path(dir_okay=False),
        help="File holding the API key (else env OCTAVE_API_KEY).",
    )(command)
