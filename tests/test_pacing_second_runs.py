"""Second runs from memory, and the limiter's first guess of a refusal's round trip (issue 23:
a run from memory is never slower than the first). Virtual time (tests/limiter_model.py)."""

from __future__ import annotations

from tests.limiter_model import Server, simulate


def largest_gap(server: Server, until: float) -> float:
    """The longest wait between two consecutive calls the server saw in its first ``until`` s."""
    assert server.first is not None
    times = [t for t in server.arrived_at if t - server.first <= until]
    return max(later - earlier for earlier, later in zip(times, times[1:], strict=False))


def test_a_remembered_rate_is_not_held_back_by_a_window_searched_from_32() -> None:
    # Last night held 10/s with 45-s calls (450 in flight) and met no cap. Tonight starts
    # from that rate with --concurrency unset: the sends go at the rate from the first, not
    # into a window of 32, then 64, 128, 256, each full until its sends are judged unrefused
    # (four refusal round trips: with no 429 yet to teach them, four of the first guess,
    # 0.1 s), a pause of 0.3 s between sends 0.1 s apart at each.
    server = Server(latency=45.0, sigma=0.2)
    simulate(server, 601, rate_ceiling=10.0, window_ceiling=512, first_window=32, start_rate=10.0)
    assert largest_gap(server, 55.0) <= 0.11
    assert server.max_in_flight >= 400


def test_with_no_rate_remembered_the_window_is_still_searched_from_32() -> None:
    # The search from 32 stays where nothing paces the sends yet (a server with no cap is not
    # flooded by a first burst).
    server = Server(latency=45.0, sigma=0.2)
    simulate(server, 64, rate_ceiling=None, window_ceiling=512, first_window=32)
    assert server.first is not None
    assert sum(t - server.first < 1.0 for t in server.arrived_at) <= 32


def test_the_first_guess_of_a_refusal_s_round_trip_sets_how_soon_a_full_window_grows() -> None:
    # A window of 32 filled at 10/s, nothing refused yet: it grows once its sends are four
    # refusal round trips old. The guess is a setting (``refusal_round_trip``), so that a
    # time-scaled bench (45-s calls played in 1.5 s) scales it with the rest.
    gaps = {}
    for guess in (0.01, 1.0):
        server = Server(latency=45.0, sigma=0.2)
        simulate(
            server, 80, rate_ceiling=10.0, window_ceiling=512, first_window=32, refusal_rtt=guess
        )
        gaps[guess] = largest_gap(server, 30.0)
    assert gaps[0.01] <= 0.15
    assert gaps[1.0] >= 3.5


def test_a_short_night_remembers_the_rate_that_held_not_the_probe_it_ended_in() -> None:
    # 300 fast calls against 20/s with a burst of 2: the night ends before the search has
    # settled. A probe a few outcomes old (it holds for the bucket's burst), or a rate refused
    # now and then, is not what the next night starts from: the last rate proven is, or what
    # the refused-now-and-then rate let through. Remembered: 1.00-1.03x of the limit over
    # these seeds (the probes remembered were up to 1.05x).
    remembered = []
    for seed in range(1, 9):
        server = Server(rate=20.0, burst=2.0, latency=0.12, seed=seed)
        found = simulate(server, 300, rate_ceiling=None, window_ceiling=512, search_from=16.0)
        remembered.append(found.report().summary()["rate"] / 20.0)
    assert all(0.95 <= ratio <= 1.03 for ratio in remembered), remembered
