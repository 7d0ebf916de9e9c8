"""Masking of credentials in URLs and messages: what zoo prints never shows a password or token."""
from __future__ import annotations

import re
import urllib.parse

MASK = "***"
# Query parameters whose values are secrets (signed URLs, API keys, bearer tokens).
_SECRET_PARAM = re.compile(r"token|key|sig|secret|passw|auth(?!or)|credential", re.I)  # not `author`
# A URL inside free text: scheme://, up to whitespace, a quote or a closing bracket.
_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>)\]]+")


def mask_url(url: str) -> str:
    """`url` with its password (or a lone user name, often a token) and secret query values masked.

    >>> mask_url("https://bob:hunter2@models.acme.org/zoo.json?token=abc&v=2")
    'https://bob:***@models.acme.org/zoo.json?token=***&v=2'
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{host}" if colon else f"{MASK}@{host}"
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        if any(_SECRET_PARAM.search(key) for key, _ in pairs):
            query = "&".join(f"{urllib.parse.quote(key, safe='')}="
                             + (MASK if _SECRET_PARAM.search(key) else urllib.parse.quote(value, safe=""))
                             for key, value in pairs)
    if netloc == parts.netloc and query == parts.query:
        return url
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def mask_secrets(text: str) -> str:
    """`text` (an error message, a log line) with every URL in it passed through `mask_url`."""
    return _URL_IN_TEXT.sub(lambda match: mask_url(match.group(0)), text)
