"""Resume: how long a re-run takes to send its first new request, and what the done-set costs.

Builds OUT.ndjson with D realistic done lines (D = 200,000, then 1,000,000): 64 real result
lines from a small engine run against the simulator, repeated with their requestId replaced, so
lines keep the engine's layout and the simulator's ~4-6 KB bodies. The input CSV has the D done
contacts first, then 16 new ones. The engine runs on CPU 1 against an instant simulator on CPU 0.

"Time to first new request" is measured from spawning ``octave-bulk run`` to the first new line
appearing in OUT.ndjson (its size, polled every ~5 ms from here; at instant latency the line
follows the request by a few ms): interpreter start, imports, repairing and scanning OUT.ndjson,
then reading and skipping the D done rows of the input. Rows per size:

* ``resume``: the real re-run described above, page cache warm (the file was just written),
  with the resume cursor (OUT.cursor.json) and the ledger (OUT.ledger.sqlite, its snapshot of
  the done-set) that the run which got through the D done rows left: made here by one
  ``--limit D`` run over the same input (it sends nothing: all D are done; it is the first run
  to see them, so it indexes all D lines: ``first_index_s``), saved, and put back before each
  measurement. Target: <= 1 s per 200k done lines, i.e. time / (D / 200k) <= 1.
* ``resume_no_cursor``: the same without the cursor (the input or settings changed, or OUT.ndjson
  came from elsewhere): every done row is read, validated and built before it is skipped.
* ``resume_cold``: ``resume`` after dropping OUT.ndjson and the CSV from the page cache.
* ``scan_only``: an input holding only the 16 new contacts, with the ledger: a night's run on a
  fresh export of new people. Target (the ledger's): <= 1 s to the first request at 1M.
* ``scan_only_no_index``: the same with ``OCTAVE_LEDGER_INDEX=false``: OUT.ndjson is scanned
  (the cost before the ledger's index; reference).
* ``fresh`` (once): no OUT.ndjson and 16 contacts: the fixed start-up cost (it dominates the
  per-200k figure of the 20k-line smoke form, which is therefore not comparable to the target).

``ledger_bytes_per_contact``: the ledger's size over D (runs, contacts, calls and snapshot).

Memory of the done-set: ``scan_results`` in a fresh process; ``IdSet.nbytes() / len`` and the
RSS growth of that process over the scan, per id. Target: <= 100 bytes per id.

Disk: D lines of ~5 KB (about 5 GB at 1M) in a temporary directory, deleted at the end; when the
disk has less room, D is reduced and the result says so.

    python benchmarks/bench_resume.py [--sizes 200000 1000000] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
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

from octave_bulk.state.idset import id_key
from octave_bulk.state.paths import OutputPaths

NEW = 16
TEMPLATES = 64
PERSON_SLOT = b"@PERSON-KEY-HERE"  # 16 bytes, like the person key it stands for
TARGET_S_PER_200K = 1.0
TARGET_BYTES_PER_ID = 100


def templates(url: str, work: Path) -> list[list[bytes]]:
    """Real result lines, each split around its requestId (it occurs in requestId and contact)."""
    ids = write_contacts(work / "t.csv", TEMPLATES)
    out = work / "t.ndjson"
    flags = ("--rate", "none", "--concurrency", "8")
    child = run_child(engine_cmd(work / "t.csv", out, url, *flags), env=ENGINE_ENV)
    assert child.returncode == 0, child.stderr
    lines = out.read_bytes().splitlines(keepends=True)
    by_id = {}
    for line in lines:
        record = orjson.loads(line)
        by_id[record["requestId"]] = line.replace(record["personKey"].encode(), PERSON_SLOT)
    parts = [by_id[rid].split(rid.encode()) for rid in ids]
    clear_outputs(out)
    return parts


def append_lines(out: Path, parts: list[list[bytes]], start: int, stop: int) -> None:
    """Done lines for requestIds c-START..c-STOP (the ids write_contacts gives those rows),
    each with the person key of its row's email (every line a different person)."""
    with open(out, "ab") as handle:
        chunk: list[bytes] = []
        for i in range(start, stop):
            person = f"{id_key(f'email:p{i}@example.com'):016x}".encode()
            line = f"c-{i:05d}".encode().join(parts[i % TEMPLATES])
            chunk.append(line.replace(PERSON_SLOT, person, 1))
            if len(chunk) == 4096:
                handle.write(b"".join(chunk))
                chunk.clear()
        handle.write(b"".join(chunk))


def new_contacts_csv(path: Path, done: int) -> None:
    """Only the NEW contacts after the done ones (same ids as in the full CSV)."""
    write_contacts(path, NEW, start=done)


def drop_cache(*paths: Path) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def make_cursor(url: str, csv: Path, out: Path, done: int) -> tuple[bytes, bytes, float]:
    """The cursor and ledger a run leaves after getting through the first ``done`` rows (all
    done), and how long that first run took (it indexes every line)."""
    flags = ("--rate", "none", "--limit", str(done))
    OutputPaths(out).ledger.unlink(missing_ok=True)
    child = run_child(engine_cmd(csv, out, url, *flags), env=ENGINE_ENV, timeout=1200)
    assert child.returncode == 0, child.stderr
    summary = run_summary(out)
    assert summary["counts"]["skipped_done"] == done and summary["paid_calls"] == 0
    paths = OutputPaths(out)
    # The cursor with its first-rows file (OUT.cursor.keys), as one blob: JSON, NUL, keys.
    cursor = paths.cursor.read_bytes() + b"\0" + paths.cursor_keys.read_bytes()
    return cursor, paths.ledger.read_bytes(), child.wall


def first_request(
    url: str,
    csv: Path,
    out: Path,
    done_bytes: int,
    cold: bool = False,
    cursor: bytes | None = None,
    ledger: bytes | None = None,
) -> dict:
    """Spawn a run; seconds until its first new line lands in OUT; then let it finish."""
    for path in out.parent.glob(out.stem + ".*"):
        if path != out:
            path.unlink()
    env = ENGINE_ENV
    if ledger is not None:
        OutputPaths(out).ledger.write_bytes(ledger)
    else:
        env = {**ENGINE_ENV, "OCTAVE_LEDGER_INDEX": "false"}
    if cursor is not None:
        OutputPaths(out).rejects.touch()
        saved, _, keys = cursor.partition(b"\0")
        OutputPaths(out).cursor.write_bytes(saved)
        OutputPaths(out).cursor_keys.write_bytes(keys)
    if out.exists():
        os.truncate(out, done_bytes)  # forget the previous measurement's new lines
    if cold:
        drop_cache(*(p for p in (out, csv) if p.exists()))
    first: list[float] = []
    start = time.perf_counter()

    def watch(_pid: int) -> None:
        if not first and out.exists() and out.stat().st_size > done_bytes:
            first.append(time.perf_counter() - start)

    flags = ("--rate", "none", "--concurrency", "8")
    child = run_child(engine_cmd(csv, out, url, *flags), env=env, timeout=600, poll=watch)
    assert child.returncode == 0, child.stderr
    summary = run_summary(out)
    assert summary["counts"]["succeeded"] == NEW, summary["counts"]
    skipped = summary["resume_cursor"]["rows_skipped_unread"]
    assert (skipped > 0) == (cursor is not None), summary["resume_cursor"]
    return {"first_request_s": first[0], "process_s": child.wall, "skipped_unread": skipped}


def scan_memory(out: Path) -> dict:
    """scan_results in a fresh process: its time, the IdSet's size and the RSS it added."""
    code = """
import json, resource, sys, time
from pathlib import Path
import psutil
from octave_bulk.state.scan import scan_results
rss0 = psutil.Process().memory_info().rss
peak0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t = time.perf_counter()
scan = scan_results(Path(sys.argv[1]))
seconds = time.perf_counter() - t
rss1 = psutil.Process().memory_info().rss
peak1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
peak = peak1 - rss0 if peak1 > peak0 else rss1 - rss0
print(json.dumps({"ids": len(scan.done), "lines": scan.lines, "seconds": seconds,
    "nbytes": scan.done.nbytes(), "rss_delta": rss1 - rss0, "peak_delta": peak}))
"""
    result = subprocess.run(
        [sys.executable, "-c", code, str(out)], check=True, capture_output=True, text=True
    )
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--smoke", action="store_true", help="20,000 done lines")
    args = parser.parse_args()
    sizes = [20_000] if args.smoke else sorted(args.sizes)
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp, simulator("--latency", "instant") as sim:
        work = Path(tmp)
        parts = templates(sim.url, work)
        line_bytes = sum(len(b"c-00000".join(p)) for p in parts) / len(parts)
        room = shutil.disk_usage(work).free - 2e9  # keep 2 GB free
        if sizes[-1] * line_bytes * 1.05 > room:
            fit = int(room / (line_bytes * 1.05))
            notes.append(f"disk: {sizes[-1]:,} lines do not fit; largest size cut to {fit:,}")
            sizes = [min(s, fit) for s in sizes]
        out = work / "out.ndjson"

        def case(
            name: str,
            csv: str,
            done: int,
            size: int,
            cold: bool = False,
            cursor: bytes | None = None,
            ledger: bytes | None = None,
        ) -> dict:
            def once() -> tuple[dict, Noise]:
                with Noise() as noise:
                    result = first_request(sim.url, work / csv, out, size, cold, cursor, ledger)
                return result, noise

            result, noise = once() if cold else quietest(once)
            return _row(name, done, size, result, noise)

        new_contacts_csv(work / "new.csv", 0)
        rows.append(case("fresh", "new.csv", 0, 0))
        clear_outputs(out)
        written = 0
        for done in sizes:
            append_lines(out, parts, written, done)
            written = done
            size = out.stat().st_size
            write_contacts(work / "in.csv", done + NEW)
            new_contacts_csv(work / "new.csv", done)
            cursor, ledger, first_index_s = make_cursor(sim.url, work / "in.csv", out, done)
            rows.append(case("resume", "in.csv", done, size, cursor=cursor, ledger=ledger))
            rows.append(case("resume_no_cursor", "in.csv", done, size, ledger=ledger))
            rows.append(case("scan_only", "new.csv", done, size, ledger=ledger))
            rows.append(case("scan_only_no_index", "new.csv", done, size))
            rows.append(
                case("resume_cold", "in.csv", done, size, cold=True, cursor=cursor, ledger=ledger)
            )
            os.truncate(out, size)
            memory = scan_memory(out)
            assert memory["ids"] == done, memory
            for row in rows[-5:]:
                row.update(
                    first_index_s=first_index_s,
                    ledger_bytes_per_contact=len(ledger) / done,
                    idset_bytes_per_id=memory["nbytes"] / done,
                    rss_bytes_per_id=memory["rss_delta"] / done,
                    peak_rss_bytes_per_id=memory["peak_delta"] / done,
                    in_process_scan_s=memory["seconds"],
                )
            print(
                f"{done:,} done lines: resume {rows[-5]['first_request_s']:.2f} s, without the "
                f"cursor {rows[-4]['first_request_s']:.2f} s; new people only: "
                f"{rows[-3]['first_request_s']:.2f} s with the ledger, "
                f"{rows[-2]['first_request_s']:.2f} s scanning OUT; first indexing "
                f"{first_index_s:.1f} s; ledger {len(ledger) / done:.0f} B/contact",
                flush=True,
            )
    extra = {
        "new_contacts": NEW,
        "mean_line_bytes": line_bytes,
        "notes": notes,
        "target": "resume: <= 1 s per 200k done lines; done-set <= 100 bytes per id; "
        "scan_only (ledger) <= 1 s at 1M",
    }
    report("resume", rows, extra, smoke=args.smoke)
    print(f"\nmean line {line_bytes:,.0f} B" + "".join(f"; {n}" for n in notes))
    for row in rows:
        if row["case"] == "resume":
            per = row["s_per_200k"]
            memory = max(row["idset_bytes_per_id"], row["rss_bytes_per_id"])
            print(
                f"{row['done_lines']:,} done lines: first new request after "
                f"{row['first_request_s']:.2f} s = {per:.2f} s per 200k "
                f"(target <= {TARGET_S_PER_200K}): {'met' if per <= TARGET_S_PER_200K else 'MISSED'};"
                f" done-set {row['idset_bytes_per_id']:.1f} B/id, RSS {row['rss_bytes_per_id']:.1f}"
                f" B/id (target <= {TARGET_BYTES_PER_ID}): "
                f"{'met' if memory <= TARGET_BYTES_PER_ID else 'MISSED'}"
            )


def _row(case: str, done: int, size: int, result: dict, noise: Noise) -> dict:
    return {
        "case": case,
        "done_lines": done,
        "out_mb": size / 1e6,
        "first_request_s": result["first_request_s"],
        "s_per_200k": result["first_request_s"] / (done / 200_000) if done else None,
        "target": f"<= {TARGET_S_PER_200K}" if case == "resume" else "",
        "process_s": result["process_s"],
        "rows_skipped_unread": result["skipped_unread"],
        "first_index_s": None,
        "ledger_bytes_per_contact": None,
        "idset_bytes_per_id": None,
        "rss_bytes_per_id": None,
        "peak_rss_bytes_per_id": None,
        "in_process_scan_s": None,
        "steal": noise.steal,
        "others_cores": noise.others,
    }


if __name__ == "__main__":
    main()
