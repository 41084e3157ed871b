"""Normalisers for contact identity values: email, LinkedIn URL, website and company domain.

Contract: pure functions on one value, no I/O. :func:`normalize_email` trims the address and
lowercases its domain (the local part kept as written); :func:`check_email` says why an address
is invalid (``email_validator`` without DNS) or returns None; :func:`normalize_linkedin` turns
any form of profile URL into ``https://www.linkedin.com/in/<slug>`` or raises ``ValueError``;
:func:`website_domain` is the bare host of a website value (None when it is no host name, like
``N/A``); :func:`business_domain` is the domain of an email unless a free-mail provider's
(:data:`FREE_MAIL_DOMAINS` and their national variants); :func:`language_code` turns a
language's name into its ISO 639-1 code (``langcodes`` with its bundled ``language-data``).
"""

from __future__ import annotations

import functools
import re

from email_validator import EmailNotValidError, validate_email

__all__ = [
    "FREE_MAIL_DOMAINS",
    "business_domain",
    "check_email",
    "language_code",
    "normalize_email",
    "normalize_linkedin",
    "website_domain",
]

FREE_MAIL_DOMAINS = frozenset(
    (
        "gmail.com",
        "googlemail.com",
        "yahoo.com",
        "ymail.com",
        "rocketmail.com",
        "outlook.com",
        "hotmail.com",
        "live.com",
        "msn.com",
        "icloud.com",
        "me.com",
        "mac.com",
        "aol.com",
        "proton.me",
        "protonmail.com",
        "protonmail.ch",
        "pm.me",
        "gmx.com",
        "gmx.net",
        "gmx.de",
        "web.de",
        "mail.com",
        "mail.ru",
        "inbox.ru",
        "list.ru",
        "bk.ru",
        "yandex.com",
        "yandex.ru",
        "zoho.com",
        "zohomail.com",
        "fastmail.com",
        "hey.com",
        "tutanota.com",
        "tuta.io",
        "qq.com",
        "163.com",
        "126.com",
        "sina.com",
        "naver.com",
        "daum.net",
        "seznam.cz",
        "t-online.de",
        "freenet.de",
        "orange.fr",
        "wanadoo.fr",
        "free.fr",
        "laposte.net",
        "sfr.fr",
        "libero.it",
        "virgilio.it",
        "btinternet.com",
        "comcast.net",
        "verizon.net",
        "att.net",
        "sbcglobal.net",
        "cox.net",
        "earthlink.net",
        "rediffmail.com",
    )
)
"""Mailbox providers whose domain says nothing about the contact's company."""
_FREE_MAIL_FAMILIES = frozenset({"gmx", "yahoo", "hotmail", "outlook", "live", "yandex", "aol"})
_SECOND_LEVEL = frozenset({"co", "com", "net", "org"})

_ATEXT = "A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
_PLAIN_EMAIL = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*@([a-z0-9-]+(?:\.[a-z0-9-]+)+)\Z")
_DOMAIN_CACHE_MAX = 100_000
_domain_verdicts: dict[str, bool] = {}
_SCHEME = re.compile(r"^[a-z][a-z0-9+.\-]*://")
_URL_END = re.compile(r"[/?#\\\s]")
_URL = re.compile(r"(?i)^(?:https?://)?([^/?#\s]+)([^?#]*)")


def normalize_email(value: str) -> str:
    """Trimmed, with the domain lowercased and the local part kept as written."""
    local, at, domain = value.strip().rpartition("@")
    return f"{local}@{domain.lower()}" if at else value.strip()


def _domain_is_valid(domain: str) -> bool:
    verdict = _domain_verdicts.get(domain)
    if verdict is None:
        try:
            validate_email("x@" + domain, check_deliverability=False)
            verdict = True
        except EmailNotValidError:
            verdict = False
        if len(_domain_verdicts) >= _DOMAIN_CACHE_MAX:
            _domain_verdicts.clear()
        _domain_verdicts[domain] = verdict
    return verdict


def check_email(email: str) -> str | None:
    """Why ``email`` (already normalized) is not a valid address, or None when it is.

    ``email_validator`` decides, without DNS. Plain ASCII addresses (dot-atom local part,
    lowercase domain without IDNA labels) take a fast path that asks it once per domain: the
    local part then passes its rules by construction.
    """
    match = _PLAIN_EMAIL.match(email) if len(email) <= 254 else None
    if match and "xn--" not in match[1] and _domain_is_valid(match[1]):
        return None
    try:
        validate_email(email, check_deliverability=False)
    except EmailNotValidError as exc:
        return str(exc)
    return None


def website_domain(value: str) -> str | None:
    """The bare host of a website value (scheme, ``www.``, port, path stripped), or None."""
    host = _SCHEME.sub("", value.strip().lower()).lstrip("/")
    host = _URL_END.split(host, maxsplit=1)[0].rpartition("@")[2].partition(":")[0]
    host = host.rstrip(".").removeprefix("www.")
    labels = host.split(".")
    if len(labels) < 2 or not all(label.replace("-", "").isalnum() for label in labels):
        return None
    return host


def business_domain(email: str) -> str | None:
    """The domain of ``email`` unless it is a free-mail provider's (then None)."""
    domain = email.rpartition("@")[2].lower()
    if domain in FREE_MAIL_DOMAINS:
        return None
    family, _, rest = domain.partition(".")
    parts = rest.split(".")
    if family in _FREE_MAIL_FAMILIES and (
        len(parts) == 1 or (len(parts) == 2 and parts[0] in _SECOND_LEVEL)
    ):
        return None
    return website_domain(domain)


def normalize_linkedin(value: str) -> str:
    """``https://www.linkedin.com/in/<slug>`` (or ``/pub/...``) from any form of profile URL.

    Raises:
        ValueError: the value is not a LinkedIn profile URL (the message says why).
    """
    match = _URL.match(value.strip())
    host = match[1].lower().rpartition("@")[2].partition(":")[0] if match else ""
    if not match or not (host == "linkedin.com" or host.endswith(".linkedin.com")):
        raise ValueError(f"{value.strip()[:100]!r} is not a LinkedIn URL")
    parts = [p for p in match[2].split("/") if p]
    kind = parts[0].lower() if parts else ""
    if kind == "in" and len(parts) >= 2:
        return "https://www.linkedin.com/in/" + parts[1]
    if kind == "pub" and len(parts) >= 2:
        return "https://www.linkedin.com/pub/" + "/".join(parts[1:])
    if kind in ("sales", "talent", "recruiter"):
        raise ValueError(
            "a Sales Navigator or Recruiter URL; use the public profile (linkedin.com/in/…)"
        )
    raise ValueError(f"{value.strip()[:100]!r} is not a LinkedIn profile URL (linkedin.com/in/…)")


@functools.lru_cache(maxsize=4096)
def language_code(value: str) -> str | None:
    """A ``lang`` value as Octave documents it (``en``, ``es``), or None when it names no language.

    A valid language tag stays as written (``en``, ``pt-BR``); a language's name, in English or
    in the language itself and in any case (``English``, ``Spanish``, ``Deutsch``, ``français``),
    becomes its ISO 639-1 code. Anything else (``xx``, ``n/a``, a language without a two-letter
    code such as ``Klingon``) is None.
    """
    import langcodes  # only a Language column pays for the import

    text = value.strip()
    if langcodes.tag_is_valid(text):
        return text
    try:
        code = langcodes.find(text).language
    except (LookupError, ValueError):
        return None
    return code if code and len(code) == 2 else None
