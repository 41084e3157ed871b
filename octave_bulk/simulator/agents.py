"""The simulator's answers for the agents other than the Sequence Agent.

Contract: :func:`agent_data` returns the ``data`` payload of a successful run of one agent,
deterministic in the request (the same body gets the same answer: scores, firmographics and
people are drawn from a generator seeded with the identity fields), shaped as
docs/octave-api.md describes each agent's response.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

__all__ = ["agent_data"]

_INDUSTRIES = ("Software", "Financial Services", "Logistics", "Healthcare", "Retail", "Media")
_TITLES = ("VP Sales", "Head of Growth", "RevOps Manager", "CTO", "Account Executive", "CMO")
_FIRST = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken")
_LAST = ("Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson")
_QUESTIONS = (
    "Does the company sell to businesses?",
    "Is there a sales team of more than 10 people?",
    "Do they run outbound campaigns?",
)


def agent_data(kind: str, body: dict[str, Any], seed: int) -> dict[str, Any]:
    """The ``data`` of a successful run of agent ``kind`` for this request body."""
    identity = "|".join(
        str(body.get(name) or "")
        for name in ("email", "linkedInProfile", "companyDomain", "companyName", "crmAccountId")
    )
    digest = hashlib.blake2b(f"{seed}:{kind}:{identity}".encode(), digest_size=8).digest()
    rng = random.Random(int.from_bytes(digest, "big"))
    company = _company(body, rng)
    if kind == "enrich-company":
        return {"company": company, "product": _product(rng)}
    if kind == "enrich-person":
        return {"person": _person(body, rng, company), "company": company}
    if kind in ("qualify-person", "qualify-company"):
        return _qualification(body, rng, company, person=kind == "qualify-person")
    if kind == "content":
        name = body.get("firstName") or "there"
        text = f"Hi {name}, a note on how {company['name']} could book more meetings."
        return {"content": text, "jsonContent": {"message": text, "cta": "15 minutes?"}}
    if kind == "call-prep":
        return {
            "personBrief": f"{body.get('firstName', 'They')} leads {body.get('jobTitle', 'sales')}.",
            "companyBrief": f"{company['name']}: {company['employeeCount']} people, "
            f"{company['industry']}.",
            "discoveryQuestions": [{"question": q} for q in _QUESTIONS],
            "callScript": "Open with their outbound goals; ask about pipeline coverage.",
        }
    if kind == "prospector":
        limit = int(body.get("limit") or 5)
        people = [_person({}, rng, company) for _ in range(min(limit, 25))]
        return {"people": people, "total": len(people)}
    raise ValueError(f"no simulated answer for agent {kind!r}")


def _company(body: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    domain = str(body.get("companyDomain") or "example.com")
    name = str(body.get("companyName") or domain.split(".")[0].title())
    rounds = [
        {
            "roundName": name_,
            "roundDate": f"20{18 + n}-0{n + 1}-15",
            "roundAmount": rng.choice((2, 5, 12, 30)) * 1_000_000,
            "roundCurrency": "USD",
            "investorNames": ["Example Ventures"],
            "investorCount": 1,
        }
        for n, name_ in enumerate(("Seed", "Series A", "Series B")[: rng.randint(0, 3)])
    ]
    return {
        "name": name,
        "domain": domain,
        "website": f"https://{domain}",
        "description": f"{name} builds software for revenue teams.",
        "industry": rng.choice(_INDUSTRIES),
        "employeeCount": rng.choice((12, 48, 150, 420, 1800)),
        "followerCount": rng.randint(100, 50_000),
        "founded": rng.randint(1995, 2022),
        "type": "Privately Held",
        "slug": domain.split(".")[0],
        "countryCode": "US",
        "location": {"region": "CA", "locality": "San Francisco", "countryCode": "US"},
        "specialties": ["sales", "automation"],
        "crunchBaseFunding": rounds,
    }


def _person(body: dict[str, Any], rng: random.Random, company: dict[str, Any]) -> dict[str, Any]:
    first = str(body.get("firstName") or rng.choice(_FIRST))
    last = str(body.get("lastName") or rng.choice(_LAST))
    email = body.get("email") or f"{first}.{last}@{company['domain']}".lower()
    return {
        "firstName": first,
        "lastName": last,
        "title": str(body.get("jobTitle") or rng.choice(_TITLES)),
        "email": email,
        "profileUrl": f"https://www.linkedin.com/in/{first}-{last}".lower(),
        "location": "San Francisco, CA",
        "company": {"name": company["name"], "domain": company["domain"]},
    }


def _product(rng: random.Random) -> dict[str, Any]:
    return {
        "oId": "px_sim",
        "name": "Outbound Copilot",
        "matchConfidence": rng.choice(("LOW", "MEDIUM", "HIGH")),
        "qualifyingQuestions": [{"question": q, "fitType": "GOOD"} for q in _QUESTIONS],
    }


def _qualification(
    body: dict[str, Any], rng: random.Random, company: dict[str, Any], *, person: bool
) -> dict[str, Any]:
    answers = [
        {
            "question": q,
            "answer": rng.choice(("Yes", "No", "Unclear")),
            "rationale": "From the company's site.",
            "confidence": rng.choice(("LOW", "MEDIUM", "HIGH")),
        }
        for q in _QUESTIONS
    ]
    score = rng.randint(1, 10)
    data: dict[str, Any] = {
        "score": score,
        "rationale": f"{company['name']} fits {score}/10 on size and motion.",
        "product": {
            "oId": "px_sim",
            "name": "Outbound Copilot",
            "qualification": {"answers": answers, "score": score, "rationale": "Size and motion."},
        },
    }
    if person:
        data["person"] = _person(body, rng, company)
    return data
