"""The request builder: a :class:`Contact` becomes one request for the run's agent.

The ``requestId`` is the row's own when it has one; otherwise it is derived from the person
key and the content (:mod:`octave_bulk.identity`): the same person with the same content gets
the same id on every run, a change that would change the output a new one, and a change of
CRM ids or of unmapped columns none. It is the resume key and the join key; the person key is
the dedup key within one input (docs/design.md, section "Resume and paying once").
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from octave_bulk.agents import get_agent
from octave_bulk.agents.base import Agent, RequestSpec
from octave_bulk.identity import derive_request_id, person_key
from octave_bulk.input.records import Contact, Reject
from octave_bulk.state.idset import IdSet, id_key

if TYPE_CHECKING:
    from octave_bulk.settings.model import Settings

__all__ = ["BuiltRequest", "RequestBuilder", "build_request", "derive_request_id", "request_spec"]


def request_spec(settings: Settings) -> RequestSpec:
    """The run-wide request fields from settings."""
    return RequestSpec(
        agent_o_id=settings.agent_oid,
        experiment_o_id=settings.experiment_oid,
        output_format=settings.output_format,
        lang=settings.lang,
        context=settings.context,
        instructions=settings.instructions,
        playbook_selection_context=settings.playbook_selection_context,
        include_full_annotation=settings.include_full_annotation,
        url=settings.url,
        prospect_limit=settings.prospect_limit,
        search_context=settings.search_context,
        prospect_minimal=settings.prospect_minimal,
    )


@dataclass(frozen=True, slots=True)
class BuiltRequest:
    """A request that passed the model: its requestId, its done-set key, the body to send,
    the contact as the results record it (the body, plus the row's CRM ids when the agent's
    body leaves them out: a write-back needs them), and its person.

    ``person`` is the ``id_key`` of the person key of ``record`` (:func:`person_key` with the
    run's ``--key`` and agent), None when it names nobody: computed once here, it is the
    dedup key, the re-send guard's, and the ``personKey`` the sink writes (the key files
    written before hold: always taken from the record, never from the wire body)."""

    request_id: str
    key: int
    wire: dict[str, Any]
    record: dict[str, Any]
    person: int | None = None


_CRM_IDS = ("crmContactId", "crmLeadId", "crmAccountId")


def build_request(
    contact: Contact, spec: RequestSpec, agent: Agent | None = None, key_field: str | None = None
) -> BuiltRequest | Reject:
    """Build the request for one contact, or a reject naming the field the model refused
    (``key_field``: ``--key``, for the person)."""
    agent = agent or get_agent()
    body = agent.build_body(contact, spec)
    if isinstance(body, Reject):
        return body
    if not body.get("requestId"):
        body["requestId"] = derive_request_id(body, agent.kind)
    if agent.sends_request_id:
        record = body
        request_id = body["requestId"]
    else:
        request_id = body.pop("requestId")
        kept = _CRM_IDS if agent.subject == "person" else ("crmAccountId",)
        fields = contact.fields
        record = body | {n: fields[n] for n in kept if fields.get(n) and n not in body}
    person = person_key(record, key_field, agent.kind)
    person_id = None if person is None else id_key(person)
    return BuiltRequest(request_id, id_key(request_id), body, record, person_id)


class RequestBuilder:
    """Builds requests row by row; a row for the person of an earlier row (same person key:
    the same email under another CRM record, say), or with its requestId, becomes a
    ``duplicate`` reject naming that row's line (the first one wins, and is sent once) -
    unless ``paid_elsewhere`` says another record of the person, the one paid for before, is
    in the input: then every other record of the person is the duplicate, wherever it stands
    (so a reordered export pays nobody again).

    Args:
        spec: the run-wide request fields.
        expected_rows: input size, to size the table of first lines (~17 bytes per row).
        agent: the agent the requests are for (the Sequence Agent by default).
        key_field: the field that identifies a person (``--key``), else the default key.
        paid_elsewhere: ``(person id, request key) -> why`` the row is a duplicate of a record
            of the same person paid for before and held by this input, or None.
    """

    last: BuiltRequest | None = None
    """The last row's request, also when it came out a duplicate (None for a model reject)."""
    last_person: int | None = None
    """The last row's person id (``BuiltRequest.person``), when it has one."""

    def __init__(
        self,
        spec: RequestSpec,
        expected_rows: int = 1024,
        agent: Agent | None = None,
        key_field: str | None = None,
        paid_elsewhere: Callable[[int, int], str | None] | None = None,
    ) -> None:
        self.spec, self.key_field = spec, key_field
        self.agent = agent or get_agent()
        self._paid_elsewhere = paid_elsewhere
        self._first_line = IdSet(2 * expected_rows, with_values=True)  # ids and persons
        # (key, line) of every first row, in input order, until the resume cursor saves them
        # (see state/cursor.py: a resume that skips the settled prefix still knows its rows).
        self._firsts = array("Q")

    def seed(self, pairs: array[int]) -> None:
        """Rows of a settled prefix skipped unread: ``(key, first line)`` pairs, flat."""
        setdefault = self._first_line.setdefault  # ~1 us a row, for ~20 us not spent reading
        flat = iter(pairs)
        for key, line in zip(flat, flat, strict=False):
            setdefault(key, line)

    def take_firsts(self, up_to_line: int) -> bytes:
        """The first rows recorded since the last call whose line is at most ``up_to_line``,
        as ``(key, line)`` u64 pairs, and forget them."""
        firsts, end = self._firsts, 0
        while end < len(firsts) and firsts[end + 1] <= up_to_line:
            end += 2
        taken = firsts[:end].tobytes()
        del firsts[:end]
        return taken

    def build(self, contact: Contact) -> BuiltRequest | Reject:
        """The request for this row, or why it will not be sent."""
        built = build_request(contact, self.spec, self.agent, self.key_field)
        self.last = self.last_person = None
        if isinstance(built, Reject):
            return built
        line = contact.line
        person_id = built.person
        self.last, self.last_person = built, person_id
        if person_id is not None and self._paid_elsewhere is not None:
            why = self._paid_elsewhere(person_id, built.key)
            if why is not None:
                return Reject(contact.line, "duplicate", "requestId", why, dict(contact.fields))
        first = self._first_line.setdefault(built.key, line)
        what = "request"
        if first == line:
            self._firsts.extend((built.key, line))
            if person_id is not None:
                first = self._first_line.setdefault(person_id, line)
                if first == line:
                    self._firsts.extend((person_id, line))
                    return built
                what = self._person_kind(built.record)
        if first == line:
            return built
        message = f"the same {what} as line {first} (requestId {built.request_id})"
        return Reject(contact.line, "duplicate", "requestId", message, dict(contact.fields))

    def _person_kind(self, record: dict[str, Any]) -> str:
        """``person (email)``, ``company (domain)``...: what a duplicate shares (its person
        key's kind, named only for a duplicate's message)."""
        key = person_key(record, self.key_field, self.agent.kind) or ""
        subject = "company" if self.agent.subject == "company" else "person"
        return f"{subject} ({key.rpartition('|')[2].partition(':')[0]})"
