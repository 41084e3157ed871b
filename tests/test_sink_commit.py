"""The sink's commit contract: when ``commit()`` returns, every outcome written before the
call is durable *and reported* — even when another commit (the periodic committer) holds
that outcome's group in its fsync at the moment of the call.

The engine relies on it before closing the async job table: ``await sink.commit()`` then
``jobs.close()``. A commit that returned while a concurrent one was still fsyncing let the
pollers see an empty table, end, and leave the last jobs unpolled (a run that exited 0 with
jobs awaiting their result, seen under load).
"""

from __future__ import annotations

import threading
from pathlib import Path

import anyio

from octave_bulk.state.files import NdjsonAppender
from octave_bulk.state.sink import Outcome, Sink, Success


class SlowAppender(NdjsonAppender):
    """An appender whose fsync blocks until the test lets it go."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.entered = threading.Event()
        self.go_on = threading.Event()

    def sync(self) -> None:
        self.entered.set()
        self.go_on.wait(timeout=30)
        super().sync()


async def test_a_commit_returns_only_after_a_concurrent_commits_outcomes_are_reported(
    tmp_path: Path,
) -> None:
    results = SlowAppender(tmp_path / "out.ndjson")
    errors = NdjsonAppender(tmp_path / "out.errors.ndjson")
    reported: list[str] = []

    def on_durable(item: Outcome, person: int) -> None:
        reported.append(item.request_id)

    sink = Sink(
        run_id="r1",
        results=results,
        errors=errors,
        on_durable=on_durable,
        release_slot=lambda slot: None,
        batch=100,
        interval=60.0,
    )
    sink.write(Success("req-1", {"email": "a@example.com"}, b"{}", 1.0, 1, 10, None))
    seen_when_returned: list[str] = []

    async def second_commit() -> None:
        await anyio.to_thread.run_sync(results.entered.wait, 30)
        await sink.commit()  # the first commit holds req-1's group in its fsync
        seen_when_returned.extend(reported)
        results.go_on.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(sink.commit)
        tasks.start_soon(second_commit)
        # If the second commit waits for the first (correct), nothing releases the fsync but
        # this: let it go once the second is certainly waiting.
        await anyio.sleep(0.5)
        results.go_on.set()

    assert reported == ["req-1"]
    assert seen_when_returned == ["req-1"]
