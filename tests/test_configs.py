"""configs/: the documented defaults equal the built-in ones; the examples load and work."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from octave_bulk.cli import cli
from octave_bulk.errors import ConfigError
from octave_bulk.settings.model import Settings

CONFIGS = Path(__file__).parent.parent / "configs"


def test_default_toml_equals_the_built_in_defaults() -> None:
    text = (CONFIGS / "default.toml").read_text(encoding="utf-8")
    data = tomllib.loads(text)
    from_file = Settings.load(CONFIGS / "default.toml")
    built_in = Settings.load()
    assert from_file == built_in
    assert data, "default.toml sets nothing"
    mentioned = set(data) | set(re.findall(r"^# (\w+) =", text, flags=re.MULTILINE))
    assert mentioned == set(Settings.model_fields) - {"api_key"}


def test_nightly_example_loads_and_keeps_the_key_out(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (CONFIGS / "nightly.example.toml").read_text(encoding="utf-8")
    assert "api_key =" not in text
    monkeypatch.setenv("OCTAVE_API_KEY", "oct_from_the_environment")
    with pytest.raises(ConfigError, match="'ca_REPLACE_ME' is a placeholder"):
        Settings.load(CONFIGS / "nightly.example.toml")  # copied but not edited
    settings = Settings.load(CONFIGS / "nightly.example.toml", agent_oid="ca_nightly")
    # No pinned rate or window: the run finds the limits and remembers them (issue 24).
    assert {"rate", "concurrency"}.isdisjoint(settings.model_fields_set)
    assert settings.log_format == "json"
    assert settings.api_key is not None


def _write_export(path: Path, columns: list[str], row: list[str]) -> None:
    path.write_text(",".join(columns) + "\n" + ",".join(row) + "\n", encoding="utf-8")


def test_template_example_fills_placeholders_per_row(tmp_path: Path) -> None:
    columns = [
        "Record ID",
        "First Name",
        "Email",
        "Job Title",
        "Company Name",
        "Recent Activity",
        "Team Size",
        "Event Attended",
    ]
    row = ["1", "Ana", "ana@acme.io", "CRO", "Acme", "hired 3 SDRs", "40", "Attended the keynote"]
    _write_export(tmp_path / "c.csv", columns, row)
    out = tmp_path / "o.ndjson"
    config = str(CONFIGS / "hubspot-event-followup.example.toml")
    result = CliRunner().invoke(
        cli,
        ["run", str(tmp_path / "c.csv"), "-o", str(out), "--config", config, "--dry-run",
         "--show-request", "--agent", "ca_event"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    body: dict[str, Any] = json.loads(result.output)["example_request"]
    context = body["runtimeContext"]
    assert "Ana is CRO at Acme. Recent activity: hired 3 SDRs" in context["all"]
    assert "We met at Partner Signal Live." in context["all"]
    assert context["2"] == "Their team size: 40."
    assert context["1"] == "Attended the keynote"
    assert body["runtimeInstructions"]["1"] == "Open with the event, not a generic greeting."


def test_template_naming_a_missing_column_is_a_config_error(tmp_path: Path) -> None:
    _write_export(
        tmp_path / "c.csv",
        ["First Name", "Email", "Job Title", "Company Name", "Event Attended"],
        ["Ana", "a@acme.io", "CRO", "Acme", "keynote"],
    )
    config = str(CONFIGS / "hubspot-event-followup.example.toml")
    result = CliRunner().invoke(
        cli, ["run", str(tmp_path / "c.csv"), "-o", str(tmp_path / "o.ndjson"), "--config", config,
              "--agent", "ca_event"],
        env={"OCTAVE_API_KEY": "oct_test_key_for_config_tests"},
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "Recent Activity" in result.output
    assert not (tmp_path / "o.ndjson").exists()


def test_unknown_key_names_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("concurency = 4\n")
    result = CliRunner().invoke(cli, ["run", "x.csv", "-o", "o.ndjson", "--config", str(bad)])
    assert result.exit_code == 2 and "unknown setting 'concurency'" in result.output
    with pytest.raises(ConfigError):
        Settings.load(bad)
