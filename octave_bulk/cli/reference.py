"""The option and setting reference, as Markdown made from the commands and :class:`Settings`:
the body of docs/reference.md between its ``cog`` markers (``cog -r docs/reference.md``
writes it; ``cog --check docs/reference.md`` in CI fails when it is stale).

Every command with its options (the setting and environment variable each one sets, its
default, whether ``--help`` lists it, an old name still accepted), then the settings that are
no command's flag. The counts it states are computed here, so they cannot go stale.
"""

from __future__ import annotations

import inspect

import click

from octave_bulk.cli.main import COMMANDS, cli
from octave_bulk.cli.options import OLD_FLAG_NAMES, SettingOption, default_text
from octave_bulk.settings.model import Settings

__all__ = ["flag_settings", "reference_markdown", "visible_options"]


def _cell(text: object) -> str:
    return " ".join(str(text).replace("\b", "").replace("|", "\\|").split())


def _help_text(text: str) -> list[str]:
    """A command's help as Markdown: paragraphs, and its examples (click's ``\\b`` blocks) as
    a code block."""
    lines: list[str] = []
    for paragraph in inspect.cleandoc(text).split("\n\n"):
        if paragraph.startswith("\b"):
            lines += ["```bash", *paragraph.removeprefix("\b").strip("\n").splitlines(), "```"]
        else:
            lines.append(" ".join(paragraph.split()))
        lines.append("")
    return lines[:-1]


def _commands() -> list[tuple[str, click.Command]]:
    """Every command and subcommand by its full name, in the help's order."""
    ctx = click.Context(cli)
    found: list[tuple[str, click.Command]] = []
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        assert command is not None  # noqa: S101 - listed by the group itself
        if isinstance(command, click.Group):
            sub_ctx = click.Context(command)
            for sub in command.list_commands(sub_ctx):
                child = command.get_command(sub_ctx, sub)
                assert child is not None  # noqa: S101 - as above
                found.append((f"{name} {sub}", child))
        else:
            found.append((name, command))
    return found


def visible_options(command: click.Command) -> list[click.Option]:
    """The options ``--help`` lists for a command (``--help`` itself included)."""
    ctx = click.Context(command)
    return [p for p in command.get_params(ctx) if isinstance(p, click.Option) and not p.hidden]


def flag_settings() -> set[str]:
    """The settings some command takes as a flag."""
    return {
        param.name
        for _, command in _commands()
        for param in command.params
        if isinstance(param, SettingOption) and param.name
    }


def _option_row(param: click.Option) -> str:
    flags = ", ".join(f"`{flag}`" for flag in param.opts + param.secondary_opts)
    old = OLD_FLAG_NAMES.get(param.name or "") if isinstance(param, SettingOption) else None
    if old:
        flags = ", ".join(f"`{f}`" for f in param.opts if f != old) + f" (old name `{old}`)"
    if isinstance(param.type, click.Choice):
        flags += " " + "\\|".join(str(c) for c in param.type.choices)
    if isinstance(param, SettingOption) and param.name:
        setting = f"`{param.name}`, `OCTAVE_{param.name.upper()}`"
        field = Settings.model_fields[param.name]
        default = default_text(param.name, field.get_default(call_default_factory=True))
        what = str(field.description)
    else:
        setting = "-"
        plain = isinstance(param.default, str | int | float) and param.default is not False
        default = str(param.default) if plain else None
        what = param.help or ""
        if param.envvar:
            setting = f"`{param.envvar}`"
    shown = "" if param.hidden else "yes"
    return f"| {flags} | {setting} | {_cell(default or '')} | {shown} | {_cell(what)} |"


def reference_markdown() -> str:
    """The generated part of docs/reference.md."""
    commands = _commands()
    with_flags = flag_settings()
    file_only = [name for name in Settings.model_fields if name not in with_flags]
    run = dict(commands)["run"]
    lines = [
        f"{len(COMMANDS)} commands; {len(Settings.model_fields)} settings, "
        f"{len(file_only)} of them set only in the file or the environment; "
        f"`run` takes {len(run.params) - 1} options, {len(visible_options(run))} of them "
        "listed by `run --help`.",
        "",
        "| command | what it does |",
        "|---|---|",
        *(
            f"| `octave-bulk {name}` | {_cell(summary)} |"
            for name, (_, summary) in sorted(COMMANDS.items())
        ),  # fmt: skip
    ]
    for name, command in commands:
        ctx = click.Context(command, info_name=name)
        usage = " ".join(command.collect_usage_pieces(ctx))
        lines += ["", f"### `octave-bulk {name} {usage}`", "", *_help_text(command.help or "")]
        lines += ["", "| option | setting, environment | default | in --help | what |"]
        lines.append("|---|---|---|---|---|")
        lines += [_option_row(p) for p in command.params if isinstance(p, click.Option)]
    lines += [
        "",
        "### Settings only in the file or the environment",
        "",
        "| setting, environment | default | what |",
        "|---|---|---|",
    ]
    for name in file_only:
        field = Settings.model_fields[name]
        env = f"`OCTAVE_{name.upper()}`"
        default = default_text(name, field.get_default(call_default_factory=True))
        lines.append(f"| `{name}`, {env} | {_cell(default or '')} | {_cell(field.description)} |")
    return "\n".join(lines) + "\n"
