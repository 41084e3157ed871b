"""The plan pass and the dry run: every row read, mapped, validated, built and admitted as
``run`` would (``run/admission.py``), the re-send guard's numbers from the same pass, and the
async jobs the output awaits (not counted as to send); nothing sent, nothing written (the
output's files are read, never repaired: a run may be going).

Contract: :func:`plan_input` makes one admission pass over the input with the re-send guard's
tally (``guard.ResendTally``) when the output has results. The builder's ``paid_elsewhere``
rule needs the whole input, so the pass runs without it; when the tally says the rule would
have changed a verdict (a person's paid record is in the input beside another of their
records), an exact plan (``exact``: the dry run, ``plan``) takes the verdicts again in a second
pass with the rule - the run's own - while the run's credit check takes the first pass's count
less the records the rule turns into duplicates. So the input is read once to plan (twice in
that rare case), and the run reads it once more to send.

With a shared ledger (``--ledger postgresql://``), :func:`shared_view` reads the job's view
from the database (read only), and the plan counts against it instead of the output's files.

With ``listing``, every contact the pass would send is listed with why it would be paid
(:class:`PaidContact`: new, ``<field> changed``, failed before, outcome unknown, a lost job).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from octave_bulk.identity import person_key
from octave_bulk.input.intake import open_contacts
from octave_bulk.run.admission import Admission, WorkItem
from octave_bulk.run.guard import (
    ResendReport,
    ResendTally,
    changed_fields,
    needs_resend_check,
    old_contacts,
)
from octave_bulk.run.summary import RunStats, RunSummary, completed_exit
from octave_bulk.settings.model import Settings
from octave_bulk.state.file_view import read_state
from octave_bulk.state.idset import id_key
from octave_bulk.state.jobs import load_jobs
from octave_bulk.state.paths import OutputPaths
from octave_bulk.state.preflight import check_agent_of_output
from octave_bulk.state.store import StoreView

__all__ = [
    "InputPlan",
    "PaidContact",
    "awaited_jobs",
    "dry_plan",
    "dry_run",
    "plan_input",
    "shared_view",
]

_WHO = ("email", "linkedInProfile", "companyDomain", "companyName", "crmContactId", "crmLeadId")


@dataclass(frozen=True, slots=True)
class PaidContact:
    """One contact a run would pay for, and why."""

    line: int
    """The input line of its record."""
    request_id: str
    who: str
    """Its email, LinkedIn profile, domain, company name or CRM id (the first it has)."""
    reason: str
    """``new``, ``jobTitle changed`` (the fields in which the recorded contact differs),
    ``failed before``, ``outcome unknown``, or ``job lost, submitted again``."""

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "requestId": self.request_id, "who": self.who} | {
            "reason": self.reason
        }


@dataclass
class InputPlan:
    """What one plan of the input found."""

    stats: RunStats
    resend: ResendReport
    example: dict[str, Any] | None = None
    """The first request the run would send (as recorded)."""
    paid: list[PaidContact] | None = None
    """With ``listing``: every contact to send, in input order."""
    passes: int = 1
    """Passes over the input the plan made."""
    sent_instead: int = 0
    """Of ``stats.queued``, records the run makes duplicates (an inexact plan only)."""
    _sent: list[tuple[int, WorkItem]] = field(default_factory=list, repr=False)

    @property
    def to_send(self) -> int:
        """Contacts the run would send."""
        return self.stats.queued - self.sent_instead


def awaited_jobs(paths: OutputPaths, state: StoreView) -> list[str]:
    """The requestIds of the async jobs the output awaits (submitted, no result yet): a run
    polls them and never pays for them again (read-only: the jobs file is not compacted)."""
    jobs = load_jobs(paths.jobs) if paths.jobs.exists() else []
    return [job.request_id for job in jobs if not state.is_done(id_key(job.request_id))]


def plan_input(
    input_path: str | Path,
    settings: Settings,
    state: StoreView,
    *,
    exact: bool = True,
    listing: bool = False,
) -> InputPlan:
    """The input admitted as the run would admit it (see the module docstring)."""
    tally = ResendTally(state) if needs_resend_check(input_path, state) else None
    plan = _admit(input_path, settings, state, tally, None, listing)
    resend = tally.close() if tally is not None else ResendReport()
    plan.resend = resend
    if tally is not None and tally.rule_applies:
        if exact:
            rule = resend.paid_elsewhere(state.is_done)
            plan = _admit(input_path, settings, state, None, rule, listing)
            plan.resend, plan.passes = resend, 2
        else:
            plan.sent_instead = tally.sent_instead
    if listing:
        plan.paid = _reasons(plan._sent, settings, state)
    plan._sent = []
    return plan


def _admit(
    input_path: str | Path,
    settings: Settings,
    state: StoreView,
    tally: ResendTally | None,
    rule: Any,
    listing: bool,
) -> InputPlan:
    """One admission pass."""
    plan = InputPlan(RunStats(), ResendReport())
    sent = plan._sent

    def on_send(item: WorkItem, line: int) -> None:
        if plan.example is None:
            plan.example = item.contact
        if listing:
            sent.append((line, item))

    with open_contacts(input_path, settings) as reader:
        admission = Admission(settings, plan.stats, state, paid_elsewhere=rule, follow=False)
        admission.admit_all(reader, on_record=tally, on_send=on_send)
    return plan


def _reasons(
    sent: list[tuple[int, WorkItem]], settings: Settings, state: StoreView
) -> list[PaidContact]:
    """Why each contact to send would be paid (the recorded contacts of the people whose
    content changed are read from the results file, in one pass)."""
    unknown = frozenset(state.outcome_unknown)
    paid: list[PaidContact] = []
    changed: dict[int, tuple[int, dict[str, Any]]] = {}  # result line -> (index, new contact)
    for line, item in sent:
        key = id_key(item.request_id)
        reason = "new"
        if item.request_id in unknown:
            reason = "outcome unknown"
        elif state.failed_before(key):
            reason = "failed before"
        elif state.lost_jobs and item.request_id in state.lost_jobs:
            reason = "job lost, submitted again"
        else:
            person = item.person
            if person is None:
                found = person_key(item.contact, settings.key, settings.agent_type)
                person = None if found is None else id_key(found)
            at = state.latest_result(person) if person is not None else None
            if at:
                reason = "content changed"
                changed[at] = (len(paid), item.contact)
        who = next((str(item.contact[n]) for n in _WHO if item.contact.get(n)), "")
        paid.append(PaidContact(line, item.request_id, who, reason))
    for index, old, new in old_contacts(state, changed):
        fields = changed_fields(old, new)
        if fields:
            entry = paid[index]
            paid[index] = PaidContact(entry.line, entry.request_id, entry.who, ", ".join(fields))
    return paid


def dry_plan(
    input_path: str | Path,
    paths: OutputPaths,
    settings: Settings,
    *,
    listing: bool = False,
    shared: StoreView | None = None,
) -> tuple[RunSummary, InputPlan]:
    """The dry run's summary, and the plan it counts (an output that holds another agent's
    results is refused, as a run would be). ``shared``: the shared ledger's view of the job
    (``--ledger postgresql://``), counted against instead of the output's files."""
    if shared is not None:
        state, awaited = shared, list(shared.awaiting)
    else:
        check_agent_of_output(paths, settings.agent_type)
        # Read-only: a dry run must not repair (or race) the files of a run that may be going.
        file_state = read_state(paths, settings.ledger)
        awaited = awaited_jobs(paths, file_state)
        file_state.awaiting = frozenset(awaited)  # polled by the run, never submitted again
        state = file_state
    plan = plan_input(input_path, settings, state, listing=listing)
    stats = plan.stats
    rule = completed_exit(stats, settings.exit_conditions)
    summary = RunSummary.from_document(
        stats.summary(
            dry_run=True,
            resend=plan.resend.to_dict(),
            would_send=plan.to_send,
            awaiting=len(awaited),
            example_request=plan.example,
            exit_code=rule.code,
            exit_rule=rule.to_dict(),
            settings=settings.redacted(),
        )
    )
    return summary, plan


async def shared_view(settings: Settings) -> StoreView | None:
    """The shared ledger's view of the job (``--ledger postgresql://``), else None."""
    if settings.ledger_url is None:
        return None
    from octave_bulk.state.pg.plan_view import plan_view

    return await plan_view(settings)


def dry_run(
    input_path: str | Path,
    paths: OutputPaths,
    settings: Settings,
    shared: StoreView | None = None,
) -> RunSummary:
    """Read and build every request, print nothing, send nothing, write nothing."""
    return dry_plan(input_path, paths, settings, shared=shared)[0]
