"""``python -m octave_bulk``: the same as the ``octave-bulk`` command."""

from __future__ import annotations

from octave_bulk.cli import main

main()
