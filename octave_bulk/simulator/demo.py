"""``demo``: a real batch against the built-in simulator, with no key and no network.

Writes a sample contact file, serves the simulator on 127.0.0.1 (a free port) at ``fast``
latency with a few percent of faults and a server-side rate limit (so retries and 429s show),
and runs the engine over it with the same code path as ``run``.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

import anyio

from octave_bulk.run.engine import run_batch
from octave_bulk.run.summary import RunSummary
from octave_bulk.settings.model import Settings
from octave_bulk.simulator import SimulatorConfig, parse_faults, parse_latency, parse_rate_limit
from octave_bulk.simulator.server import serve_simulator

__all__ = ["DEMO_FAULTS", "prepare_demo", "run_demo", "write_sample_contacts"]

DEMO_FAULTS = "500=0.02,502=0.01,503=0.01,504=0.01,reset=0.01,truncate=0.01,invalid_json=0.01"
_FIRST = [
    "Ava",
    "Liam",
    "Maya",
    "Noah",
    "Zoe",
    "Ethan",
    "Sofia",
    "Lucas",
    "Mia",
    "Omar",
    "Lena",
    "Ravi",
]
_LAST = ["Chen", "Garcia", "Patel", "Kim", "Muller", "Rossi", "Silva", "Novak", "Okafor", "Berg"]
_COMPANIES = [
    ("Northwind Traders", "northwind.io"),
    ("Globex", "globex.com"),
    ("Initech", "initech.com"),
    ("Acme Analytics", "acme-analytics.com"),
    ("Umbrella Health", "umbrellahealth.co"),
    ("Stark Logistics", "starklogistics.com"),
    ("Wayne Fintech", "waynefintech.io"),
    ("Hooli", "hooli.xyz"),
]
_TITLES = [
    "VP Sales",
    "Head of Growth",
    "RevOps Manager",
    "CRO",
    "Director of Marketing",
    "SDR Lead",
]
_LANGS = ["en"] * 8 + ["es", "de"]


def write_sample_contacts(path: Path, count: int, *, seed: int = 7) -> None:
    """A CSV of ``count`` plausible contacts shaped like a HubSpot export, deterministic by seed."""
    rng = random.Random(seed)
    columns = ["Record ID", "First Name", "Last Name", "Email", "Job Title", "Company Name"]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*columns, "Website URL", "Language"])
        for n in range(count):
            first, last = rng.choice(_FIRST), rng.choice(_LAST)
            company, domain = rng.choice(_COMPANIES)
            email = f"{first.lower()}.{last.lower()}{n}@{domain}"
            title, lang = rng.choice(_TITLES), rng.choice(_LANGS)
            record_id = str(51000 + n)
            writer.writerow(
                [record_id, first, last, email, title, company, f"https://www.{domain}/", lang]
            )


def prepare_demo(out_dir: Path, contacts: int) -> tuple[Path, Path]:
    """Write the sample input and remove an earlier demo's results: (input, output)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    input_path = out_dir / "demo-contacts.csv"
    write_sample_contacts(input_path, contacts)
    # Each demo starts from scratch; its files have names of their own so that it never
    # touches a real run's results in the same directory.
    for stale in out_dir.glob("demo-results.*"):
        stale.unlink()
    return input_path, out_dir / "demo-results.ndjson"


async def run_demo(out_dir: Path, contacts: int, *, progress: bool | None = None) -> RunSummary:
    """Run the demo batch; returns the run summary (files are in ``out_dir``)."""
    input_path, output = await anyio.to_thread.run_sync(prepare_demo, out_dir, contacts)
    config = SimulatorConfig(
        seed=1,
        latency=parse_latency("fast"),
        rate_limit=parse_rate_limit("40/s:4"),
        retry_after_mix=SimulatorConfig().retry_after_mix,
        faults=parse_faults(DEMO_FAULTS),
    )
    with serve_simulator(config) as sim:
        settings = Settings.load(
            base_url=sim.url,
            api_key="demo-key-simulator-only",
            agent_oid="ca_demo",
            rate="50/s",  # above the simulator's 40/s: the adaptive pacer finds the limit
            concurrency=16,
            timeout=10.0,
            max_attempts=6,
            backoff_initial=0.2,
            backoff_max=2.0,
            progress=progress,
            heartbeat_interval=5.0,
        )
        return await run_batch(input_path, output, settings, handle_signals=True)
