"""Helpers for engine tests: contact files, settings for a simulator, reading outputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from octave_bulk.settings import Settings
from tests.conftest import TEST_KEY


def write_contacts(path: Path, count: int, *, start: int = 0, ids: bool = True) -> list[str]:
    """A canonical-column CSV; returns the requestIds (explicit ones when ``ids``)."""
    rids = [f"c-{n:05d}" for n in range(start, start + count)]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["requestId", "email", "firstName", "lastName", "companyName", "jobTitle"])
        for n, rid in zip(range(start, start + count), rids, strict=True):
            writer.writerow(
                [rid if ids else "", f"p{n}@example.com", f"First{n}", "Doe", "Acme", "VP"]
            )
    return rids


def sim_settings(url: str, **overrides: Any) -> Settings:
    """Settings for a run against a simulator: fast retries, no progress bar."""
    base: dict[str, Any] = {
        "base_url": url,
        "api_key": TEST_KEY,
        "agent_oid": "ca_test",
        "rate": "none",
        "concurrency": 8,
        "timeout": 5.0,
        "backoff_initial": 0.01,
        "backoff_max": 0.2,
        "progress": False,
        "fsync_interval": 0.05,
    }
    return Settings.load(**(base | overrides))


def read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    raw = path.read_bytes()
    assert raw == b"" or raw.endswith(b"\n"), f"{path.name} ends with a torn line"
    return [json.loads(line) for line in raw.splitlines()]


def side(out: Path, suffix: str) -> Path:
    return out.with_name(out.stem + suffix)
