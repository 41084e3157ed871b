"""Pipelines: several agents in turn, each on the results of the one before.

Contract: a pipeline file (TOML) names the first step's ``input``, an ``output_dir``, shared
``[settings]`` (any run setting) and ``[[steps]]``, each with a ``name``, an ``agent_type``,
its ``agent`` (``ca_...``) or ``experiment`` (``ae_...``) and any run setting of its own
(``where``, ``context_from``, ``concurrency``...). Step N reads step N-1's results
(``OUTPUT_DIR/NAME.ndjson``, read as chaining input: ``octave_bulk.input.chain``) and writes
its own (``input = "input"`` reads the pipeline's input instead, ``input = "STEP"`` an earlier
step's results; a ``context_from`` entry ``STEP.PATH`` joins an earlier step's results by
person or company); each step is an ordinary run on its own output, so a pipeline run again resumes
every step (a finished one sends nothing). :func:`load_pipeline` checks the whole file before
anything runs: an unknown key, a missing target or a bad value names the file, the step and
the key (a ``context_from`` naming a step that does not run before, too), and
:func:`check_steps` checks every step's files before the first call. :func:`run_pipeline`
checks, then runs the steps in order and stops at the first one that stopped
(exit 2 or more: its code is the pipeline's); a step whose contacts partly failed (exit 1)
lets the next one run on the others.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from octave_bulk.errors import ConfigError, ExitCode, InputError, StateError
from octave_bulk.input.intake import reader_options
from octave_bulk.input.reader import ContactReader
from octave_bulk.settings.model import Settings
from octave_bulk.state.paths import OutputPaths
from octave_bulk.state.preflight import check_writable

__all__ = ["Pipeline", "PipelineStep", "check_steps", "load_pipeline", "run_pipeline"]

_STEP_KEYS = {"name", "agent", "experiment", "input"}
_RENAMED = {"agent": "agent_oid", "experiment": "experiment_oid"}


@dataclass(frozen=True)
class PipelineStep:
    """One step: its name, its settings, where it reads and where it writes."""

    name: str
    settings: Settings
    input: Path
    output: Path


@dataclass(frozen=True)
class Pipeline:
    """The steps of a pipeline file, in order."""

    path: Path
    steps: tuple[PipelineStep, ...]


def load_pipeline(path: str | Path, *, api_key_file: str | Path | None = None) -> Pipeline:
    """Read and check a pipeline file (see the module docstring).

    Raises:
        ConfigError: the file cannot be read, or a key or value is wrong (named).
    """
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the pipeline: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    _known(path, "the file", document, {"input", "output_dir", "settings", "steps"})
    for key in ("input", "output_dir"):
        if not isinstance(document.get(key), str):
            raise ConfigError(f"{path}: {key}: a path is required")
    shared = document.get("settings", {})
    fields = set(Settings.model_fields) - {"api_key"}
    _known(path, "[settings]", shared, fields)
    raw_steps = document.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise ConfigError(f"{path}: steps: at least one [[steps]] table is required")
    out_dir = Path(document["output_dir"])
    source, steps = Path(document["input"]), []
    names: set[str] = set()
    every_name = {raw.get("name") for raw in raw_steps if isinstance(raw, dict)}
    for number, raw in enumerate(raw_steps, 1):
        where = f"steps[{number}]"
        _known(path, where, raw, fields | _STEP_KEYS)
        name = raw.get("name")
        if not isinstance(name, str) or not name.isidentifier() or name in names:
            raise ConfigError(f"{path}: {where}.name: a unique name (letters, digits, _)")
        given = {
            _RENAMED.get(key, key): value
            for key, value in raw.items()
            if key not in ("name", "input")
        }
        reads = raw.get("input")
        if reads is not None:
            if reads == "input":
                source = Path(document["input"])
            elif reads in names:
                source = out_dir / f"{reads}.ndjson"
            else:
                raise ConfigError(
                    f"{path}: {where}.input: 'input' or the name of an earlier step, not {reads!r}"
                )
        if "context_from" in raw:
            entries = raw["context_from"]
            if not isinstance(entries, list):
                raise ConfigError(f"{path}: {where}.context_from: a list of paths")
            earlier = _Earlier(names, every_name - names, source != Path(document["input"]))
            given["context_from"] = [
                _joined(path, f"{where} ({name})", entry, earlier, out_dir) for entry in entries
            ]
        names.add(name)
        if not (given.get("agent_oid") or given.get("experiment_oid")):
            raise ConfigError(f'{path}: {where} ({name}): give agent = "ca_..."')
        try:
            settings = Settings.load(api_key_file=api_key_file, **(shared | given))
        except ConfigError as exc:
            raise ConfigError(f"{path}: {where} ({name}): {exc}") from None
        if settings.detach:  # the next step reads its results: they must be there
            raise ConfigError(
                f"{path}: {where} ({name}): detach leaves the results to a later `collect`; "
                "a pipeline's step needs them: drop detach"
            )
        output = out_dir / f"{name}.ndjson"
        steps.append(PipelineStep(name, settings, source, output))
        source = output
    return Pipeline(path, tuple(steps))


@dataclass(frozen=True)
class _Earlier:
    """What a step's ``context_from`` may name: the steps before it, the others (itself and
    those after it), and whether the step reads results (where a bare PATH is read)."""

    names: set[str]
    others: set[Any]
    reads_results: bool


_RESPONSE_KEYS = frozenset({"data", "found", "_metadata", "message"})
"""Top-level keys of a response: a bare PATH starting with one is never a step's name."""


def _joined(path: Path, where: str, entry: Any, earlier: _Earlier, out_dir: Path) -> str:
    """A step's ``context_from`` entry: ``STEP.PATH`` (an earlier step's results, joined by
    person or company) becomes ``OUTPUT_DIR/STEP.ndjson:PATH``; a bare PATH reads the step's
    own input results. A dotted entry naming a step that is not before this one, or (on a step
    that reads the contacts, or close to an earlier step's name) naming no step, is an error."""
    if not isinstance(entry, str) or not entry:
        raise ConfigError(f'{path}: {where}.context_from: a list of paths, e.g. ["enrich.data"]')
    step, _, rest = entry.partition(".")
    if not rest:  # a bare key: never a step's (the reader checks the input holds results)
        return entry
    if step in earlier.names:
        return f"{out_dir / step}.ndjson:{rest}"
    shown = ", ".join(sorted(earlier.names)) or "none"
    problem = None
    if step in earlier.others:
        problem = f"step {step!r} does not run before this one (steps before it: {shown})"
    elif step not in _RESPONSE_KEYS:
        close = difflib.get_close_matches(step, sorted(earlier.names), n=1, cutoff=0.75)
        if close or not earlier.reads_results:
            hint = f"did you mean {close[0]!r}? " if close else ""
            problem = (
                f"names no earlier step {step!r} ({hint}steps before this one: {shown}); "
                "STEP.PATH joins an earlier step's results"
            )
    if problem is not None:
        raise ConfigError(f"{path}: {where}.context_from: {entry!r}: {problem}")
    return entry


def check_steps(pipeline: Pipeline) -> None:
    """Before the first step sends anything, what each step's run would check at its own start
    (so that step 2 never stops with "nothing sent" after step 1 paid): every path the step
    writes can be written (:func:`~octave_bulk.state.preflight.check_writable`, as a run does)
    and a step that reads the pipeline's input reads its header as its run will (mapping,
    templates, ``where`` and a bare ``context_from`` PATH needing results). Settings and
    expressions were checked by :func:`load_pipeline`.

    Raises:
        ConfigError, InputError, StateError: the first problem, naming the step.
    """
    contacts = pipeline.steps[0].input
    for step in pipeline.steps:
        settings = step.settings
        try:
            check_writable(
                OutputPaths.for_output(step.output),
                ledger=settings.ledger,
                metrics=settings.metrics_textfile,
            )
            if step.input == contacts and str(contacts) != "-":
                options = reader_options(settings)
                own = tuple(p for p in options.context_from if ":" not in p)
                with ContactReader(contacts, dataclasses.replace(options, context_from=own)):
                    pass
        except (ConfigError, InputError, StateError) as exc:
            raise type(exc)(f"{pipeline.path}: step {step.name}: {exc}") from None


def _known(path: Path, where: str, table: Any, allowed: set[str]) -> None:
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: {where}: a table is expected")
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{path}: {where}: unknown key {key!r}{hint}")


async def run_pipeline(
    pipeline: Pipeline,
    run: Callable[[PipelineStep], Any],
    *,
    on_step: Callable[[PipelineStep, dict[str, Any]], None] | None = None,
) -> ExitCode:
    """Run the steps in order (``run``: a step -> the awaitable of its run summary); the
    pipeline's exit code (see the module docstring)."""
    check_steps(pipeline)
    worst = ExitCode.OK
    for step in pipeline.steps:
        step.output.parent.mkdir(parents=True, exist_ok=True)
        summary = await run(step)
        if on_step is not None:
            on_step(step, summary)
        code = ExitCode(summary["exit_code"])
        if code not in (ExitCode.OK, ExitCode.SOME_FAILED):
            return code
        worst = max(worst, code)
    return worst
