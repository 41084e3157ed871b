"""Command options made from :class:`Settings` fields: one source for names, help texts,
choices and defaults (a flag, ``OCTAVE_<NAME>`` and the TOML key all name one field), and the
help that prints them in sections.

Every generated option defaults to None, meaning "not given": the environment, then the
config file, then the field's default decide (see :meth:`Settings.load`). A setting only an
expert sets stays a flag but is hidden from ``--help``; docs/reference.md lists every one.
"""

from __future__ import annotations

import copy
import enum
import types
import typing
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, Literal

import click
from click.core import ParameterSource

from octave_bulk.settings.model import Settings

__all__ = [
    "FLAG_NAMES",
    "INPUT_FIELDS",
    "JOB_OPTION",
    "OLD_FLAG_NAMES",
    "PLAN_SHOWN",
    "PROBE_SHOWN",
    "RUN_FIELDS",
    "RUN_SHOWN",
    "SECTIONS",
    "WORKER_FIELDS",
    "SectionedCommand",
    "SettingOption",
    "config_option",
    "default_text",
    "job_option",
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
    "metrics_textfile", "log_file", "ledger", "job",
    "mode", "async_body", "callback_url", "callback_listen", "resubmit_expired", "poll_rate",
    "detach",
)  # fmt: skip
"""The settings ``run`` takes as flags."""

INPUT_FIELDS = (
    "profile", "map", "input_format", "encoding", "delimiter", "skip_lines", "max_field_bytes",
)  # fmt: skip
"""The settings that say how to read and map the input (``run`` and ``validate``)."""

SECTIONS: dict[str, tuple[str, ...]] = {
    "Target": ("agent_oid", "experiment_oid", "agent_type", "base_url", "api_key_file",
               "config_file"),
    "Input": ("input_format", "profile", "map", "key", "where", "context_from", "encoding",
              "delimiter", "skip_lines", "max_field_bytes"),
    "Pacing": ("rate", "concurrency", "adaptive", "max_attempts", "timeout", "call_deadline",
               "max_response_bytes"),
    "Safety": ("dry_run", "show_request", "limit", "max_calls", "probe_calls", "budget",
               "retry_failed", "allow_resend", "resend_guard", "allow_overdraft", "fail_on",
               "fail_on_rejects"),
    "Output": ("output", "progress", "log_format", "log_file", "ledger", "job",
               "metrics_textfile"),
    "Async": ("mode", "detach", "async_body", "callback_url", "callback_listen",
              "resubmit_expired", "poll_rate"),
    "Agent options": ("output_format", "context", "instructions", "lang", "url",
                      "prospect_limit", "prospect_minimal", "search_context"),
}  # fmt: skip
"""Help sections, in order: each parameter (by name) under its heading; the others follow."""

RUN_SHOWN = frozenset({
    "agent_oid", "experiment_oid", "agent_type", "base_url",
    "input_format", "profile", "map", "key", "where", "context_from",
    "rate", "concurrency",
    "dry_run", "limit", "max_calls", "budget", "retry_failed", "allow_resend", "fail_on",
    "progress", "log_format",
    "mode", "detach",
    "output_format", "context", "instructions",
})  # fmt: skip
"""The settings ``run --help`` lists; the others are accepted as flags but hidden."""

PLAN_SHOWN = RUN_SHOWN - {"dry_run", "progress", "log_format", "detach", "fail_on"}
"""What ``plan --help`` lists: what changes the forecast (not logs, progress or exit rules)."""

PROBE_SHOWN = RUN_SHOWN - {"dry_run", "detach", "fail_on", "max_calls", "retry_failed",
                           "allow_resend", "limit"}  # fmt: skip
"""What ``probe --help`` lists."""

FLAG_NAMES = {
    "agent_oid": "--agent",
    "experiment_oid": "--experiment",
    "input_format": "--input-format",
    "key": "--person-key",
}
"""Settings whose flag is not ``--`` + the name with ``-`` for ``_``."""

OLD_FLAG_NAMES = {"input_format": "--format", "key": "--key"}
"""Names a flag had before it was renamed: still accepted, not shown (for one release)."""

_SETTINGS_RULE = (
    "Every option here is also a setting: NAME in the --config TOML file (or the file "
    "OCTAVE_CONFIG names) and OCTAVE_NAME in the environment, NAME being the flag with _ for - "
    "unless [setting: ...] says otherwise. Flags win over the environment, the environment "
    "over the file."
)
_MORE_SETTINGS = (
    "More settings (deadlines, byte caps, callbacks, poll rate, metrics and log files, "
    "agent-specific knobs) are set in the file or the environment (also accepted as flags): "
    "docs/reference.md lists every option and setting."
)


class SectionedCommand(click.Command):
    """A command whose options are printed under the headings of :data:`SECTIONS`, with the
    settings rule said once (for a command that takes settings)."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        records = {
            param.name: record
            for param in self.get_params(ctx)
            if isinstance(param, click.Option) and (record := param.get_help_record(ctx))
        }
        # One width for the first column of every section (click sizes each list alone).
        width = min(30, max((len(flags) for flags, _ in records.values()), default=0))
        records = {name: (flags.ljust(width), text) for name, (flags, text) in records.items()}
        has_settings = any(isinstance(p, SettingOption) for p in self.params)
        if has_settings:
            formatter.write_paragraph()
            formatter.write_text(_SETTINGS_RULE)
        for title, names in SECTIONS.items():
            rows = [records.pop(name) for name in names if name in records]
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)
        if records:
            with formatter.section("Other options"):
                formatter.write_dl(list(records.values()))
        if has_settings and any(p.hidden for p in self.params if isinstance(p, click.Option)):
            formatter.write_paragraph()
            formatter.write_text(_MORE_SETTINGS)


class SettingOption(click.Option):
    """An option made from a Settings field; an old name it had works but is not shown."""

    def __init__(self, *args: Any, old_name: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.old_name = old_name

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        if self.old_name is None:
            return super().get_help_record(ctx)
        shown = copy.copy(self)
        shown.opts = [flag for flag in self.opts if flag != self.old_name]
        return click.Option.get_help_record(shown, ctx)

    def add_to_parser(self, parser: Any, ctx: click.Context) -> None:
        """The old name is parsed apart, so that using it can be pointed out."""
        if self.old_name is None:
            super().add_to_parser(parser, ctx)
            return
        shown = copy.copy(self)
        shown.opts = [flag for flag in self.opts if flag != self.old_name]
        click.Option.add_to_parser(shown, parser, ctx)
        parser.add_option(obj=self, opts=[self.old_name], dest=self._old_dest, nargs=self.nargs)

    def consume_value(
        self, ctx: click.Context, opts: Mapping[str, Any]
    ) -> tuple[Any, ParameterSource]:
        if self.old_name is not None and opts.get(self._old_dest) is not None:
            new = next(flag for flag in self.opts if flag != self.old_name)
            click.echo(
                f"note: {self.old_name} is now {new}; the old name goes in a later release",
                err=True,
            )
            if opts.get(self.name) is None:
                opts = {**opts, self.name: opts[self._old_dest]}
        return super().consume_value(ctx, opts)

    @property
    def _old_dest(self) -> str:
        return f"{self.name}__old_name"


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


def default_text(name: str, default: Any) -> str | None:
    """A setting's default as ``--help`` and docs/reference.md print it (None: none shown)."""
    if name in _DEFAULT_SHOWN:
        return _DEFAULT_SHOWN[name]
    if default is None or default == () or isinstance(default, bool):
        return None if not isinstance(default, bool) else ("on" if default else "off")
    if isinstance(default, enum.Enum):
        return str(default.value)
    if isinstance(default, tuple):
        return ",".join(str(getattr(item, "value", item)) for item in default)
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


def settings_option(
    name: str, *, hidden: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The click option for one Settings field (the parameter is named after the field)."""
    field = Settings.model_fields[name]
    kind = _base_type(field.annotation)
    flag = FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
    help_text = str(field.description)
    if name in FLAG_NAMES:
        help_text += f" [setting: {name}]"
    shown = default_text(name, field.get_default(call_default_factory=True))
    if shown is not None:
        help_text += f" [default: {shown}]"
    old = OLD_FLAG_NAMES.get(name)
    extra: dict[str, Any] = {"cls": SettingOption, "hidden": hidden, "old_name": old}
    flags = [flag, old] if old else [flag]
    if kind is bool and name in _ON_OFF_FLAGS:
        return click.option(*flags, name, is_flag=True, default=None, help=help_text, **extra)
    if kind is bool:
        flags = [f"{flag}/--no-{flag.removeprefix('--')}"]
        return click.option(*flags, name, default=None, help=help_text, **extra)
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
    return click.option(*flags, name, default=None, help=help_text, **extra)


def settings_options(
    *names: str, shown: Collection[str] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Options for several fields; those not in ``shown`` (when given) hidden from help."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for name in reversed(names):
            hidden = shown is not None and name not in shown
            command = settings_option(name, hidden=hidden)(command)
        return command

    return decorate


def config_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--config``: where settings come from, not a setting."""
    return click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False),
        envvar="OCTAVE_CONFIG",
        help="TOML file with settings [env: OCTAVE_CONFIG].",
    )(command)


def key_file_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--api-key-file``: the key is never a flag's value (it would show in ``ps``)."""
    return click.option(
        "--api-key-file",
        type=click.Path(dir_okay=False),
        help="File holding the API key [default: env OCTAVE_API_KEY; never a flag's value].",
    )(command)


def job_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--job NAME``: the job on the shared ledger (``enqueue``, ``worker``; ``run`` takes it
    among its settings)."""
    return settings_option("job")(command)


JOB_OPTION = job_option

WORKER_FIELDS = (
    "base_url", "rate", "concurrency", "adaptive", "timeout", "call_deadline",
    "max_response_bytes", "max_attempts", "max_calls", "budget", "allow_overdraft", "fail_on",
    "progress", "log_format", "log_file", "metrics_textfile", "ledger",
    "callback_url", "callback_listen", "poll_rate", "resubmit_expired",
)  # fmt: skip
"""The settings ``worker`` takes as flags: pacing, deadlines, stops and this host's way to
hear of async jobs; what its requests are (``--mode`` included) comes from the job."""
