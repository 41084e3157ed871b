"""How fast ``export`` turns a results file into a sequencer CSV, and how much memory it needs.

Writes two synthetic results files (1-4 emails per line from the simulator's own content
generator, distinct requestIds): one generated as text, one as HTML. Then each case runs
``export_results`` in a fresh child process, so that peak RSS belongs to that export alone:

* ``text -> text``  (generic preset): the common case, bodies kept as written;
* ``text -> html``  (instantly preset): paragraphs turned into ``<p>``/``<br>``;
* ``html -> text``  (lemlist preset): HTML stripped, the most work per cell.

    python benchmarks/bench_export.py            # 100,000 lines
    python benchmarks/bench_export.py --smoke    # 5,000 lines, for CI
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
from _common import report

from octave_bulk.agents.sequence import SequenceRequest
from octave_bulk.export import export_results
from octave_bulk.simulator.content import generate_data

FIRST = ["Alex", "Maria", "Jonas", "Priya", "Zoë", "Kwame", "Inés", "Li", "Sam", "Chloé"]
LAST = ["Chen", "Lopez", "Müller", "Raman", "O'Brien", "Mensah", "Núñez", "Wei", "Taylor", "Dubois"]
TITLES = ["VP Engineering", "Head of RevOps", "CTO", "Director, Sales", "Founder & CEO"]
CASES = {
    "text -> text": ("text", "generic", "text"),
    "text -> html": ("text", "instantly", "html"),
    "html -> text": ("html", "lemlist", "text"),
}
DISTINCT = 500  # distinct generated sequences, reused with new ids (generation is not measured)


def generate(path: Path, lines: int, output_format: str) -> None:
    """A results file as the engine writes it, streamed."""
    templates = []
    for i in range(DISTINCT):
        contact = {
            "email": f"person{i}@company{i}.com",
            "firstName": FIRST[i % 10],
            "lastName": LAST[(i // 10) % 10],
            "jobTitle": TITLES[i % 5],
            "companyName": f"Company {i}, Inc.",
            "companyDomain": f"company{i}.com",
            "outputFormat": output_format,
            "agentOId": "ca_bench",
        }
        rng = random.Random(i)
        data = generate_data(SequenceRequest.model_validate(contact), rng, rng.randint(1, 4))
        templates.append((contact, data))
    stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    with path.open("wb", buffering=1 << 20) as handle:
        for n in range(lines):
            contact, data = templates[n % DISTINCT]
            rid = f"ob-{n:032x}"
            record = {
                "requestId": rid,
                "contact": {**contact, "requestId": rid},
                "response": {
                    "_metadata": {"requestId": f"sim_{n:016x}", "usage": 1.0},
                    "found": True,
                    "message": f"Generated {len(data['emails'])} emails",
                    "data": data,
                },
                "attempts": 1,
                "latencyMs": 41.7,
                "completedAt": stamp,
            }
            handle.write(orjson.dumps(record) + b"\n")


def measure(case: str, path: Path, out: Path) -> dict[str, object]:
    """Run one export here and return its figures (called in a child process)."""
    _, preset, body_format = CASES[case]
    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # after the imports
    start = time.perf_counter()
    result = export_results(path, out, preset=preset, body_format=body_format)  # type: ignore[arg-type]
    wall = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "case": case,
        "preset": preset,
        "rows": result.rows,
        "steps": result.steps,
        "seconds": wall,
        "rows_per_s": result.rows / wall,
        "input_mb_per_s": path.stat().st_size / 1e6 / wall,
        "csv_mb": out.stat().st_size / 1e6,
        "peak_rss_mib": peak_kib / 1024,
        "baseline_rss_mib": baseline_kib / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--smoke", action="store_true", help="a short run for CI")
    parser.add_argument("--case", choices=list(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(measure(args.case, args.file, args.out)))
        return
    lines = 5_000 if args.smoke else args.lines
    rows = []
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = {fmt: Path(tmp) / f"results-{fmt}.ndjson" for fmt in ("text", "html")}
        for fmt, path in files.items():
            generate(path, lines, fmt)
            sizes[fmt] = path.stat().st_size / 1e6
        for case, (fmt, _, _) in CASES.items():
            out = Path(tmp) / "export.csv"
            cmd = [sys.executable, __file__, "--case", case, "--file", str(files[fmt])]
            done = subprocess.run([*cmd, "--out", str(out)], check=True, capture_output=True)
            rows.append(json.loads(done.stdout.decode().splitlines()[-1]))
    extra = {"input_lines": lines, "input_mb": sizes}
    report("export", rows, extra, smoke=args.smoke)
    common = rows[0]
    print(
        f"\nexport: {common['rows_per_s']:,.0f} rows/s ({common['case']}, {lines:,} lines, "
        f"{sizes['text']:,.0f} MB), peak RSS {common['peak_rss_mib']:,.0f} MiB"
    )


if __name__ == "__main__":
    main()
