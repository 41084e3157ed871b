"""Settings: precedence (flags > env > file > defaults), validation messages, the secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from octave_bulk.errors import ConfigError
from octave_bulk.settings.model import Settings, parse_rate


def test_defaults() -> None:
    settings = Settings.load()
    assert settings.base_url == "https://app.octavehq.com"
    assert settings.rate is None and settings.concurrency == 32 and settings.timeout == 180.0
    assert settings.api_key is None


def test_precedence_flags_over_env_over_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "c.toml"
    config.write_text('concurrency = 3\nrate = "60/min"\nlang = "de"\nagent_oid = "ca_file"\n')
    assert Settings.load(config).concurrency == 3
    assert Settings.load(config).rate == 1.0
    monkeypatch.setenv("OCTAVE_CONCURRENCY", "5")
    monkeypatch.setenv("OCTAVE_AGENT_OID", "ca_env")
    from_env = Settings.load(config)
    assert (from_env.concurrency, from_env.agent_oid, from_env.lang) == (5, "ca_env", "de")
    from_flags = Settings.load(config, concurrency=7, agent_oid=None)
    assert (from_flags.concurrency, from_flags.agent_oid) == (7, "ca_env")


def test_unknown_or_secret_keys_in_the_file_are_errors(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("concurency = 3\n")
    with pytest.raises(ConfigError, match="unknown setting 'concurency'"):
        Settings.load(config)
    config.write_text('api_key = "oct_live"\n')
    with pytest.raises(ConfigError, match="api_key does not belong in a config file"):
        Settings.load(config)
    config.write_text("concurrency = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Settings.load(config)
    with pytest.raises(ConfigError, match="cannot read the config file"):
        Settings.load(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"concurrency": 0}, "concurrency: must be > 0"),
        ({"rate": "fast"}, "rate: bad rate 'fast'"),
        ({"timeout": -1}, "timeout: must be > 0"),
        ({"base_url": "ftp://x"}, "base_url: must start with http"),
        ({"agent_oid": "ca_1", "experiment_oid": "ae_1"}, "either an agent or an experiment"),
        ({"output_format": "pdf"}, "output_format"),
        ({"context_templates": {"intro": "x"}}, "key 'intro' is not allowed"),
    ],
)
def test_bad_values_name_the_setting(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.load(**overrides)


def test_key_from_env_or_file_is_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCTAVE_API_KEY", "oct_from_env_1234")
    settings = Settings.load()
    assert settings.api_key is not None
    assert "oct_from_env" not in repr(settings) and "oct_from_env" not in str(settings.redacted())
    assert settings.key_fingerprint() == "…1234"
    key_file = tmp_path / "key"
    key_file.write_text("oct_from_file_9876\n")
    from_file = Settings.load(api_key_file=key_file)
    assert (
        from_file.api_key is not None
        and from_file.api_key.get_secret_value() == "oct_from_file_9876"
    )
    key_file.write_text("")
    with pytest.raises(ConfigError, match="key file is empty"):
        Settings.load(api_key_file=key_file)


def test_parse_rate() -> None:
    assert parse_rate("2/s") == 2.0
    assert parse_rate("90/min") == 1.5
    assert parse_rate("3600/h") == 1.0
    assert parse_rate("5") == 5.0
    assert parse_rate("none") is None
    with pytest.raises(ValueError, match="rate must be > 0"):
        parse_rate("0/s")


def test_a_target_flag_replaces_the_other_target_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCTAVE_AGENT_OID", "ca_from_env")
    settings = Settings.load(experiment_oid="ae_from_flag")
    assert (settings.agent_oid, settings.experiment_oid) == (None, "ae_from_flag")
