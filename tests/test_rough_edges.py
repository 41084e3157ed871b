"""Rough edges a new user hit: each test reproduces one and checks what the user now sees."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from click.testing import CliRunner

from octave_bulk.cli.main import cli
from tests.conftest import TEST_KEY

ROOT = Path(__file__).parent.parent


def test_doctor_checks_every_path_the_config_names(make_sim: Any, tmp_path: Path) -> None:
    """The nightly example names a log folder a fresh machine lacks: doctor says so, exit 2."""
    sim = make_sim(api_key=TEST_KEY)
    example = (ROOT / "configs" / "nightly.example.toml").read_text(encoding="utf-8")
    missing = tmp_path / "no-such-folder"
    config = tmp_path / "nightly.toml"
    config.write_text(
        example.replace("/var/log/octave-bulk", str(missing)).replace(
            "/var/lib/node_exporter/textfile_collector", str(tmp_path)
        ),
        encoding="utf-8",
    )
    runner = CliRunner()
    env = {"OCTAVE_API_KEY": TEST_KEY}
    args = ["doctor", "--config", str(config), "--base-url", sim.url, "--agent", "ca_test"]
    result = runner.invoke(cli, args, env=env)
    assert result.exit_code == 2, result.output
    assert f"log_file {missing / 'nightly.log'}: its folder {missing} does not exist" in (
        result.output
    )
    assert "config: ok" not in result.output and "metrics_textfile" not in result.output
    assert not missing.exists()  # doctor creates nothing
    missing.mkdir()
    result = runner.invoke(cli, args, env=env)
    assert "config: ok" in result.output, result.output
