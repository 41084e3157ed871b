"""The ``octave-bulk`` command line: commands and rendering only; the work is in the library.

``main`` holds the group (commands load on first use); ``options`` turns :class:`Settings`
fields into options; ``common`` loads settings and maps library errors to messages and exit
codes; ``run``, ``files`` and ``tools`` define the commands.
"""

from __future__ import annotations

from octave_bulk.cli.main import cli, main

__all__ = ["cli", "main"]
