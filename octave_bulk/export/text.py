"""``export.text``: the cells' text. Pure functions of strings, no I/O.

Contract:

- :func:`is_html`: a body counts as HTML when it holds HTML tags (``p br div span a b i u em
  strong ul ol li h1-h6 table``) and the request did not ask for ``text`` or ``markdown``, so
  plain text or Markdown that mentions ``<b>`` stays as written.
- :func:`render_body`: a step's body in the export's format: text strips HTML (see
  :func:`html_to_text`) and keeps any other body as is (CRLF made LF, edges trimmed);
  HTML keeps HTML as received (edges trimmed) and turns any other body into paragraphs
  (see :func:`text_to_html`). Markdown is therefore kept as is in text and wrapped in HTML.
- :func:`html_to_text`: ``<p>``, ``<div>``, ``<h1-6>``, lists and tables become blank-line
  separated blocks, ``<br>`` a line break, ``<li>`` a ``- `` item, a link ``label (url)`` (the
  label alone when it shows the URL), entities unescaped, ``&nbsp;`` a space.
- :func:`text_to_html`: one ``<p>`` per blank-line-separated paragraph, ``<br>`` for single
  line breaks, ``< > &`` escaped; empty for a blank body.
- :func:`shows_text`: whether a body shows any text once HTML tags are gone and entities are
  decoded; a body that shows none is blank and its result is left out of the export.
- :func:`escape_formula`: a cell that starts with ``= + - @`` or their fullwidth forms
  ``＝ ＋ － ＠`` (after any leading whitespace, which spreadsheets skip), or with a tab or CR,
  gets a leading ``'`` (OWASP CSV injection); the writer applies it to every cell.
"""

from __future__ import annotations

import html
import re

__all__ = ["escape_formula", "html_to_text", "is_html", "render_body", "shows_text", "text_to_html"]

_FORMULA_START = ("=", "+", "-", "@", "\uff1d", "\uff0b", "\uff0d", "\uff20")  # and fullwidth
_CONTROL_START = ("\t", "\r")
_HTML_TAG = re.compile(
    r"</?(?:p|br|div|span|a|b|i|u|em|strong|ul|ol|li|h[1-6]|table)\b[^>]*>", re.I
)
_LINK = re.compile(r"<a\b[^>]*?\bhref\s*=\s*(\"[^\"]*\"|'[^']*')[^>]*>(.*?)</a\s*>", re.I | re.S)
_BREAK = re.compile(r"<br\s*/?>", re.I)
_BLOCK_END = re.compile(r"</(?:p|div|h[1-6]|ul|ol|table|tr)\s*>", re.I)
_BLOCK_START = re.compile(r"<(?:p|div|h[1-6]|ul|ol|table|tr)\b[^>]*>", re.I)
_ITEM = re.compile(r"<li\b[^>]*>", re.I)
_ANY_TAG = re.compile(r"<[^>]*>")
_LINE_EDGES = re.compile(r"[ \t]*\n[ \t]*")
_MANY_BREAKS = re.compile(r"\n{3,}")
_PARAGRAPHS = re.compile(r"\n[ \t]*\n\s*")


def escape_formula(cell: str) -> str:
    """Prefix ``'`` to a cell that a spreadsheet would run as a formula (OWASP CSV injection)."""
    if cell.startswith(_CONTROL_START) or cell.lstrip().startswith(_FORMULA_START):
        return "'" + cell
    return cell


def is_html(body: str, requested: object) -> bool:
    """Whether ``body`` is HTML, given the ``outputFormat`` the request asked for."""
    return requested not in ("text", "markdown") and _HTML_TAG.search(body) is not None


def shows_text(body: str, html_body: bool) -> bool:
    """Whether a body shows any text (for HTML: once tags are gone and entities decoded)."""
    if html_body:
        body = _ANY_TAG.sub("", body)
        if "&" in body:
            body = html.unescape(body)
    return not body.isspace() and body != ""


def render_body(body: str, html_body: bool, *, to_html: bool) -> str:
    """A step's body as exported: HTML when ``to_html``, else text (``html_body``: the body is
    HTML as received, see :func:`is_html`)."""
    if to_html:
        return body.strip() if html_body else text_to_html(body)
    return html_to_text(body) if html_body else body.replace("\r\n", "\n").strip()


def _link(match: re.Match[str]) -> str:
    """``<a href=URL>label</a>`` -> ``label (URL)``, or the label alone when it shows the URL."""
    url, label = match.group(1)[1:-1].strip(), match.group(2)
    shown = html.unescape(_ANY_TAG.sub("", label)).strip()
    target = html.unescape(url).removeprefix("mailto:")
    if not target or shown == target:
        return label
    return f"{label} ({url})" if shown else url


def html_to_text(body: str) -> str:
    """Plain text of an HTML body: blocks and ``<br>`` become line breaks, entities unescaped."""
    text = _LINK.sub(_link, " ".join(body.split()))  # HTML whitespace collapses
    text = _BREAK.sub("\n", text)
    text = _ITEM.sub("\n- ", text)
    text = _BLOCK_END.sub("\n\n", text)
    text = _BLOCK_START.sub("\n\n", text)
    text = html.unescape(_ANY_TAG.sub("", text))
    text = _LINE_EDGES.sub("\n", text.replace("\xa0", " "))
    return _MANY_BREAKS.sub("\n\n", text).strip()


def text_to_html(body: str) -> str:
    """HTML of a plain-text body: ``<p>`` per blank-line-separated paragraph, ``<br>`` within."""
    text = body.replace("\r\n", "\n").replace("\r", "\n").strip()
    if not text:
        return ""
    paragraphs = _PARAGRAPHS.split(html.escape(text, quote=False))
    return "".join(f"<p>{p.strip().replace(chr(10), '<br>')}</p>" for p in paragraphs)
