"""Seven nights on one output, as a cron job runs them: a fresh CRM export each night with new,
edited and deleted people, a change of the CRM view, one person under two CRM records. Each
night pays exactly its new and edited people, and ``export --new`` hands over exactly them;
with a kill -9 in every night, at most the calls in flight at the kill are paid again."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from octave_bulk.cli import cli
from octave_bulk.simulator import parse_faults, parse_latency
from octave_bulk.state.inflight import InflightSlots
from tests.helpers import Run, side

SOAK = os.environ.get("OCTAVE_BULK_SOAK") == "1"

HEADER = ["Record ID", "Email", "First Name", "Last Name", "Company Name", "Job Title"]


class Crm:
    """A HubSpot-like export: person number -> (record id, title); the view may gain a column."""

    def __init__(self, people: int, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.people = {n: (f"{100000 + n}", "VP Sales") for n in range(people)}
        self.next = people
        self.extra_column = False
        self.second_title = "VP Sales"  # person 3's second CRM record's title
        self.shuffled = False  # rows in another order than the record ids'

    def night(self, new: float, edited: float, deleted: float) -> tuple[set[int], set[int]]:
        """Tomorrow's export: returns (new people, edited people)."""
        existing = sorted(self.people)
        for n in self.rng.sample(existing, int(deleted * len(existing))):
            del self.people[n]
        changed = set(self.rng.sample(sorted(self.people), int(edited * len(self.people))))
        for n in changed:
            record, title = self.people[n]
            self.people[n] = (record, title + " II")
        added = set(range(self.next, self.next + int(new * len(existing))))
        for n in added:
            self.people[n] = (f"{100000 + n}", "Head of Growth")
        self.next += len(added)
        return added, changed

    def write(self, path: Path) -> None:
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(HEADER + (["Lifecycle Stage"] if self.extra_column else []))
            rows = [
                [record, f"p{n}@example.com", f"First{n}", "Doe", "Acme", title]
                for n, (record, title) in sorted(self.people.items())
            ]
            if 3 in self.people:  # the same person under a second CRM record
                rows.append(
                    ["999999", "P3@example.com", "First3", "Doe", "Acme", self.second_title]
                )
            if self.shuffled:  # another order, the second record of person 3 first
                random.Random(len(rows)).shuffle(rows)
                rows.sort(key=lambda row: row[0] != "999999")
            for row in rows:
                writer.writerow(row + (["lead"] if self.extra_column else []))


@pytest.mark.slow
def test_seven_nights_pay_and_export_only_what_changed(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim()
    crm = Crm(300)
    export, out = tmp_path / "export.csv", tmp_path / "out.ndjson"
    run = ["run", str(export), "-o", str(out), "--agent", "ca_1", "--base-url", sim.url,
           "--rate", "none", "--no-progress"]  # fmt: skip
    paid_before = 0
    for night in range(7):
        added, edited = crm.night(0.05, 0.03, 0.02) if night else (set(crm.people), set())
        if night == 4:
            crm.extra_column = True  # the view changed: a column nobody maps
        crm.write(export)
        result = CliRunner().invoke(cli, run, env={"OCTAVE_API_KEY": "k"})
        assert result.exit_code == 0, result.output  # the duplicate row is a reject, not a failure
        paid = sim.stats()["totals"]["calls"]
        assert paid - paid_before == len(added) + len(edited), f"night {night}"
        paid_before = paid
        tonight = tmp_path / f"night{night}.csv"
        exported = CliRunner().invoke(cli, ["export", str(out), "-o", str(tonight), "--new"])
        assert exported.exit_code == 0, exported.output
        with open(tonight, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        emails = [row["email"] for row in rows]
        assert sorted(emails) == sorted(f"p{n}@example.com" for n in added | edited)
        for row in rows:  # a write-back reaches both CRM records of person 3
            expected = "999999" if row["email"] == "p3@example.com" else ""
            assert row["other_crm_ids"] == expected, row["email"]
    # Everyone's latest emails, without the people deleted from the CRM since.
    everyone = tmp_path / "everyone.csv"
    args = ["export", str(out), "-o", str(everyone), "--exclude-missing-from", str(export)]
    assert CliRunner().invoke(cli, args).exit_code == 0
    with open(everyone, newline="", encoding="utf-8") as handle:
        emails = [row["email"] for row in csv.DictReader(handle)]
    assert sorted(emails) == sorted(f"p{n}@example.com" for n in crm.people)


@pytest.mark.slow
def test_nights_killed_at_random_moments_keep_ledger_and_files_agreeing(
    make_sim: Any, tmp_path: Path
) -> None:
    """Each night is killed (-9) once mid-run and run again, as an orchestrator retries: the
    calls paid stay within new + edited + what was in flight at the kill, each night's
    ``export --new`` holds that night's people once, and the ledger agrees with the files."""
    # The long form is the issue's: seven nights of a 5,000-row export, 5 % new, 3 % edited.
    nights, people, new, edited_share = (7, 5000, 0.05, 0.03) if SOAK else (4, 400, 0.3, 0.1)
    sim = make_sim(seed=3, latency=parse_latency("40ms:0.5"))
    crm = Crm(people, seed=11)
    export, out = tmp_path / "export.csv", tmp_path / "out.ndjson"
    rng = random.Random(5)
    paid_before = 0
    for night in range(nights):
        added, edited = crm.night(new, edited_share, 0.02) if night else (set(crm.people), set())
        crm.extra_column = night >= 2  # the view changes on the third night
        crm.write(export)
        killed = Run(sim.url, export, out, "--concurrency", "8")
        time.sleep(rng.uniform(0.8, 1.6))  # the run started, and paid some calls
        killed.kill()
        done = {line["requestId"] for line in _complete_lines(out)}
        in_flight = set(InflightSlots.leftovers(side(out, ".inflight"))) - done
        print(f"night {night}: killed with {len(done)} done, {len(in_flight)} in flight")
        code, log = Run(sim.url, export, out, "--concurrency", "8").finish()
        assert code == 0, log
        paid = sim.stats()["totals"]["calls"]
        assert len(added) + len(edited) <= paid - paid_before
        assert paid - paid_before <= len(added) + len(edited) + len(in_flight), f"night {night}"
        paid_before = paid
        tonight = tmp_path / f"night{night}.csv"
        exported = CliRunner().invoke(cli, ["export", str(out), "-o", str(tonight), "--new"])
        assert exported.exit_code == 0, exported.output
        with open(tonight, newline="", encoding="utf-8") as handle:
            emails = [row["email"] for row in csv.DictReader(handle)]
        assert sorted(emails) == sorted(f"p{n}@example.com" for n in added | edited)
        checked = CliRunner().invoke(cli, ["ledger", "check", str(out)])
        assert checked.exit_code == 0, checked.output


def _complete_lines(path: Path) -> list[dict[str, Any]]:
    raw = path.read_bytes() if path.exists() else b""
    return [json.loads(line) for line in raw.split(b"\n")[:-1]]


def _recipe() -> str:
    """The README's nightly script (section "The nightly job, end to end"), as written."""
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### The nightly job, end to end") :]
    return section[section.index("```sh\n") + 6 : section.index("```\n", section.index("```sh"))]


def _night(recipe: Path, env: dict[str, str]) -> tuple[int, str]:
    done = subprocess.run(
        ["sh", str(recipe)], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    return done.returncode, done.stdout + done.stderr


@pytest.mark.slow
def test_an_operators_week_runs_the_readme_recipe(make_sim: Any, tmp_path: Path) -> None:
    """Issue 24's week: the README's nightly script over seven nights of a changing export,
    with a permanent failure, a kill -9, a person under two CRM records that disagree, a night
    whose export comes in another order, and a qualify -> sequence chain beside it. Every night
    whose own contacts all succeeded exits 0; each pays its new and edited people (and the
    calls in flight at the kill); a reorder pays nobody; history, status and the server agree
    on the credits."""
    sim = make_sim(seed=8, latency=parse_latency("30ms:0.5"), faults=parse_faults("not_found=0.01"))
    crm = Crm(200, seed=13)
    crm.second_title = "CTO"  # person 3's two CRM records disagree
    export, out, push = tmp_path / "export.csv", tmp_path / "out.ndjson", tmp_path / "push.csv"
    config = tmp_path / "nightly.toml"
    config.write_text(f'base_url = "{sim.url}"\nagent_oid = "ca_1"\nprogress = false\n')
    recipe = tmp_path / "nightly.sh"
    recipe.write_text(_recipe())
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCTAVE_")}
    env |= {"OCTAVE_API_KEY": "k", "EXPORT": str(export), "OUT": str(out),
            "CONFIG": str(config), "PUSH": str(push),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}  # fmt: skip
    paid_before, in_flight_at_kill = 0, 0
    for night in range(7):
        crm.shuffled = night == 5  # the same people as last night, in another order
        if night == 0:
            added, edited = set(crm.people), set()
        elif crm.shuffled:
            added, edited = set(), set()
        else:
            added, edited = crm.night(0.05, 0.03, 0.02)
        crm.write(export)
        if crm.shuffled:  # the record never paid for now comes first
            text = export.read_text()
            assert text.index("999999,P3@") < text.index(",p3@example.com,")
        if night == 3:  # killed mid-run; the scheduler's retry runs the script again
            command = ["octave-bulk", "run", str(export), "-o", str(out), "--config", str(config)]
            killed = subprocess.Popen(
                command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            _wait_for(out, paid_before + 3)
            killed.kill()
            killed.wait()
            done = {line["requestId"] for line in _complete_lines(out)}
            in_flight_at_kill = len(set(InflightSlots.leftovers(side(out, ".inflight"))) - done)
        code, log = _night(recipe, env)
        summary = json.loads(side(out, ".summary.json").read_text())
        failed_tonight = summary["counts"]["failed"]
        assert code == (1 if failed_tonight else 0), log  # an old failure fails no night
        paid = sim.stats()["totals"]["calls"]
        expected = len(added) + len(edited)
        slack = in_flight_at_kill if night == 3 else 0
        assert expected <= paid - paid_before <= expected + slack, f"night {night}: {log}"
        if night == 5:
            assert paid == paid_before, "a reordered export paid someone again"
        paid_before = paid
        with open(push, newline="", encoding="utf-8") as handle:
            pushed = {row["email"] for row in csv.DictReader(handle)}
        tonight = {f"p{n}@example.com" for n in (added | edited) & set(crm.people)}
        failed = {e["contact"]["email"] for e in _lines(side(out, ".errors.ndjson"))}
        assert tonight - failed <= pushed, f"night {night}"
    # Beside the nightly output: qualify, then sequence only the best, each paid once.
    scored, chained = tmp_path / "scored.ndjson", tmp_path / "chained.ndjson"
    chain = [
        ["run", str(export), "-o", str(scored), "--agent-type", "qualify-person"],
        ["run", str(scored), "-o", str(chained), "--where", "score >= 5"],
    ]
    for time_round in range(2):  # the second time: nothing new to pay
        before = sim.stats()["totals"]["calls"]
        for args in chain:
            done = CliRunner().invoke(
                cli, [*args, "--config", str(config)], env={"OCTAVE_API_KEY": "k"}
            )
            assert done.exit_code in (0, 1), done.output
        assert time_round == 0 or sim.stats()["totals"]["calls"] == before
    best = {line["requestId"] for line in _lines(scored) if line["response"]["data"]["score"] >= 5}
    sequenced = _lines(chained) + _lines(side(chained, ".errors.ndjson"))
    assert len(sequenced) == len(best) > 0  # each of the best, once
    # The week's accounting agrees: history, status and the server's bill.
    runs = json.loads(CliRunner().invoke(cli, ["history", str(out), "--json"]).output)
    status = json.loads(CliRunner().invoke(cli, ["status", str(out), "--json"]).output)
    assert sum(run["credits"] for run in runs) == status["credits"]
    billed_here = status["credits"]
    assert any(run["stop_reason"] == "killed" for run in runs)
    assert billed_here <= sim.stats()["credits_used"]
    # The same export through async mode, detached: submit tonight, collect later; a few jobs
    # hang, and the collect releases them at the bound derived from the others' times.
    queue = make_sim(seed=8, latency=parse_latency("30ms:0.3"), faults=parse_faults("hang=0.03"))
    later = tmp_path / "later.ndjson"
    polls = tmp_path / "async.toml"
    polls.write_text(
        f'base_url = "{queue.url}"\nagent_oid = "ca_1"\nprogress = false\nmode = "async"\n'
        "poll_interval_min = 0.05\npoll_interval_max = 0.3\njob_timeout_floor = 1.0\n"
        "timeout = 5\n"  # a request that hangs costs seconds, not the default 180 s a try
    )
    detached = CliRunner().invoke(
        cli,
        ["run", str(export), "-o", str(later), "--config", str(polls), "--detach"],
        env={"OCTAVE_API_KEY": "k"},
    )
    assert detached.exit_code == 0, detached.output
    submitted = queue.stats()["totals"]["async_submits"]
    assert submitted == len(crm.people) and not _lines(later)  # nothing polled yet
    collected = CliRunner().invoke(
        cli, ["collect", str(later), "--config", str(polls)], env={"OCTAVE_API_KEY": "k"}
    )
    jobs = json.loads(side(later, ".summary.json").read_text())["async_jobs"]
    hung = jobs["given_up_after_job_timeout"]
    assert hung >= 1 and collected.exit_code == 1, collected.output
    assert "async jobs still pending at job_timeout" in collected.output
    assert len(_lines(later)) + len(_lines(side(later, ".errors.ndjson"))) + hung == submitted
    assert queue.stats()["totals"]["async_submits"] == submitted  # collecting pays nothing


def _wait_for(path: Path, lines: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= lines:
            return
        time.sleep(0.02)
    raise AssertionError(f"{path}: fewer than {lines} lines")


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
