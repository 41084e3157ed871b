"""``pipeline``: several agents in turn, each on the results of the one before."""

from __future__ import annotations

import sys
from typing import Any

import click

from octave_bulk.cli.common import fail, print_summary, run_async
from octave_bulk.cli.options import key_file_option
from octave_bulk.errors import OctaveBulkError

__all__ = ["pipeline"]


@click.command()
@click.argument("pipeline_file", metavar="PIPELINE.toml")
@key_file_option
def pipeline(pipeline_file: str, api_key_file: str | None) -> None:
    """Run several agents in turn, each on the results of the one before.

    Each [[steps]] table is one run (agent_type, agent, and its own where, context_from...)
    writing OUTPUT_DIR/NAME.ndjson; the next step reads it. Running the same file again
    resumes every step. Exit: the first stopped step's code, else 1 if contacts failed, else 0.
    """
    from octave_bulk.observe.log import configure_logging
    from octave_bulk.run.engine import run_batch
    from octave_bulk.run.pipeline import PipelineStep, load_pipeline, run_pipeline

    def run_step(step: PipelineStep) -> Any:
        click.echo(f"step {step.name}: {step.settings.agent_type} on {step.input}", err=True)
        return run_batch(step.input, step.output, step.settings, handle_signals=True)

    def report(step: PipelineStep, summary: dict[str, Any]) -> None:
        if step.settings.log_format != "json":
            print_summary(summary)

    try:
        loaded = load_pipeline(pipeline_file, api_key_file=api_key_file)
        first = loaded.steps[0].settings
        configure_logging(first.log_format, str(first.log_file) if first.log_file else None)
        code = run_async(lambda: run_pipeline(loaded, run_step, on_step=report))
    except OctaveBulkError as exc:
        fail(exc)
    sys.exit(code)
