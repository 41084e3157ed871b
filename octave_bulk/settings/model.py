"""Run settings: one frozen object, built once at the edge from flags, environment and TOML.

Precedence: explicit arguments (CLI flags) > environment (``OCTAVE_<NAME>``) > the TOML file
given with ``--config`` > built-in defaults. The API key comes only from ``OCTAVE_API_KEY`` or
a key file, never from a flag or the config file, and is held as a ``SecretStr``. The fields
are declared in :mod:`octave_bulk.settings.fields`; this module checks them and loads them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from octave_bulk.errors import ConfigError, FailOn
from octave_bulk.settings.fields import SettingsFields
from octave_bulk.settings.ids import target_id_problem
from octave_bulk.settings.toml_file import CONFIG_FILE, TomlFile, value_origin
from octave_bulk.settings.values import DEFAULT_BASE_URL, parse_budget, parse_rate

__all__ = ["DEFAULT_BASE_URL", "Settings", "parse_budget", "parse_rate"]


class Settings(SettingsFields):
    """Everything a run needs. Build it with :meth:`load` (or directly, in library code)."""

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
