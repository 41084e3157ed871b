"""Seven nights on the shared ledger, each on another host: a fresh CRM export each night with
new, edited and deleted people, run with ``--ledger postgresql://…`` into a new local output
(as a nightly job scheduled on whichever host is up). The database alone knows what was done:
each night pays exactly its new and edited people, nothing is paid twice across nights, in
sync or async mode, and each night's output holds exactly that night's people."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from octave_bulk.cli import cli
from tests.pgserver import PgServer
from tests.test_nightly_soak import Crm

ASYNC_NIGHTS = {2, 5}  # submitted and polled: a submit is a paid call as a sync call is


def _ledger_counts(db_url: str) -> Counter[str]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT state, count(*), sum(paid_calls), sum(outcome_unknown) FROM ob_contact"
            " GROUP BY state"
        ).fetchall()
    counts: Counter[str] = Counter()
    for state, number, paid, unknown in rows:
        counts[state] += number
        counts["paid"] += paid
        counts["unknown"] += unknown
    return counts


@pytest.mark.slow
def test_seven_nights_on_seven_hosts_pay_only_what_changed(
    make_sim: Any, tmp_path: Path, db_url: str, pg: PgServer
) -> None:
    sim = make_sim()
    crm = Crm(300)
    export = tmp_path / "export.csv"
    paid_before, contacts = 0, 0
    for night in range(7):
        added, edited = crm.night(0.05, 0.03, 0.02) if night else (set(crm.people), set())
        crm.write(export)
        out = tmp_path / f"host-{night}" / "nightly.ndjson"  # another host's local output
        out.parent.mkdir()  # (the shared rate is 10/s when none is given)
        run = ["run", str(export), "-o", str(out), "--agent", "ca_1", "--base-url", sim.url,
               "--rate", "200/s", "--no-progress"]  # fmt: skip
        if night in ASYNC_NIGHTS:
            run += ["--mode", "async", "--config", str(_fast_polls(tmp_path))]
        env = {"OCTAVE_API_KEY": "k", "OCTAVE_LEDGER": db_url}
        result = CliRunner().invoke(cli, run, env=env)
        assert result.exit_code == 0, f"night {night}: {result.output}"
        calls = sim.stats()["calls"]
        paid = sum(calls.values())
        assert paid - paid_before == len(added) + len(edited), f"night {night}"
        assert set(calls.values()) == {1}, f"night {night}: a contact paid twice"
        paid_before = paid
        contacts += len(added) + len(edited)
        ledger = _ledger_counts(db_url)
        assert ledger == Counter(done=contacts, paid=contacts), f"night {night}: {ledger}"
        # The host's output holds tonight's people only: the rest was done on other hosts.
        tonight = tmp_path / f"night{night}.csv"
        exported = CliRunner().invoke(cli, ["export", str(out), "-o", str(tonight)])
        assert exported.exit_code == 0, exported.output
        with open(tonight, newline="", encoding="utf-8") as handle:
            emails = [row["email"] for row in csv.DictReader(handle)]
        assert sorted(emails) == sorted(f"p{n}@example.com" for n in added | edited)
    assert sim.stats()["totals"].get("async_submits", 0) > 0  # the async nights submitted
    texts = [path.read_text(errors="replace") for path in tmp_path.rglob("*") if path.is_file()]
    assert all(pg.password not in text for text in texts)


def _fast_polls(folder: Path) -> Path:
    config = folder / "polls.toml"
    config.write_text("poll_interval_min = 0.05\npoll_interval_max = 0.5\n")
    return config
