"""Who a request is for, and what shapes its output: the person key, the content fingerprint
and the requestId derived from both (docs/design.md, section "Resume and paying once").

* **Person key**: the normalised email (the address the sequence is written for), else the
  normalised LinkedIn profile, else the CRM id (``crmContactId``, then ``crmLeadId``). Two rows
  of one person share it, whatever their CRM record ids. ``--person-key FIELD`` makes one field the
  key instead (``crmAccountId`` for company-level work: one request per account). A company
  (the body of a company agent) is keyed by its domain, else its account id, else its name:
  two rows of one domain are one company. Every agent but the Sequence Agent prefixes the
  key with its kind, and puts its kind into the requestId.
* **Content**: every field of the request body that shapes the agent's output (names, title,
  company, domain, language, context, instructions, format, agent, ...), never the CRM ids
  (they name records, not people) nor the ``requestId``. Unmapped input columns never reach
  the body, so a change to the CRM view that adds or drops such a column changes nothing.
* **requestId** = ``op-`` + the first 32 hex digits of SHA-256(person key, content). The same
  person with the same content gets the same id night after night; a real change (a new job
  title, another language) gets a new one, and is paid again.

Ids derived by earlier versions (``ob-`` + a hash of the whole body, CRM ids included) are
*legacy*: :func:`derive_request_id` on the body stored with such a result gives the id this
version would use, so an output written before is adopted without paying anyone again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

__all__ = [
    "LEGACY_PREFIX",
    "content_of",
    "derive_request_id",
    "is_legacy_id",
    "person_key",
    "read_person_hash",
]

_PREFIX = "op-"
LEGACY_PREFIX = "ob-"
"""The prefix of ids derived by versions before the person key (a hash of the whole body)."""
_NOT_CONTENT = frozenset({"requestId", "crmContactId", "crmLeadId", "crmAccountId"})


def person_key(
    body: Mapping[str, Any], field: str | None = None, kind: str = "sequence"
) -> str | None:
    """The person (or company) a request body is for, or None when it names nobody.
    ``field`` (``--person-key``) names the field that identifies it instead (a CRM id for
    company-level work); ``kind``, the agent, prefixes the key of every agent but the
    Sequence Agent (one person enriched and written to are two entries)."""
    key = _key(body, field)
    return key if key is None or kind == "sequence" else f"{kind}|{key}"


def _key(body: Mapping[str, Any], field: str | None) -> str | None:
    if field is not None:
        value = body.get(field)
        return f"{field}:{str(value).strip().lower()}" if value else None
    if email := body.get("email"):
        return "email:" + str(email).strip().lower()
    if linkedin := body.get("linkedInProfile"):
        return "linkedin:" + str(linkedin).strip().lower().rstrip("/")
    for name in ("crmContactId", "crmLeadId"):
        if value := body.get(name):
            return f"crm:{value}"
    # A company (the company agents' bodies hold no person): its domain, account or name.
    if domain := body.get("companyDomain"):
        return "domain:" + str(domain).strip().lower().removeprefix("www.")
    if account := body.get("crmAccountId"):
        return f"account:{account}"
    if company := body.get("companyName"):
        return "company:" + " ".join(str(company).lower().split())
    return None


def read_person_hash(value: object) -> int | None:
    """A ``personKey`` read back (16 hex digits, str or bytes) as its ``id_key``; None when
    absent or malformed."""
    if not isinstance(value, str | bytes) or len(value) != 16:
        return None
    try:
        return int(value, 16) or 1
    except ValueError:
        return None


def content_of(body: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a body that shape the output (the CRM ids and requestId left out)."""
    return {k: v for k, v in body.items() if k not in _NOT_CONTENT}


def derive_request_id(body: Mapping[str, Any], kind: str = "sequence") -> str:
    """The requestId of a body from its agent, person key and content (``requestId``
    ignored); the Sequence Agent's ids leave the agent out (as they always have)."""
    person, content = person_key(body), content_of(body)
    payload = [person, content] if kind == "sequence" else [kind, person, content]
    digest = hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return _PREFIX + digest[:32]


def is_legacy_id(request_id: str) -> bool:
    """Whether an id was derived by an earlier version (see the module docstring)."""
    return request_id.startswith(LEGACY_PREFIX)
