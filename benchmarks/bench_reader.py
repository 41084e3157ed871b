"""How fast the contact reader goes on a big HubSpot-like export, and how much memory it needs.

Writes a realistic CSV (HubSpot headers, 10 columns, accented names with ASCII mailboxes,
50,000 company domains, quoted cells, one row in 200 with a bad email) to a temporary directory, then measures, each in a
fresh child process so that peak RSS belongs to that stage alone:

* ``reader``: ``ContactReader`` end to end (decode, CSV, mapping, derivations, email_validator);
* ``validate``: ``validate_input`` (the reader plus the request model, duplicate ids and the
  rejects file), whose id set grows with the input by design.

    python benchmarks/bench_reader.py            # 1,000,000 rows
    python benchmarks/bench_reader.py --smoke    # 20,000 rows, for CI
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

from _common import report

from octave_bulk.agents.base import RequestSpec
from octave_bulk.input.reader import ContactReader, ReaderOptions
from octave_bulk.input.records import Contact
from octave_bulk.input.validate import validate_input

HEADERS = [
    "Record ID", "First Name", "Last Name", "Email", "Phone Number", "Job Title",
    "Company Name", "Website URL", "Lifecycle Stage", "Contact owner",
]  # fmt: skip
FIRST = ["Alex", "Maria", "Jonas", "Priya", "Zoë", "Kwame", "Inés", "Li", "Sam", "Chloé"]
LAST = ["Chen", "Lopez", "Müller", "Raman", "O'Brien", "Mensah", "Núñez", "Wei", "Taylor", "Dubois"]
TITLES = ["VP Engineering", "Head of RevOps", "CTO", "Director, Sales", "Founder & CEO"]
STAGES = ["Lead", "Marketing Qualified Lead", "Opportunity", "Customer", "Subscriber"]


def ascii_fold(name: str) -> str:
    """``Zoë`` -> ``zoe``: mailbox names are ASCII in practice even when names are not."""
    return unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()


def generate(path: Path, rows: int) -> None:
    """A HubSpot-like export, written as a stream."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(HEADERS)
        for i in range(rows):
            company = f"company{i * 7919 % 50_000}"
            first, last = FIRST[i % 10], LAST[(i // 10) % 10]
            mailbox = f"{ascii_fold(first)}.{ascii_fold(last)}{i}"
            email = f"{mailbox}@{company}.com" if i % 200 else f"{mailbox}@@{company}.com"
            writer.writerow(
                [
                    str(100_000_000 + i),
                    first,
                    last,
                    email,
                    f"+1 555 {i % 10_000:04d}",
                    TITLES[i % 5],
                    f"{company.title()}, Inc.",
                    f"https://www.{company}.com/about",
                    STAGES[i % 5],
                    "Jane Owner",
                ]
            )


def measure(stage: str, path: Path) -> dict[str, object]:
    """Run one stage here and return its figures (called in a child process)."""
    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # after the imports
    start = time.perf_counter()
    if stage == "reader":
        with ContactReader(path, ReaderOptions()) as reader:
            valid = sum(1 for item in reader if isinstance(item, Contact))
        read = reader.rows_read
    else:
        spec = RequestSpec(agent_o_id="ca_bench")
        result = validate_input(path, ReaderOptions(), spec, path.with_suffix(".rejects.ndjson"))
        read, valid = result.read, result.valid
    wall = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "stage": stage,
        "rows": read,
        "valid": valid,
        "seconds": wall,
        "rows_per_s": read / wall,
        "peak_rss_mib": peak_kib / 1024,
        "baseline_rss_mib": baseline_kib / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--smoke", action="store_true", help="a short run for CI")
    parser.add_argument("--stage", choices=["reader", "validate"], help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(measure(args.stage, args.file)))
        return
    rows = 20_000 if args.smoke else args.rows
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hubspot_contacts.csv"
        generate(path, rows)
        size_mb = path.stat().st_size / 1e6
        results = []
        for stage in ("reader", "validate"):
            cmd = [sys.executable, __file__, "--stage", stage, "--file", str(path)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results.append(json.loads(out.splitlines()[-1]))
    report("reader", results, {"input_rows": rows, "input_mb": size_mb}, smoke=args.smoke)
    reader = results[0]
    print(
        f"\nContactReader: {reader['rows_per_s']:,.0f} rows/s on {rows:,} rows ({size_mb:,.0f} MB), "
        f"peak RSS {reader['peak_rss_mib']:,.0f} MiB"
    )


if __name__ == "__main__":
    main()
