"""The limiter is a plug-in seam: a limiter defined here, and known to no file under
``octave_bulk/run/``, runs whole batches against the simulator through ``run_batch(limiter=)``
or the ``limiter`` setting; the calls it sees follow the v2 contract (``limits/base.py``):
every ticket handed back once, attempts never sent released, 429s reported, one open and
one close per limiter."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from click.testing import CliRunner

from octave_bulk.cli import cli
from octave_bulk.errors import ConfigError
from octave_bulk.limits.base import Limiter, LimiterContext, LimitsReport, RefusalHints, Ticket
from octave_bulk.limits.factory import adaptive_limiter, limiter_factory, register_limiter
from octave_bulk.run.engine import run_batch
from octave_bulk.simulator import RetryAfterMix, Simulator, SimulatorConfig
from tests.conftest import TEST_KEY
from tests.helpers import read_lines, side, sim_settings, write_contacts

FAST_POLLS = {"mode": "async", "poll_interval_min": 0.05, "poll_interval_max": 0.5}


class _Token(Ticket):
    __slots__ = ("back", "held")

    def __init__(self) -> None:
        self.held = self.back = False


class TokenWindow:
    """A test-only limiter: ``window`` tokens, taken by each attempt and given back when it
    ends; a released attempt is refunded (``spent`` counts the tokens that bought a call).
    It counts every call of the contract."""

    def __init__(self, context: LimiterContext, window: int) -> None:
        self.purpose = context.purpose
        self.free, self.window = window, window
        self.calls: Counter[str] = Counter()
        self.spent = 0
        self._changed = anyio.Event()
        self._stopped = False

    async def open(self) -> None:
        self.calls["open"] += 1

    async def aclose(self) -> None:
        self.calls["aclose"] += 1

    async def acquire(self) -> Ticket:
        self.calls["acquire"] += 1
        self.spent += 1
        token = _Token()
        while not self._stopped:
            if self.free:
                self.free -= 1
                token.held = True
                break
            await self._changed.wait()
        return token

    def _back(self, ticket: Ticket) -> None:
        assert isinstance(ticket, _Token) and not ticket.back, "a ticket handed back twice"
        ticket.back = True
        if ticket.held:
            self.free += 1
            self._wake()

    async def on_answer(self, ticket: Ticket) -> None:
        self._back(ticket)
        self.calls["on_answer"] += 1

    async def on_429(
        self, ticket: Ticket, retry_after: float | None, hints: RefusalHints | None = None
    ) -> float:
        self._back(ticket)
        self.calls["on_429"] += 1
        return 0.0

    async def release(self, ticket: Ticket) -> None:
        self._back(ticket)
        self.calls["release"] += 1
        self.spent -= 1  # refunded: never sent

    def stop(self) -> None:
        self._stopped = True
        self._wake()

    def report(self) -> LimitsReport:
        return LimitsReport(
            rate=None,
            window=self.window,
            accepted=self.calls["on_answer"],
            refused=self.calls["on_429"],
            released=self.calls["release"],
        )

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()


class Made:
    """A limiter factory keeping the limiters it built."""

    def __init__(self, window: int = 4) -> None:
        self.window = window
        self.built: dict[str, TokenWindow] = {}

    def __call__(self, context: LimiterContext) -> Limiter:
        assert context.purpose not in self.built, "one limiter per purpose and run"
        self.built[context.purpose] = limiter = TokenWindow(context, self.window)
        return limiter


def _handed_back(limiter: TokenWindow) -> int:
    return sum(limiter.calls[k] for k in ("on_answer", "on_429", "release"))


async def test_a_fake_limiter_paces_a_sync_run_and_hears_every_429(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim(
        faults={"429": 0.25}, time_scale=50.0, retry_after_mix=RetryAfterMix(1.0, 0.0, 0.0)
    )
    rids = write_contacts(tmp_path / "in.csv", 60)
    out = tmp_path / "out.ndjson"
    made = Made()
    summary = await run_batch(
        tmp_path / "in.csv", out, sim_settings(sim.url, max_attempts=8), limiter=made
    )
    assert set(made.built) == {"calls"}  # no polls in sync mode
    fake = made.built["calls"]
    assert fake.calls["open"] == fake.calls["aclose"] == 1
    refused = sim.stats()["by_status"].get("429", 0)
    assert refused > 0 and fake.calls["on_429"] == refused
    assert fake.calls["on_answer"] + refused == sim.stats()["totals"]["calls"]
    assert fake.calls["acquire"] == summary["paid_calls"] + fake.calls["release"]
    assert _handed_back(fake) == fake.calls["acquire"] and fake.free == fake.window
    assert summary["limits"]["refusals_429"] == refused  # the summary reads its report
    done = read_lines(out) + read_lines(side(out, ".errors.ndjson"))
    assert sorted(line["requestId"] for line in done) == rids


async def test_attempts_stopped_while_waiting_are_released_not_answered(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 60)
    made = Made(window=1)  # one call at a time: the other workers wait in acquire
    summary = await run_batch(
        tmp_path / "in.csv",
        tmp_path / "out.ndjson",
        sim_settings(sim.url, max_calls=10),
        limiter=made,
    )
    fake = made.built["calls"]
    assert summary["exit_code"] == 5 and summary["paid_calls"] == 10
    assert sim.stats()["totals"]["calls"] == 10 == fake.calls["on_answer"]
    assert fake.calls["release"] >= 1  # woken by the stop, or past the limit: never sent
    assert fake.calls["acquire"] == summary["paid_calls"] + fake.calls["release"]
    assert fake.spent == 10  # the released tokens were refunded
    assert fake.calls["open"] == fake.calls["aclose"] == 1


class RefusesConnections(httpx.AsyncBaseTransport):
    """The simulator in process, whose first ``refusals`` agent calls cannot connect."""

    def __init__(self, refusals: int) -> None:
        self.app = Simulator(SimulatorConfig())
        self.inner = httpx.ASGITransport(app=self.app)
        self.refusals = refusals

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/run") and self.refusals:
            self.refusals -= 1
            raise httpx.ConnectError("connection refused", request=request)
        return await self.inner.handle_async_request(request)


async def test_attempts_that_could_not_connect_are_released(tmp_path: Path) -> None:
    write_contacts(tmp_path / "in.csv", 20)
    transport = RefusesConnections(3)
    made = Made()
    summary = await run_batch(
        tmp_path / "in.csv",
        tmp_path / "out.ndjson",
        sim_settings("http://sim", breaker_threshold=100),
        transport=transport,
        limiter=made,
    )
    fake = made.built["calls"]
    assert summary["exit_code"] == 0 and summary["paid_calls"] == 20
    assert fake.calls["release"] == 3 and fake.calls["on_answer"] == 20
    assert fake.calls["acquire"] == summary["paid_calls"] + fake.calls["release"]


async def test_a_fake_limiter_paces_submits_and_polls_of_an_async_run(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 40)
    made = Made()
    summary = await run_batch(
        tmp_path / "in.csv", tmp_path / "out.ndjson", sim_settings(sim.url, **FAST_POLLS),
        limiter=made,
    )  # fmt: skip
    assert summary["exit_code"] == 0
    calls, polls = made.built["calls"], made.built["polls"]
    for fake in (calls, polls):
        assert fake.calls["open"] == fake.calls["aclose"] == 1
        assert _handed_back(fake) == fake.calls["acquire"]
    submits = sim.stats()["totals"]["async_submits"]
    assert submits == 40 == calls.calls["on_answer"]
    assert calls.calls["acquire"] == summary["paid_calls"] + calls.calls["release"]
    assert polls.calls["on_answer"] == summary["async_jobs"]["polls"] >= 40


async def test_the_limiter_setting_names_a_registered_factory(
    make_sim: Any, tmp_path: Path
) -> None:
    assert limiter_factory("adaptive") is adaptive_limiter
    made = Made()
    register_limiter("test-token-window", made)
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 12)
    settings = sim_settings(sim.url, limiter="test-token-window")
    summary = await run_batch(tmp_path / "in.csv", tmp_path / "out.ndjson", settings)
    assert summary["exit_code"] == 0
    assert made.built["calls"].calls["on_answer"] == 12


async def test_an_unknown_limiter_is_a_config_error_naming_the_setting(
    live_sim: Any, tmp_path: Path
) -> None:
    write_contacts(tmp_path / "in.csv", 3)
    settings = sim_settings(live_sim.url, limiter="no-such-limiter")
    with pytest.raises(ConfigError, match=r"limiter = 'no-such-limiter'.*known: adaptive"):
        await run_batch(tmp_path / "in.csv", tmp_path / "out.ndjson", settings)
    assert live_sim.stats()["totals"].get("calls", 0) == 0


def test_an_unknown_limiter_exits_2_from_the_cli(live_sim: Any, tmp_path: Path) -> None:
    write_contacts(tmp_path / "in.csv", 3)
    env = {"OCTAVE_API_KEY": TEST_KEY, "OCTAVE_LIMITER": "no-such-limiter"}
    result = CliRunner().invoke(
        cli,
        ["run", str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.ndjson"),
         "--agent", "ca_test", "--base-url", live_sim.url, "--no-progress"],
        env=env,
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "limiter = 'no-such-limiter'" in result.output
