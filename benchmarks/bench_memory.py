"""Memory: peak RSS of ``octave-bulk run`` streaming 1,000,000 contacts against 10,000.

A CSV of 1,000,000 canonical contacts and one of 10,000. The small run is measured twice: on
its own file, and on the big file with ``--limit 10000``. The two differ because the engine
sizes its duplicate-detection table from the input's line count, ignoring ``--limit``; the
target must hold against both. The simulator answers at `instant` latency on CPU 0; the engine runs on CPU 1 with
``--rate none --concurrency 64``. Peak RSS is the child's VmHWM (/proc/PID/status, polled every
~5 ms; not ``ru_maxrss``, which Linux inflates with the parent's high-water mark); RSS is also
sampled every second to show whether it grows with the input. The 10k run is repeated
(up to 3 times for a quiet one); the 1M run (~7 min, ~5 GB of output, deleted after) runs once.

Targets: peak(1M) <= 1.5 x peak(10k), and peak(1M) < 250 MB (10^6 bytes; the table is in MiB).

    python benchmarks/bench_memory.py [--contacts 1000000] [--small 10000] [--smoke]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import psutil
from _common import (
    ENGINE_ENV,
    Noise,
    clear_outputs,
    engine_cmd,
    quietest,
    report,
    run_child,
    run_summary,
    simulator,
    write_contacts,
)

MIB = 1024 * 1024
TARGET_RATIO, TARGET_MB = 1.5, 250


def run(url: str, csv: Path, out: Path, limit: int) -> tuple[dict, Noise]:
    clear_outputs(out)
    samples: list[tuple[float, float]] = []
    start = time.perf_counter()

    def sample(pid: int) -> None:
        now = time.perf_counter() - start
        if not samples or now - samples[-1][0] >= 1.0:
            try:
                samples.append((now, psutil.Process(pid).memory_info().rss / MIB))
            except psutil.Error:
                pass

    flags = ("--rate", "none", "--concurrency", "64", "--limit", str(limit))
    with Noise() as noise:
        child = run_child(engine_cmd(csv, out, url, *flags), env=ENGINE_ENV, poll=sample)
    if child.returncode != 0:
        raise RuntimeError(f"engine exit {child.returncode}: {child.stderr}")
    summary = run_summary(out)
    assert summary["counts"]["succeeded"] == limit, summary["counts"]
    quarter = [s for s in samples if s[0] >= child.wall / 4] or samples
    return {
        "contacts": limit,
        "peak_rss_mib": child.peak_rss_mib,
        "rss_at_25pct_mib": quarter[0][1] if quarter else None,
        "rss_last_sample_mib": samples[-1][1] if samples else None,
        "per_s": limit / child.wall,
        "seconds": child.wall,
        "out_mb": out.stat().st_size / 1e6,
        "samples": [(round(t, 1), round(m, 1)) for t, m in samples[:: max(1, len(samples) // 60)]],
    }, noise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--smoke", action="store_true", help="20,000 against 2,000")
    args = parser.parse_args()
    big, small = (20_000, 2_000) if args.smoke else (args.contacts, args.small)
    with tempfile.TemporaryDirectory() as tmp, simulator("--latency", "instant") as sim:
        work = Path(tmp)
        free = shutil.disk_usage(work).free
        if big * 5_500 > free - 2e9:
            raise SystemExit(f"not enough disk for {big:,} results ({free / 1e9:.0f} GB free)")
        write_contacts(work / "big.csv", big)
        write_contacts(work / "small.csv", small)
        out = work / "out.ndjson"
        rows = []
        for case, csv, limit in (
            ("small, own file", "small.csv", small),
            ("small, --limit on the big file", "big.csv", small),
            ("big", "big.csv", big),
        ):
            measure = lambda c=csv, n=limit: run(sim.url, work / c, out, n)  # noqa: E731
            result, noise = measure() if limit == big else quietest(measure)
            rows.append(
                {"case": case, **result, "steal": noise.steal, "others_cores": noise.others}
            )
            print(f"{case}: peak RSS {result['peak_rss_mib']:.1f} MiB", flush=True)
            clear_outputs(out)
    peak = rows[2]["peak_rss_mib"]
    ratios = {r["case"]: peak / r["peak_rss_mib"] for r in rows[:2]}
    big_mb = peak * MIB / 1e6
    ok = max(ratios.values()) <= TARGET_RATIO and big_mb < TARGET_MB
    for row in rows:
        row["big_over_this"] = peak / row["peak_rss_mib"]
    samples = {f"samples_{r['contacts']}_{i}": r.pop("samples") for i, r in enumerate(rows)}
    extra = {
        "ratios": ratios,
        "target": f"peak(big) <= {TARGET_RATIO} x peak(small) (both small runs) and < {TARGET_MB} MB",
        "ok": ok,
        **samples,
    }
    report("memory", rows, extra, smoke=args.smoke)
    print(
        f"\npeak RSS of the {big:,}-contact run: {peak:.1f} MiB = {big_mb:.0f} MB "
        f"(target < {TARGET_MB} MB)"
    )
    for case, ratio in ratios.items():
        print(f"  {ratio:.2f} x the {small:,}-contact run ({case}) (target <= {TARGET_RATIO})")
    print("met" if ok else "MISSED")


if __name__ == "__main__":
    main()
