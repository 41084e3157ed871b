"""Deterministic, personalised email sequences for the simulator.

The text is built from phrase banks per language (en, es, fr, de), filled with the contact's
fields, so the same (seed, requestId) always gives the same sequence. A step that receives
runtime context quotes it in its opening; a step that receives instructions echoes them in its
P.S., so tests and users can see that the per-step keys reached the right email.
"""

from __future__ import annotations

import random
from typing import Any

from octave_bulk.agents.fields import OutputFormat
from octave_bulk.agents.sequence import SequenceRequest

__all__ = ["SUPPORTED_LANGS", "generate_data"]

_BANKS: dict[str, dict[str, list[str]]] = {
    "en": {
        "defaults": ["a revenue leader", "your company"],
        "greeting": ["Hi {first},", "Hello {first},", "{first}, hi"],
        "subject": [
            "A faster path to pipeline for {company}",
            "{first}, quick idea for the {company} team",
            "How {peer} cut ramp time by a third",
            "Worth a look for your {title} priorities",
            "Following up on the {company} pipeline question",
            "One last note before I close the loop",
            "A short case study you can forward internally",
        ],
        "opening": [
            "I have been following how {company} approaches growth this year.",
            "Teams like yours at {company} usually hit the same wall around outbound quality.",
            "As {title}, you probably spend more time on pipeline reviews than you would like.",
            "I wanted to share something specific to {company} rather than another generic pitch.",
        ],
        "context": ["I read that {excerpt}, which is why I thought of you."],
        "body": [
            "Most revenue teams we work with were writing every sequence by hand.",
            "Reps spent hours researching accounts before a single email went out.",
            "Our platform turns your positioning into messaging that sounds like your best rep.",
            "It pulls account research, persona fit and recent signals into every draft.",
            "Customers usually see reply rates climb within the first two weeks.",
            "The playbooks stay consistent even as the team grows quickly.",
            "Managers finally get a clear view of which messages actually convert.",
            "Nothing changes in your CRM; the sequences drop into the tools you already use.",
            "{peer} used it to enter a new segment without hiring extra writers.",
            "The setup takes an afternoon and your team keeps full editorial control.",
        ],
        "closing": [
            "Happy to share how this could look for {company}.",
            "If the timing is wrong, tell me and I will step back.",
            "I think it could save your team a meaningful amount of time.",
        ],
        "cta": [
            "Open to a 15-minute call next week?",
            "Would it be worth comparing notes on Thursday?",
            "Should I send over a two-page summary instead?",
        ],
        "ps": [
            "P.S. {peer} shared their results publicly if you want proof first.",
            "P.S. No slides, just a short conversation.",
        ],
        "instr": ["P.S. Written as requested: {excerpt}."],
        "signature": ["Best,\nJordan Avery\nAccount Executive"],
    },
    "es": {
        "defaults": ["responsable comercial", "tu empresa"],
        "greeting": ["Hola {first},", "Buenos días, {first}:"],
        "subject": [
            "Una idea rápida para el equipo de {company}",
            "{first}, más pipeline con menos esfuerzo en {company}",
            "Cómo {peer} redujo su tiempo de prospección",
            "Seguimiento sobre la pregunta de pipeline de {company}",
            "Una última nota antes de cerrar el tema",
        ],
        "opening": [
            "He seguido de cerca cómo {company} está creciendo este año.",
            "Como {title}, seguramente dedicas demasiado tiempo a revisar el pipeline.",
            "Quería compartir algo concreto para {company} en lugar de otro mensaje genérico.",
        ],
        "context": ["Leí que {excerpt}, y por eso pensé en ti."],
        "body": [
            "La mayoría de los equipos comerciales escribían cada secuencia a mano.",
            "Los comerciales pasaban horas investigando cuentas antes de enviar un correo.",
            "Nuestra plataforma convierte tu posicionamiento en mensajes que suenan a tu mejor vendedor.",
            "Reúne investigación de la cuenta, encaje de persona y señales recientes en cada borrador.",
            "Los clientes suelen ver más respuestas en las dos primeras semanas.",
            "Los playbooks se mantienen coherentes aunque el equipo crezca rápido.",
            "{peer} lo usó para entrar en un nuevo segmento sin contratar redactores.",
            "La configuración lleva una tarde y tu equipo mantiene el control editorial.",
        ],
        "closing": [
            "Con gusto te muestro cómo podría funcionar en {company}.",
            "Si no es buen momento, dímelo y no insisto.",
        ],
        "cta": ["¿Te viene bien una llamada de 15 minutos la próxima semana?"],
        "ps": ["P.D. {peer} publicó sus resultados si prefieres verlos antes."],
        "instr": ["P.D. Escrito según lo pedido: {excerpt}."],
        "signature": ["Saludos,\nJordan Avery\nEjecutivo de cuentas"],
    },
    "fr": {
        "defaults": ["responsable commercial", "votre entreprise"],
        "greeting": ["Bonjour {first},"],
        "subject": [
            "Une idée rapide pour l'équipe de {company}",
            "{first}, plus de pipeline avec moins d'effort",
            "Comment {peer} a réduit son temps de prospection",
            "Suite à ma question sur le pipeline de {company}",
        ],
        "opening": [
            "Je suis de près la croissance de {company} cette année.",
            "En tant que {title}, vous passez sans doute trop de temps sur le pipeline.",
        ],
        "context": ["J'ai lu que {excerpt}, et j'ai tout de suite pensé à vous."],
        "body": [
            "La plupart des équipes commerciales écrivaient chaque séquence à la main.",
            "Les commerciaux passaient des heures à étudier les comptes avant le premier envoi.",
            "Notre plateforme transforme votre positionnement en messages efficaces.",
            "Elle réunit la recherche sur le compte, le persona et les signaux récents.",
            "Nos clients voient souvent plus de réponses dès les deux premières semaines.",
            "{peer} l'a utilisée pour aborder un nouveau segment sans recruter.",
            "La mise en place prend un après-midi et votre équipe garde la main.",
        ],
        "closing": ["Je peux vous montrer ce que cela donnerait pour {company}."],
        "cta": ["Auriez-vous 15 minutes la semaine prochaine ?"],
        "ps": ["P.S. {peer} a publié ses résultats si vous voulez des preuves."],
        "instr": ["P.S. Rédigé comme demandé : {excerpt}."],
        "signature": ["Bien à vous,\nJordan Avery\nResponsable de comptes"],
    },
    "de": {
        "defaults": ["Vertriebsleitung", "Ihr Unternehmen"],
        "greeting": ["Hallo {first},", "Guten Tag {first},"],
        "subject": [
            "Eine kurze Idee für das Team von {company}",
            "{first}, mehr Pipeline mit weniger Aufwand",
            "Wie {peer} die Recherchezeit halbiert hat",
            "Nachfrage zur Pipeline bei {company}",
        ],
        "opening": [
            "Ich verfolge schon länger, wie {company} in diesem Jahr wächst.",
            "Als {title} verbringen Sie vermutlich zu viel Zeit mit Pipeline-Reviews.",
        ],
        "context": ["Ich habe gelesen, dass {excerpt}, deshalb dachte ich an Sie."],
        "body": [
            "Die meisten Vertriebsteams haben jede Sequenz von Hand geschrieben.",
            "Vertriebler recherchierten stundenlang, bevor die erste E-Mail rausging.",
            "Unsere Plattform macht aus Ihrer Positionierung überzeugende Nachrichten.",
            "Sie bündelt Account-Recherche, Persona und aktuelle Signale in jedem Entwurf.",
            "Kunden sehen meist schon in den ersten zwei Wochen mehr Antworten.",
            "{peer} ist damit in ein neues Segment eingestiegen, ohne neue Texter.",
            "Die Einrichtung dauert einen Nachmittag, und Ihr Team behält die Kontrolle.",
        ],
        "closing": ["Gern zeige ich Ihnen, wie das für {company} aussehen könnte."],
        "cta": ["Hätten Sie nächste Woche 15 Minuten Zeit?"],
        "ps": ["P.S. {peer} hat die Ergebnisse öffentlich geteilt."],
        "instr": ["P.S. Wie gewünscht verfasst: {excerpt}."],
        "signature": ["Viele Grüße\nJordan Avery\nAccount Executive"],
    },
}

SUPPORTED_LANGS = frozenset(_BANKS)
_PEERS = ["Northwind", "Acme Analytics", "Globex", "Initech", "Umbrella Health", "Stark Logistics"]


def _excerpt(text: str, words: int = 12) -> str:
    parts = text.split()
    short = " ".join(parts[:words])
    return short.rstrip(".,;:") + ("..." if len(parts) > words else "")


def _step_text(mapping: dict[str, str] | None, step: int) -> str:
    """What reaches one step: the ``all`` text and the step's own, each shortened."""
    if not mapping:
        return ""
    texts = (mapping.get(key, "") for key in ("all", str(step)))
    return "; ".join(_excerpt(text) for text in texts if text.strip())


def _format(sections: list[str], fmt: OutputFormat) -> str:
    if fmt is OutputFormat.HTML:
        return "".join(f"<p>{s.replace(chr(10), '<br>')}</p>" for s in sections)
    if fmt is OutputFormat.MARKDOWN:
        *head, cta, ps, signature = sections
        return "\n\n".join([*head, f"**{cta}**", f"_{ps}_", signature])
    return "\n\n".join(sections)


def _email(
    rng: random.Random,
    bank: dict[str, list[str]],
    fill: dict[str, str],
    step: int,
    req: SequenceRequest,
) -> dict[str, Any]:
    def pick(key: str) -> str:
        return rng.choice(bank[key]).format(**fill)

    subject = bank["subject"][(step - 1 + rng.randrange(2)) % len(bank["subject"])].format(**fill)
    opening = pick("opening")
    context = _step_text(req.runtime_context, step)
    if context:
        opening = f"{opening} " + bank["context"][0].format(excerpt=context)
    instructions = _step_text(req.runtime_instructions, step)
    ps = bank["instr"][0].format(excerpt=instructions) if instructions else pick("ps")
    sections = {"greeting": pick("greeting"), "opening": opening}
    body_lines = rng.sample(bank["body"], k=min(len(bank["body"]), rng.randint(2, 4)))
    sections["body"] = " ".join(line.format(**fill) for line in body_lines)
    sections |= {"closing": pick("closing"), "cta": pick("cta"), "ps": ps}
    sections["signature"] = pick("signature")
    fmt = req.output_format or OutputFormat.TEXT
    return {
        "email": _format(list(sections.values()), fmt),
        "subject": subject,
        "coreValueProp": rng.choice(bank["body"][2:5]).format(**fill),
        "sections": sections,
    }


def generate_data(req: SequenceRequest, rng: random.Random, n_emails: int) -> dict[str, Any]:
    """The ``data`` object of a sequence response for one request.

    Args:
        req: the validated request (contact fields, context, instructions, format, lang).
        rng: a generator seeded from (seed, requestId), so content is reproducible.
        n_emails: how many steps to write.
    """
    lang = (req.lang or "en").split("-")[0].lower()
    bank = _BANKS.get(lang, _BANKS["en"])
    email_local = (req.email or "").partition("@")[0].split(".")[0].capitalize()
    fill = {
        "first": req.first_name or email_local or "there",
        "company": req.company_name or req.company_domain or bank["defaults"][1],
        "title": req.job_title or bank["defaults"][0],
        "peer": rng.choice(_PEERS),
    }
    emails = [_email(rng, bank, fill, step, req) for step in range(1, n_emails + 1)]
    company = fill["company"]
    return {
        "emails": emails,
        "product": {
            "data": {
                "type": "PRODUCT",
                "internalName": "Sequencer Pro",
                "summary": "AI-written outbound sequences grounded in your positioning.",
                "capabilities": ["Account research", "Sequence writing"],
                "differentiatedValue": ["Sounds like your best rep"],
                "statusQuo": ["Generic templates"],
                "challengesAddressed": ["Low reply rates"],
                "customerBenefits": ["More pipeline per rep"],
                "customFields": [],
            },
            "oId": "px_sim0001",
            "name": "Sequencer Pro",
            "internalName": "Sequencer Pro",
            "description": "Outbound messaging platform",
            "primaryUrl": "https://www.example.com",
            "qualifyingQuestions": [
                {
                    "question": f"Does {company} run outbound at scale?",
                    "rationale": "Volume makes hand-written sequences expensive.",
                    "fitType": "GOOD",
                    "weight": "MEDIUM",
                    "archivedAt": None,
                }
            ],
            "matchConfidence": rng.choice(["LOW", "MEDIUM", "HIGH"]),
            "matchAnalysis": f"{company} matches the outbound-heavy profile.",
        },
        "playbook": {
            "oId": "pb_sim0001",
            "name": "Outbound efficiency",
            "description": "For teams scaling outbound without scaling headcount.",
            "type": "LEGACY",
            "keyInsight": ["Research time is the hidden cost of outbound."],
            "matchConfidence": "MEDIUM",
            "matchAnalysis": f"The {fill['title']} role owns pipeline targets.",
        },
        "persona": {
            "oId": "pe_sim0001",
            "name": "Sales leader",
            "internalName": "Sally the Sales Leader",
            "qualifyingQuestions": [],
            "matchConfidence": "MEDIUM",
            "matchAnalysis": "Title suggests ownership of the sales process.",
        },
        "outputType": "SCOPED_PLAYBOOK",
        "annotations": {
            "annotations": [
                {
                    "type": "WEBSITE",
                    "title": f"{company} homepage",
                    "meta": None,
                    "description": "Company overview",
                    "url": f"https://{req.company_domain or 'example.com'}",
                }
            ],
            "metadata": None,
        },
    }
