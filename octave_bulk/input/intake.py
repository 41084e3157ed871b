"""From settings to the reader's options: the one place the engine and ``validate`` turn
settings into input handling."""

from __future__ import annotations

from pathlib import Path

from octave_bulk.agents import COMPANY_AGENTS
from octave_bulk.input.reader import ContactReader, ReaderOptions
from octave_bulk.settings.model import Settings

__all__ = ["open_contacts", "reader_options"]


def reader_options(settings: Settings) -> ReaderOptions:
    """The reader's options from the run's settings."""
    return ReaderOptions(
        format=settings.input_format,
        encoding=settings.encoding,
        delimiter=settings.delimiter,
        skip_lines=settings.skip_lines,
        profile=settings.profile,
        overrides=tuple(settings.map),
        max_field_bytes=settings.max_field_bytes,
        context_templates=dict(settings.context_templates),
        instruction_templates=dict(settings.instruction_templates),
        subject="company" if settings.agent_type in COMPANY_AGENTS else "person",
        where=settings.where,
        context_from=tuple(settings.context_from),
    )


def open_contacts(path: str | Path, settings: Settings) -> ContactReader:
    """A reader (use it as a context manager) yielding one Contact or Reject per record."""
    return ContactReader(path, reader_options(settings))
