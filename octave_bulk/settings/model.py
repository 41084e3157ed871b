"""Run settings: one frozen object, built once at the edge from flags, environment and TOML.

Precedence: explicit arguments (CLI flags) > environment (``OCTAVE_<NAME>``) > the TOML file
given with ``--config`` > built-in defaults. The API key comes only from ``OCTAVE_API_KEY`` or
a key file, never from a flag or the config file, and is held as a ``SecretStr``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from octave_bulk.agents.envelope import StepMapping
from octave_bulk.agents.fields import OutputFormat
from octave_bulk.errors import ConfigError, FailOn
from octave_bulk.settings.ids import target_id_problem
from octave_bulk.settings.toml_file import CONFIG_FILE, TomlFile, value_origin

__all__ = ["DEFAULT_BASE_URL", "Settings", "parse_budget", "parse_rate"]

DEFAULT_BASE_URL = "https://app.octavehq.com"
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*(s|sec|second|m|min|minute|h|hour))?\s*$")


_PERIODS = {"hour": 3600.0, "h": 3600.0, "day": 86400.0, "d": 86400.0, "week": 604800.0}


def parse_budget(value: str) -> tuple[int, float]:
    """``CALLS/PERIOD`` (``5000/day``; periods hour, day, week) -> (calls, seconds)."""
    calls, _, period = value.strip().partition("/")
    seconds = _PERIODS.get(period.strip().lower())
    if not calls.strip().isdigit() or int(calls) < 1 or seconds is None:
        msg = f"bad budget {value!r}: use CALLS/PERIOD with a period of hour, day or week"
        raise ValueError(msg)
    return int(calls), seconds


def parse_rate(value: str | float | None) -> float | None:
    """``2/s``, ``90/min``, ``3600/h`` or a bare number (per second) -> per second; none -> None."""
    if value is None or (isinstance(value, str) and value.strip().lower() in {"none", "off", ""}):
        return None
    if isinstance(value, int | float):
        per_second = float(value)
    else:
        match = _RATE.match(value.lower())
        if not match:
            msg = f"bad rate {value!r}: use e.g. 2/s, 90/min or none"
            raise ValueError(msg)
        unit = (match.group(2) or "s")[0]
        per_second = float(match.group(1)) / {"s": 1.0, "m": 60.0, "h": 3600.0}[unit]
    if per_second <= 0:
        msg = "rate must be > 0 (or none)"
        raise ValueError(msg)
    return per_second


class Settings(BaseSettings):
    """Everything a run needs. Build it with :meth:`load` (or directly, in library code)."""

    model_config = SettingsConfigDict(
        env_prefix="OCTAVE_", extra="forbid", frozen=True, validate_default=True
    )

    # Target and credentials
    base_url: str = Field(DEFAULT_BASE_URL, description="API base URL.")
    api_key: SecretStr | None = Field(
        None, description="From OCTAVE_API_KEY or a key file only, never a flag or the file."
    )
    agent_type: Literal[
        "sequence",
        "enrich-person",
        "enrich-company",
        "qualify-person",
        "qualify-company",
        "content",
        "call-prep",
        "prospector",
    ] = Field("sequence", description="Which Octave agent --agent is.")
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

    @field_validator("notify", mode="before")
    @classmethod
    def _notify(cls, value: Any) -> tuple[str, ...]:
        """A list, or one string of space-separated URLs (the environment)."""
        items = value.split() if isinstance(value, str) else list(value or ())
        urls = tuple(str(item).strip() for item in items if str(item).strip())
        from octave_bulk.observe.notify import check_notify

        check_notify(urls)
        return urls

    @field_validator("fail_on", mode="before")
    @classmethod
    def _fail_on(cls, value: Any) -> tuple[FailOn, ...]:
        """``"failed,rejects"``, a list, or repeated flags; ``none`` alone means nothing."""
        items = [value] if isinstance(value, str) else list(value or ())
        names = [p.strip().lower() for i in items for p in str(i).split(",") if p.strip()]
        known = {m.value for m in FailOn}
        for name in names:
            if name not in known:
                raise ValueError(f"{name!r} is not one of {', '.join(sorted(known))}")
        if FailOn.NONE in names and len(set(names)) > 1:
            raise ValueError("'none' cannot be combined with other conditions")
        return tuple(dict.fromkeys(FailOn(n) for n in names if n != FailOn.NONE))

    @property
    def exit_conditions(self) -> frozenset[FailOn]:
        """What fails a finished run: ``fail_on``, plus ``rejects`` with ``fail_on_rejects``."""
        extra = {FailOn.REJECTS} if self.fail_on_rejects else set()
        return frozenset(self.fail_on) | extra

    @field_validator("key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        from octave_bulk.input.records import CANONICAL_FIELDS

        if value is not None and value not in CANONICAL_FIELDS:
            msg = f"unknown key field {value!r}; one of {', '.join(CANONICAL_FIELDS)}"
            raise ValueError(msg)
        return value

    @field_validator("agent_oid", "experiment_oid")
    @classmethod
    def _target_id(cls, value: str | None, info: ValidationInfo) -> str | None:
        prefix = "ca_" if info.field_name == "agent_oid" else "ae_"
        problem = None if value is None else target_id_problem(value, prefix)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("api_key")
    @classmethod
    def _api_key(cls, value: SecretStr | None) -> SecretStr | None:
        # Checked before any call: a key that cannot be an HTTP header value (a newline, a
        # NUL, a space, non-ASCII) failed every call as a "protocol" error, each one retried
        # and counted. The message never repeats the key.
        if value is None:
            return value
        key = value.get_secret_value()
        if not key.strip():
            raise ValueError(
                "the key is empty (OCTAVE_API_KEY= is set to nothing): set it to your key, "
                "or unset it and use --api-key-file"
            )
        bad = next((c for c in key if not "\x21" <= c <= "\x7e"), None)
        if bad is not None:
            where = key.index(bad) + 1
            what = {"\n": "a newline", "\r": "a carriage return", "\0": "a NUL", " ": "a space",
                    "\t": "a tab"}.get(bad, "a control character" if bad.isascii()
                                       else "a non-ASCII character")  # fmt: skip
            raise ValueError(
                f"malformed API key: {what} at character {where} of {len(key)} (a key is "
                "printable ASCII without spaces; check OCTAVE_API_KEY or the key file)"
            )
        from octave_bulk.redact import register_secret

        register_secret(key)
        return value

    @field_validator("search_context")
    @classmethod
    def _json_object(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            parsed = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"not JSON ({exc})") from None
        if not isinstance(parsed, dict):
            raise ValueError('must be a JSON object, e.g. {"fuzzyTitles": ["VP Sales"]}')
        return value

    @field_validator("budget")
    @classmethod
    def _budget(cls, value: str | None) -> str | None:
        if value is not None:
            parse_budget(value)
        return value

    @model_validator(mode="before")
    @classmethod
    def _shared_ledger(cls, data: Any) -> Any:
        """A ``ledger`` given as a postgresql:// URL names the shared ledger, not a file."""
        ledger = data.get("ledger") if isinstance(data, dict) else None
        if isinstance(ledger, str) and ledger.startswith(("postgresql://", "postgres://")):
            data = {**data, "ledger": None, "ledger_url": ledger}
        return data

    @field_validator("rate", "poll_rate", mode="before")
    @classmethod
    def _rate(cls, value: Any) -> float | None:
        return parse_rate(value)

    @field_validator(
        "concurrency",
        "max_attempts",
        "fsync_batch",
        "breaker_threshold",
        "max_calls",
        "limit",
        "max_field_bytes",
        "poll_concurrency",
        "max_pending",
        "max_response_bytes",
    )
    @classmethod
    def _positive_int(cls, value: int | None) -> int | None:
        if value is not None and value <= 0:
            raise ValueError("must be > 0")
        return value

    @field_validator(
        "timeout",
        "connect_timeout",
        "call_deadline",
        "refusal_patience",
        "backoff_initial",
        "backoff_max",
        "drain_timeout",
        "fsync_interval",
        "heartbeat_interval",
        "poll_interval_min",
        "poll_interval_max",
        "job_timeout",
        "job_timeout_floor",
    )
    @classmethod
    def _positive_float(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError("must be > 0")
        return value

    @field_validator("where")
    @classmethod
    def _one_expression(cls, value: str | None) -> str | None:
        if value:  # empty: no filter
            from octave_bulk.input.chain import where_tree

            where_tree(value)  # an assignment or a statement: refused before anything is sent
        return value

    @field_validator("callback_listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is not None:
            host, _, port = value.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError("must be HOST:PORT, e.g. 0.0.0.0:8787")
        return value

    @field_validator("callback_url")
    @classmethod
    def _callback_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with https:// (Octave requires HTTPS) or http://")
        return value

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _one_target(self) -> Settings:
        if self.agent_oid and self.experiment_oid:
            raise ValueError("set either an agent or an experiment, not both")
        if self.callback_listen and self.mode != "async":
            raise ValueError(
                "callback_listen receives async jobs' callbacks: add --mode async "
                '(mode = "async"), or drop it'
            )
        if self.detach and self.mode != "async":
            raise ValueError(
                "detach leaves submitted jobs to `octave-bulk collect`: add --mode async "
                '(mode = "async"), or drop it'
            )
        if self.detach and self.callback_listen:
            raise ValueError(
                "detach exits once the jobs are submitted: no process would be listening for "
                "their callbacks; drop callback_listen (collect polls them)"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlFile(settings_cls))

    @classmethod
    def load(
        cls,
        config_file: str | Path | None = None,
        *,
        api_key_file: str | Path | None = None,
        **overrides: Any,
    ) -> Settings:
        """Build settings from flags (``overrides``; None means "not given"), env and a file.

        Raises:
            ConfigError: a bad value, an unknown key in the file, or an unreadable key file.
        """
        given = {k: v for k, v in overrides.items() if v is not None}
        # A target given as a flag replaces a target from the environment or the file.
        for chosen, other in (("agent_oid", "experiment_oid"), ("experiment_oid", "agent_oid")):
            if chosen in given and other not in given:
                given[other] = None
        if api_key_file is not None:
            try:
                key = Path(api_key_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(
                    f"{api_key_file}: cannot read the key file: {exc.strerror}"
                ) from None
            if not key:
                raise ConfigError(f"{api_key_file}: the key file is empty")
            given["api_key"] = SecretStr(key)
        token = CONFIG_FILE.set(Path(config_file) if config_file else None)
        try:
            return cls(**given)
        except ValidationError as exc:
            lines = [
                f"{'.'.join(str(p) for p in err['loc']) or 'settings'}"
                f"{value_origin(err['loc'], given, config_file)}: "
                f"{str(err['msg']).removeprefix('Value error, ')}"
                for err in exc.errors(include_url=False, include_input=False)
            ]
            raise ConfigError("invalid settings:\n  " + "\n  ".join(lines)) from None
        finally:
            CONFIG_FILE.reset(token)

    def redacted(self) -> dict[str, Any]:
        """Settings as JSON-ready data with the key reduced to its last 4 characters."""
        data = self.model_dump(mode="json", exclude={"api_key", "notify"})
        data["api_key"] = self.key_fingerprint()
        data["notify"] = f"{len(self.notify)} URL(s), not shown" if self.notify else []
        return data

    def key_fingerprint(self) -> str | None:
        """``…abcd``: enough to tell keys apart, never enough to use one."""
        if self.api_key is None:
            return None
        key = self.api_key.get_secret_value()
        return "…" + key[-4:] if len(key) >= 12 else "(a key of under 12 characters)"
