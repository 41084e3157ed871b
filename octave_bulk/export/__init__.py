"""``export``: a run's results file becomes a CSV that a sequencer imports, one row per success.

Columns: the preset's identity columns, then ``step1_subject, step1_body, ... stepN_subject,
stepN_body`` where N is the longest sequence exported, then ``num_steps, request_id,
completed_at``. A row with fewer steps leaves the missing steps' cells empty. Blank variables
break sends in every sequencer, so a result with no step, or with a step whose subject or body
is empty or whitespace (after HTML is stripped), is left out and reported, never exported
blank; so is a line that is not a result, and a cell cut to the length limit is reported too:
nothing is dropped silently.

One stage per module, each with its contract in its docstring: ``results`` reads the results
file line by line into results; ``text`` decides which bodies are HTML, converts them, tells a
blank body and escapes formula-looking cells; ``presets`` holds each sequencer's columns and
length limit; ``outcome`` is what an export wrote and left out; ``writer`` runs the two passes and writes the CSV (:func:`export_results`; or
:func:`export_lines` from another source of lines: a job's results in the shared ledger).
"""

from __future__ import annotations

from octave_bulk.export.presets import PRESETS, Preset
from octave_bulk.export.text import escape_formula, html_to_text, text_to_html
from octave_bulk.export.writer import ID_LIST_CAP, ExportReport, export_lines, export_results

__all__ = [
    "ID_LIST_CAP",
    "PRESETS",
    "ExportReport",
    "Preset",
    "escape_formula",
    "export_lines",
    "export_results",
    "html_to_text",
    "text_to_html",
]
