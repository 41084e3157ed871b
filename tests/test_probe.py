"""``probe`` against the simulator: it finds the configured limits, keeps the results and
stores the limits, so that the next ``run`` starts at them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from octave_bulk.cli import cli
from octave_bulk.simulator import parse_latency
from tests.conftest import TEST_KEY
from tests.helpers import read_lines, side, simulator_process, write_contacts


def probe(url: str, tmp_path: Path, calls: int, *extra: str) -> tuple[int, str, dict[str, Any]]:
    out = tmp_path / "out.ndjson"
    args = ["probe", str(tmp_path / "in.csv"), "-o", str(out), "--max-calls", str(calls),
            "--agent", "ca_1", "--base-url", url, *extra]  # fmt: skip
    result = CliRunner().invoke(cli, args, env={"OCTAVE_API_KEY": TEST_KEY})
    summary = json.loads(side(out, ".summary.json").read_text())
    return result.exit_code, result.output, summary


@pytest.mark.slow
def test_probe_finds_a_rate_limit_within_10_percent(tmp_path: Path) -> None:
    # The simulator in a process of its own: in the test's, on the loaded CI machine, its
    # bucket of burst 1 refused calls its own scheduling bunched (17.4-17.7/s found, twice).
    write_contacts(tmp_path / "in.csv", 1000)
    with simulator_process("--latency", "50ms:0.3", "--rate-limit", "20/s:1") as url:
        code, output, summary = probe(url, tmp_path, 400)
    assert code == 0, output
    assert summary["limits"]["rate"] == pytest.approx(20.0, rel=0.10)
    assert "flags: --rate" in output and "rate limit: 429s began at" in output
    assert summary["paid_calls"] <= 400
    assert len(read_lines(tmp_path / "out.ndjson")) == summary["counts"]["succeeded"] > 0
    remembered = json.loads(side(tmp_path / "out.ndjson", ".limits.json").read_text())
    (entry,) = remembered.values()
    assert entry["rate"] == summary["limits"]["rate"]


@pytest.mark.slow
def test_probe_finds_an_in_flight_cap_and_the_next_run_starts_there(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim(latency=parse_latency("200ms:0.2"), max_inflight=8)
    write_contacts(tmp_path / "in.csv", 400)
    code, output, summary = probe(sim.url, tmp_path, 150, "--concurrency", "64")
    assert code == 0, output
    # Our in-flight count includes answers still in transit, so under load a window one
    # above the server's cap can hold; the level at which 429s began is exact.
    assert summary["limits"]["window"] in (8, 9)
    assert summary["limits"]["concurrency_limited_at"] == 9
    refused_before = sim.stats()["totals"]["rate_limited"]
    args = ["run", str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.ndjson"),
            "--agent", "ca_1", "--base-url", sim.url]  # fmt: skip
    result = CliRunner().invoke(cli, args, env={"OCTAVE_API_KEY": TEST_KEY})
    assert result.exit_code == 0, result.output
    run_summary = json.loads(side(tmp_path / "out.ndjson", ".summary.json").read_text())
    assert run_summary["limits"]["started_from_memory"] is True
    # Started at the window that held: no search, only a rare probe one call past it (two
    # 429s each) while the run goes.
    assert run_summary["limits"]["window"] in (8, 9)
    assert sim.stats()["totals"]["rate_limited"] - refused_before <= 6
