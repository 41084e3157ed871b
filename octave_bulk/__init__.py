"""octave-bulk: run Octave's Sequence Agent over thousands of contacts, fast and crash-safe."""

from __future__ import annotations

from octave_bulk.models import OutputFormat, SequenceRequest, SequenceResponse

__all__ = ["OutputFormat", "SequenceRequest", "SequenceResponse"]
