"""The settings' fields, by section (target, pacing, async, content, input, safety, output):
each one's name, type, default and one-line description. The flags, the environment names,
the TOML keys, ``--help`` and docs/reference.md are all made from these declarations; the
checks across fields and the loading live in :mod:`octave_bulk.settings.model`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from octave_bulk.agents import AgentKind
from octave_bulk.agents.envelope import StepMapping
from octave_bulk.agents.fields import OutputFormat
from octave_bulk.errors import FailOn
from octave_bulk.settings.values import DEFAULT_BASE_URL

__all__ = ["SettingsFields"]


class SettingsFields(BaseSettings):
    """Every setting with its default; :class:`~octave_bulk.settings.model.Settings` adds the
    checks and the loading."""

    model_config = SettingsConfigDict(
        env_prefix="OCTAVE_", extra="forbid", frozen=True, validate_default=True
    )

    # Target and credentials
    base_url: str = Field(DEFAULT_BASE_URL, description="API base URL.")
    api_key: SecretStr | None = Field(
        None, description="From OCTAVE_API_KEY or a key file only, never a flag or the file."
    )
    agent_type: AgentKind = Field("sequence", description="Which Octave agent --agent is.")
    agent_oid: str | None = Field(None, description="Agent to run (ca_...).")
    experiment_oid: str | None = Field(None, description="Experiment to run instead (ae_...).")
    check_agent: bool = Field(
        True,
        description="Look --agent up before the first call: exit 2 if unknown or of another type.",
    )
    url: str | None = Field(None, description="Content agent: the page the content is about.")
    where: str | None = Field(
        None,
        description="Chaining: only the earlier results this holds for, e.g. 'score >= 7'.",
    )
    context_from: tuple[str, ...] = Field(
        (), description="Chaining: an earlier response value for the context (repeatable)."
    )
    prospect_limit: int | None = Field(
        None, ge=1, le=1000, description="Prospector: people per company (1-1000)."
    )
    prospect_minimal: bool | None = Field(
        None, description="Prospector: minimal answers (the agent's default: true)."
    )
    search_context: str | None = Field(
        None, description="Prospector: the searchContext object, as JSON."
    )

    # Pacing
    rate: float | None = Field(
        None, description="Rate ceiling, e.g. 2/s, 90/min, or none (the limit is found)."
    )
    concurrency: int = Field(
        32,
        description="Calls in flight at most (the cap is found below); not given, the window "
        "is searched from 32 up to 512.",
    )
    adaptive: bool = Field(True, description="Slow the pool down on 429 and climb back.")
    limiter: str = Field(
        "adaptive", description="The limiter every call passes, by name (adaptive: the built-in)."
    )
    start_rate: float = Field(
        16.0, gt=0, description="Calls/s the search starts at with no --rate and no memory."
    )
    refusal_round_trip: float = Field(
        0.1,
        gt=0,
        description="Seconds a 429 is taken to need to come back until one has (the pacer "
        "judges a send unrefused after three); a Retry-After of 30 of them is a rate's, "
        "never a cap's.",
    )
    timeout: float = Field(180.0, description="Read timeout per call, seconds.")
    connect_timeout: float = Field(10.0, description="Connect timeout, seconds.")
    call_deadline: float = Field(
        300.0,
        description="Whole-attempt deadline (connect, send, the entire answer), seconds; "
        "--timeout bounds each read, this the whole call.",
    )
    max_response_bytes: int = Field(
        16 * 1024 * 1024,
        description="Largest answer body accepted, bytes; a bigger one fails its contact "
        "(response_too_large).",
    )
    max_attempts: int = Field(5, description="Attempts per contact per run, retries included.")
    backoff_initial: float = Field(1.0, description="First retry backoff cap, seconds.")
    backoff_max: float = Field(60.0, description="Largest retry backoff, seconds.")
    breaker_threshold: int = Field(
        100,
        description="Failed attempts in a row (pool-wide) that stop the run; > 2 x concurrency.",
    )
    refusal_patience: float = Field(
        900.0,
        description="Stop (exit 4) after 429s with no call accepted for this long, seconds, "
        "or at once on a Retry-After longer than this.",
    )
    drain_timeout: float = Field(
        120.0, description="On SIGINT/SIGTERM, wait this long for calls in flight, seconds."
    )
    transport: Literal["aiohttp", "httpx"] = Field("aiohttp", description="HTTP transport.")

    # Submit and poll (Octave's async agent API; docs/octave-api.md, section "Async API")
    mode: Literal["sync", "async"] = Field(
        "sync", description="sync: one call per contact; async: submit, then poll for the result."
    )
    async_body: Literal["flat", "nested"] = Field(
        "flat", description="Async body: inputs at the top level (flat) or under inputs (nested)."
    )
    async_path: str = Field("/api/v2/async/agent/run", description="Async submit endpoint.")
    async_status_path: str = Field(
        "/api/v2/async/agent/run/status", description="Async status endpoint."
    )
    async_status_param: str = Field(
        "requestId", description="The status endpoint's query parameter for the job handle."
    )
    async_handle_fields: tuple[str, ...] = Field(
        ("requestId", "agentRunOId"),
        min_length=1,
        description="Async: the submit answer's fields that may hold the job handle, in order.",
    )
    callback_url: str = Field(
        "https://callback.invalid/octave-bulk",
        description="Async callbackUrl (default: a no-op URL that never resolves; results are polled).",
    )
    callback_listen: str | None = Field(
        None, description="Receive callbacks on HOST:PORT (callback_url must reach it)."
    )
    resubmit_expired: bool = Field(
        False,
        description="Async: submit again contacts whose paid job cannot be followed (the API "
        "forgot its handle, or its line in OUT.jobs.ndjson was lost).",
    )
    poll_rate: float | None = Field(
        None, description="Async: status polls per second at most (default: found from 429s)."
    )
    poll_concurrency: int = Field(16, description="Async: status polls in flight at most.")
    poll_interval_min: float = Field(2.0, description="Async: shortest wait between two polls, s.")
    poll_interval_max: float = Field(60.0, description="Async: longest wait between two polls, s.")
    max_pending: int = Field(10_000, description="Async: submitted jobs awaiting results at most.")
    expire_after: float = Field(
        600.0,
        ge=0,
        description="Async: a job whose handle the status endpoint answers 404 for is expired "
        "only once it is this old (and older than the median job), after 3 such polls, s.",
    )
    job_timeout: float | None = Field(
        None,
        description="Async: stop polling a job pending this long, s (the next run polls it) "
        "[default: derived: 3 x the slowest of the latest 32 jobs, at least job_timeout_floor].",
    )
    job_timeout_floor: float = Field(
        600.0,
        description="Async: the derived job_timeout is never shorter than this, s (a slow "
        "start is not given up on).",
    )
    detach: bool = Field(
        False,
        description="Async: submit every contact, record every handle, exit 0 without "
        "polling; `octave-bulk collect OUT` polls them later.",
    )

    fail_on: Annotated[tuple[FailOn, ...], NoDecode] = Field(
        (FailOn.FAILED,),
        description="What makes a finished run exit 1: failed (contacts failed tonight), "
        "rejects, skipped-failed (failed in an earlier run), none; comma-separated.",
    )
    fail_on_rejects: bool = Field(
        False, description="Same as adding 'rejects' to --fail-on (kept for old configs)."
    )

    # Content
    output_format: OutputFormat = Field(OutputFormat.TEXT, description="Format of the emails.")
    lang: str | None = Field(None, description="Language when the row has none (e.g. en, es).")
    context: str | None = Field(None, description="runtimeContext.all for every contact.")
    instructions: str | None = Field(None, description="runtimeInstructions.all for every contact.")
    context_templates: StepMapping = Field(
        default_factory=dict, description="Step key -> text with {Column} placeholders."
    )
    instruction_templates: StepMapping = Field(
        default_factory=dict, description="Step key -> text with {Column} placeholders."
    )
    playbook_selection_context: str | None = Field(None, description="Sent as is.")
    include_full_annotation: bool | None = Field(None, description="Sent as is.")

    # Input mapping
    profile: Literal[
        "auto", "hubspot", "salesforce", "apollo", "linkedin", "pipedrive", "zoho", "generic"
    ] = Field("auto", description="Input column profile.")
    map: tuple[str, ...] = Field(
        (), description='Column override "Source Column=field" (repeatable).'
    )
    input_format: Literal["auto", "csv", "ndjson"] = Field(
        "auto", description="Input format (auto: by extension)."
    )
    encoding: str | None = Field(None, description="Input encoding [default: detected].")
    delimiter: str | None = Field(
        None, description="CSV delimiter [default: sniffed among , ; tab |]."
    )
    skip_lines: int | None = Field(None, description="Lines to skip before the CSV header.")
    max_field_bytes: int = Field(
        64 * 1024, description="Largest cell; a bigger one rejects its row."
    )

    # Safety
    max_calls: int | None = Field(
        None, description="Stop after this many paid calls, retries included (exit 5)."
    )
    budget: str | None = Field(
        None,
        description="Paid calls per rolling period across runs, e.g. 5000/day (exit 5).",
    )
    limit: int | None = Field(None, description="Only the first N contacts.")
    dry_run: bool = Field(
        False, description="Validate and show what would be sent; no calls, no files."
    )
    retry_failed: bool = Field(
        False, description="Also retry contacts that failed for good before."
    )
    key: str | None = Field(
        None,
        description="Field that identifies a person [default: email, else LinkedIn, else CRM id].",
    )
    resend_guard: float = Field(
        0.2,
        ge=0,
        le=1,
        description="Refuse a run that would pay again more than this share of people done.",
    )
    allow_resend: bool = Field(
        False, description="Pay again the people whose content changed, however many."
    )
    allow_overdraft: bool = Field(
        False,
        description="Start even when the contacts to send cost more credits than remain.",
    )

    # Output and durability
    progress: bool | None = Field(
        None, description="Progress bar on stderr [default: when stderr is a terminal]."
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="Log events as text or JSON lines."
    )
    log_file: Path | None = Field(None, description="Also write log events to this file.")
    ledger: Path | None = Field(
        None, description="Run history database [default: OUT.ledger.sqlite]; may be shared."
    )
    ledger_url: SecretStr | None = Field(
        None,
        exclude=True,
        description="The shared ledger on PostgreSQL: set by a --ledger postgresql://... value.",
    )
    job: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="The job's name on a shared ledger (--ledger postgresql://...) "
        "[default: the agent].",
    )
    ledger_index: bool = Field(
        True,
        description="Index every person and call in the ledger (off: the run history only, "
        "and every start scans the results file).",
    )
    ledger_timeout: float = Field(
        10.0, gt=0, description="Wait this long for another process writing the ledger, s."
    )
    metrics_textfile: Path | None = Field(
        None, description="Write Prometheus textfile metrics here at the end of the run."
    )
    notify: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Apprise URLs the end of each run is posted to (slack://, json://host/path"
        "...; a list in TOML, space-separated in OCTAVE_NOTIFY; their tokens are secrets).",
    )
    notify_on: Literal["always", "failure"] = Field(
        "always", description="When to notify: always, or failure (an exit other than 0)."
    )
    series: bool = Field(
        True,
        description="Keep the run's counters once a second in the ledger, for octave-bulk report.",
    )
    heartbeat_interval: float = Field(30.0, description="Seconds between heartbeat log lines.")
    fsync_interval: float = Field(1.0, description="Group commit: fsync at least this often, s.")
    fsync_batch: int = Field(256, description="Group commit: fsync after this many records.")
