"""Checks before a run pays anyone: the mass re-send guard (how many people already done would
be paid again, and why) and the agent lookup.

Contract: :class:`ResendTally` takes the verdicts of one admission pass over the whole input
(``run/admission.py``: the run's own reader, mapping, request builder and person key) and
sorts each person the output has already done (``StoreView.latest_result``) into
*unchanged* (the requestId is done) or *re-sent* (a new requestId: the content changed);
:func:`check_resend` is that pass alone (``status``, ``validate``). For a sample of the re-sent (:data:`SAMPLE`), it reads their
latest result line and names the fields whose change makes the new id (added, removed or
changed). :class:`ResendReport` carries the numbers; the engine refuses the run (exit 2, before
any call) when the re-sent share of the people done exceeds ``resend_guard`` and
``allow_resend`` is not set (and at least :data:`FEWEST` people would be paid again), and the
dry run reports it.

The pass is the plan's (``run/dry.py``: the dry run, ``plan`` and the run's credit check count
from the same pass), made only when the output has results or the credits need a count, and
the input is a file (stdin cannot be read twice).

:func:`check_agent` looks ``--agent`` up (``GET /api/v2/agents/get``, not paid): one that
does not exist, or is of another type than ``--agent-type``, stops the run with exit 2 and the
right ``--agent-type`` (:func:`agent_problem`, shared with ``doctor``).
"""

from __future__ import annotations

import logging
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from octave_bulk.agents import AGENT_KINDS, get_agent
from octave_bulk.errors import ApiError, ConfigError
from octave_bulk.http.client import OctaveClient
from octave_bulk.identity import content_of
from octave_bulk.input.intake import open_contacts
from octave_bulk.observe.log import log_event
from octave_bulk.run.admission import Admission, Verdict
from octave_bulk.run.summary import RunStats
from octave_bulk.settings.model import Settings
from octave_bulk.state.idset import IdSet
from octave_bulk.state.store import StoreView

__all__ = [
    "FEWEST",
    "SAMPLE",
    "ResendReport",
    "ResendTally",
    "agent_problem",
    "changed_fields",
    "check_agent",
    "check_resend",
    "needs_resend_check",
    "old_contacts",
]

SAMPLE = 50
"""Re-sent people whose old and new content are compared to name the changed fields."""
FEWEST = 10
"""A re-send of fewer people is never a mass re-send, whatever its share."""


@dataclass
class ResendReport:
    """People of the input already done: unchanged, or to be paid again, and why."""

    requests: int = 0  # valid, distinct requests of the input
    unchanged: int = 0  # ... done already (their requestId is)
    resent: int = 0  # ... of people done, with a new requestId
    awaited: int = 0  # ... not done, but an async job submitted for them awaits its result
    changed_fields: Counter[str] = field(default_factory=Counter)  # field -> sampled people
    sampled: int = 0
    paid_present: IdSet = field(default_factory=IdSet)
    """People whose record paid for before is in the input: their other records are
    duplicates of it, wherever they stand (a reordered export pays nobody again)."""
    differing: dict[int, str] = field(default_factory=dict)
    """Person -> the fields in which their other record differs from the paid one (for the
    duplicate's message; at most :data:`SAMPLE` x 20 people)."""

    def paid_elsewhere(self, is_done: Callable[[int], bool]) -> Callable[[int, int], str | None]:
        """The builder's rule (``RequestBuilder(paid_elsewhere=...)``): a record of a person
        whose paid record is in the input, and not that record, is a duplicate of it."""
        present, differing = self.paid_present, self.differing

        def why(person: int, key: int) -> str | None:
            if person not in present or is_done(key):
                return None
            fields = differing.get(person) or "its content"
            return (
                "another record of this person, the one paid for before, is in this input "
                f"and is kept (its answer is in the output); this one differs in {fields}"
            )

        return why

    @property
    def share(self) -> float:
        """The share of the people done that would be paid again."""
        done = self.unchanged + self.resent
        return self.resent / done if done else 0.0

    def trips(self, guard: float) -> bool:
        """Whether this is a mass re-send: more than ``guard`` of the people done, and at
        least :data:`FEWEST` people."""
        return self.resent >= FEWEST and self.share > guard

    def refusal(self, guard: float, results: Path) -> str:
        """Why a run is refused, and what to do."""
        done = self.unchanged + self.resent
        return (
            f"{self.resent:,} of the {done:,} people already done in {results} would be "
            f"paid again ({self.share:.0%}, more than --resend-guard {guard:.0%}): their "
            f"content changed - {self.reasons() or 'see --dry-run'}. Nothing was sent. "
            "If that is what you want (a new language, new instructions), add --allow-resend; "
            "if not, check the export's columns and the mapping (validate shows it)"
        )

    def reasons(self) -> str:
        """The changed fields, most common first: "jobTitle changed (12 of 50 sampled)"."""
        return ", ".join(
            f"{name} ({count} of {self.sampled} sampled)"
            for name, count in self.changed_fields.most_common(5)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "people_done_unchanged": self.unchanged,
            "people_done_resent": self.resent,
            "resent_share": round(self.share, 4),
            "changed_fields": dict(self.changed_fields.most_common()),
            "sampled": self.sampled,
        }


class ResendTally:
    """The re-send guard's count, taken from the verdicts of one admission pass
    (``Admission.admit_all(on_record=tally)``): it sees every valid record the builder made
    (with whether it was kept, not a duplicate) and sorts the people already done.

    :attr:`rule_applies` says whether the builder's ``paid_elsewhere`` rule, unknown during
    the pass (it needs the whole input), would have changed any verdict of it: a record of a
    person whose paid record is in the input, with another requestId. When it would not, the
    pass's verdicts are the run's; when it would, they are re-taken with the rule.
    """

    def __init__(self, state: StoreView) -> None:
        self.report = ResendReport()
        self._state = state
        self._resent = array("Q")  # people done whose first record here has a new requestId
        self._samples: dict[int, tuple[int, dict[str, Any]]] = {}  # old line -> (person, body)
        self._new_keyed = IdSet()  # people with a record of a requestId not done
        self._sent_resent = array("Q")  # ... of them, those the pass would send
        self.rule_applies = False

    def __call__(self, admission: Admission, kept: bool) -> None:
        made = admission.builder.last
        if made is None:
            return
        state, report, person = self._state, self.report, made.person
        done = state.is_done(made.key)
        line = None
        if person is not None:
            if done:
                report.paid_present.add(person)  # a duplicate here too: it still counts
                self.rule_applies = self.rule_applies or person in self._new_keyed
            else:
                self._new_keyed.add(person)
                self.rule_applies = self.rule_applies or person in report.paid_present
            line = state.latest_result(person)
            if line and not done and len(self._samples) < SAMPLE * 20:
                self._samples.setdefault(line, (person, made.wire))  # a person done, content new
        if not kept:
            return
        report.requests += 1
        if done:
            report.unchanged += 1
        elif state.awaiting and made.request_id in state.awaiting:
            report.awaited += 1
        elif line and person is not None:
            self._resent.append(person)  # else a new person
            if admission.verdict is Verdict.SEND:
                self._sent_resent.append(person)

    @property
    def sent_instead(self) -> int:
        """Records the pass would send that the rule makes duplicates (their person's paid
        record is in the input; known after :meth:`close`)."""
        present = self.report.paid_present
        return sum(1 for person in self._sent_resent if person in present)

    def close(self) -> ResendReport:
        """The report, once the pass has read the whole input."""
        report, state = self.report, self._state
        kept = [p for p in self._resent if p in report.paid_present]  # their paid record is here
        report.resent = len(self._resent) - len(kept)
        report.unchanged += len(kept)
        for person, old, new in old_contacts(state, self._samples):
            before, after = content_of(old), content_of(new)
            changes = _changes(before, after)
            if person in report.paid_present:
                report.differing[person] = ", ".join(changes) or "nothing but its CRM ids"
            elif report.sampled < SAMPLE:
                report.sampled += 1
                report.changed_fields.update(changes)
        return report


def needs_resend_check(input_path: str | Path, state: StoreView) -> bool:
    """Whether the guard has anyone to count: the output has results, and the input can be
    read before the run reads it (a file, not stdin)."""
    return bool(state.counts().people) and str(input_path) != "-"


def check_resend(
    input_path: str | Path, settings: Settings, state: StoreView, *, always: bool = False
) -> ResendReport:
    """Count the people of the input already done that would be paid again (see above);
    nothing is read when the output has no results yet, unless ``always`` (``status``). One
    admission pass (the run's verdicts), past any ``--limit``."""
    if not (needs_resend_check(input_path, state) or (always and str(input_path) != "-")):
        return ResendReport()
    tally = ResendTally(state)
    with open_contacts(input_path, settings) as reader:
        Admission(settings, RunStats(), state, follow=False).admit_all(reader, on_record=tally)
    return tally.close()


def changed_fields(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``jobTitle changed``, ``lang added``...: how a person's recorded contact differs from
    the body that would be sent now (their content, CRM ids and requestId left out)."""
    return _changes(content_of(old), content_of(new))


def _changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """``jobTitle changed``, ``lang added``...: how one content differs from another."""
    changes = []
    for name in sorted(before.keys() | after.keys()):
        if name not in before:
            changes.append(f"{name} added")
        elif name not in after:
            changes.append(f"{name} removed")
        elif before[name] != after[name]:
            changes.append(f"{name} changed")
    return changes


def old_contacts(
    state: StoreView, samples: dict[int, tuple[int, dict[str, Any]]]
) -> list[tuple[int, dict[str, Any], dict[str, Any]]]:
    """(sample's first item, old contact, new body) for the sampled results (position ->
    (first item, body))."""
    old = state.result_contacts(samples.keys()) if samples else {}
    return [(samples[at][0], contact, samples[at][1]) for at, contact in old.items()]


async def check_agent(client: OctaveClient, settings: Settings) -> None:
    """Before the first paid call: the agent exists and is of ``--agent-type``
    (``GET /api/v2/agents/get``, not paid). Any other answer (an error, a timeout, no type)
    lets the run go on: the lookup must not cost a night.

    Raises:
        ConfigError: the agent does not exist, or is of another type.
    """
    o_id = settings.agent_oid
    if not settings.check_agent or not o_id:
        return
    found: dict[str, Any] | ApiError
    try:
        found = await client.get_agent_info(o_id)
    except ApiError as exc:
        found = exc
    problem = agent_problem(o_id, settings.agent_type, found)
    if problem is not None:
        raise ConfigError(f"agent {problem} (octave-bulk doctor lists the workspace's agents)")
    if isinstance(found, ApiError):
        log_event("agent_not_checked", level=logging.WARNING, error=found.message[:200])


def agent_problem(o_id: str, kind: str, found: dict[str, Any] | ApiError) -> str | None:
    """Why ``o_id`` cannot be run as ``kind`` - it does not exist (a 404), or is of another
    type - or None (also when the lookup failed otherwise: nothing is known then)."""
    if isinstance(found, ApiError):
        if found.status != 404:
            return None
        return f"{o_id} does not exist in this workspace, or --base-url is wrong (HTTP 404)"
    data = found.get("data")
    actual = data.get("type") if isinstance(data, dict) else None
    expected = get_agent(kind).api_type
    if actual is None or actual == expected:
        return None
    right = [k for k in AGENT_KINDS if get_agent(k).api_type == actual]
    hint = f": run it with --agent-type {right[0]}" if right else ""
    return f"{o_id} is a {actual} agent, not {expected} ({kind}){hint}"
