"""The ledger's costs: on a run's throughput, on disk, and for ``export --new`` over 1M results.

* ``overhead``: ``octave-bulk run`` at instant latency (20,000 contacts, concurrency 64, the
  simulator on CPU 0, the engine on CPU 1), the whole process, with the ledger's index (every
  person and call written in the group commit, the snapshot at the end) and with
  ``OCTAVE_LEDGER_INDEX=false`` (the run history only), alternated, the best of 5 each.
  Target: with / without >= 0.97 (<= 3 % throughput). Also the engine's own CPU per contact
  (the least of the 5; ``cpu_ratio`` = without / with: at instant latency the run is CPU-bound,
  and CPU time is steadier than wall time on a shared machine), and the ledger's bytes per
  contact after that run (runs, outcomes, contacts, every call with its times, snapshot).
* ``export_new``: OUT.ndjson with D result lines (D = 1,000,000; ~5.2 KB each, made as
  ``bench_resume.py`` makes them), a first ``export --new`` (everything: its mark then ends at
  line D), then 1,000 more lines and ``export --new`` again: it reads from the mark's byte
  offset, so its time should not grow with D. Reference: the same export with the mark's
  offset unknown (a mark written by a version that kept only its line count), which reads
  every line before it.

Start-up with a ledger of 1M contacts is measured by ``bench_resume.py`` (``scan_only``).

    python benchmarks/bench_ledger.py [--contacts 20000] [--lines 1000000] [--smoke]
"""

from __future__ import annotations

import argparse
import csv
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    ENGINE_ENV,
    Noise,
    Simulator,
    engine_cmd,
    report,
    run_child,
    simulator,
    write_contacts,
)
from bench_resume import append_lines, templates

from octave_bulk.state.paths import OutputPaths

OVERHEAD_TARGET = 0.97
NEW_LINES = 1000


def clear(out: Path) -> None:
    for path in out.parent.glob(out.stem + ".*"):
        path.unlink()


def overhead(sim: Simulator, work: Path, contacts: int, repeat: int) -> dict:
    write_contacts(work / "in.csv", contacts)
    out = work / "out.ndjson"
    best: dict[str, dict] = {}
    for _ in range(repeat):
        for index in ("true", "false"):
            clear(out)
            sim.reset()
            env = {**ENGINE_ENV, "OCTAVE_LEDGER_INDEX": index}
            flags = ("--rate", "none", "--concurrency", "64")
            with Noise() as noise:
                child = run_child(engine_cmd(work / "in.csv", out, sim.url, *flags), env=env)
            assert child.returncode == 0, child.stderr
            row = {
                "per_s": contacts / child.wall,
                "cpu_us": child.cpu / contacts * 1e6,
                "steal": noise.steal,
                "others": noise.others,
            }
            if index == "true":
                ledger = OutputPaths(out).ledger
                with sqlite3.connect(ledger) as db:
                    calls = db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
                assert calls == contacts, calls
                row["ledger_bytes_per_contact"] = ledger.stat().st_size / contacts
            if index not in best or row["per_s"] > best[index]["per_s"]:
                best[index] = row | {"cpu_us": min(row["cpu_us"], best.get(index, row)["cpu_us"])}
            else:
                best[index]["cpu_us"] = min(row["cpu_us"], best[index]["cpu_us"])
    with_index, without = best["true"], best["false"]
    return {
        "case": "overhead",
        "contacts": contacts,
        "with_index_per_s": with_index["per_s"],
        "without_index_per_s": without["per_s"],
        "ratio": with_index["per_s"] / without["per_s"],
        "target": f">= {OVERHEAD_TARGET}",
        "with_index_cpu_us_per_contact": with_index["cpu_us"],
        "without_index_cpu_us_per_contact": without["cpu_us"],
        "cpu_ratio": without["cpu_us"] / with_index["cpu_us"],
        "ledger_bytes_per_contact": with_index["ledger_bytes_per_contact"],
        "steal": max(with_index["steal"], without["steal"]),
    }


def export_seconds(out: Path, target: Path) -> float:
    cmd = [sys.executable, "-m", "octave_bulk", "export", str(out), "-o", str(target), "--new"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def export_new(url: str, work: Path, lines: int) -> dict:
    out = work / "big.ndjson"
    parts = templates(url, work)
    append_lines(out, parts, 0, lines)
    first = export_seconds(out, work / "all.csv")
    append_lines(out, parts, lines, lines + NEW_LINES)
    ledger = OutputPaths(out).ledger
    saved = ledger.read_bytes()
    with Noise() as noise:
        new = export_seconds(out, work / "new.csv")
    ledger.write_bytes(saved)  # the same mark again, without its offset
    with sqlite3.connect(ledger) as db:
        db.execute("UPDATE export_marks SET bytes = 0")
    by_lines = export_seconds(out, work / "new-by-lines.csv")
    with open(work / "new.csv", newline="", encoding="utf-8") as handle:
        rows = sum(1 for _ in csv.reader(handle)) - 1
    assert rows == NEW_LINES, rows
    return {
        "case": "export_new",
        "result_lines": lines,
        "out_mb": out.stat().st_size / 1e6,
        "first_export_s": first,
        "export_new_s": new,
        "export_new_without_offset_s": by_lines,
        "ratio": by_lines / new,
        "steal": noise.steal,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts", type=int, default=20_000)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--smoke", action="store_true", help="2,000 contacts, 20,000 lines")
    parser.add_argument("--cases", nargs="+", default=["overhead", "export_new"])
    args = parser.parse_args()
    contacts, lines = (2000, 20_000) if args.smoke else (args.contacts, args.lines)
    repeat = 1 if args.smoke else 5
    rows = []
    with tempfile.TemporaryDirectory() as tmp, simulator("--latency", "instant", cpu=0) as sim:
        work = Path(tmp)
        if "overhead" in args.cases:
            rows.append(overhead(sim, work, contacts, repeat))
            print(
                f"overhead: {rows[-1]['ratio']:.3f} (target {OVERHEAD_TARGET}), CPU "
                f"{rows[-1]['cpu_ratio']:.3f}; "
                f"{rows[-1]['ledger_bytes_per_contact']:.0f} B/contact",
                flush=True,
            )
        if "export_new" in args.cases:
            rows.append(export_new(sim.url, work, lines))
            print(
                f"export --new of {NEW_LINES} over {lines:,}: {rows[-1]['export_new_s']:.2f} s "
                f"(first export {rows[-1]['first_export_s']:.1f} s; without the offset "
                f"{rows[-1]['export_new_without_offset_s']:.2f} s)",
                flush=True,
            )
    columns = {key: None for row in rows for key in row}
    rows = [columns | row for row in rows]  # one table: every row has every column
    extra = {"target": f"run with / without the index >= {OVERHEAD_TARGET}"}
    report("ledger", rows, extra, smoke=args.smoke)


if __name__ == "__main__":
    main()
