"""Credentials out of every URI the driver prints, logs or stores: one helper, one home.

``tracking.uri`` is ``$VAR``-expanded (config.py), which invites
``http://user:${PW}@host:5000`` and ``postgresql://mlflow:${PW}@db/mlflow``; storage and artifact
URIs may carry a signed or token query (``?X-Amz-Signature=...``, ``?token=...``). The driver
*uses* the real URI to connect; every copy that leaves the process (the parent run's params and
``config.json``, ``sweep.json``, Tune's pickled state, the console, warnings and error lines)
goes through :func:`redact`, which replaces the password of a URI's userinfo and the value of
every token-like query parameter with ``***``, in any text, wherever a URI appears in it
(MLflow's own errors quote the request URL, userinfo included).

The user name stays (``user:***@host`` still tells which account a sweep logs as); a query
parameter is a secret when its name, lower-cased with ``-`` as ``_``, contains ``token``,
``passw``, ``secret``, ``signature`` or ``credential``, or has ``sig``, ``pwd``, ``key``,
``apikey`` or ``auth`` as one of its ``_``-separated words (``X-Amz-Signature``,
``X-Amz-Credential``, ``X-Amz-Security-Token``, ``access_token``, ``api_key``, ``sig``, ...);
``endpoint_override``, ``scheme``, ``region`` and the like are kept.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

MASK = "***"

# scheme://... up to whitespace, a quote or a bracket that ends the URI in prose or repr()
_URI = re.compile(r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")
_SECRET_PARTS = ("token", "passw", "secret", "signature", "credential")
_SECRET_WORDS = frozenset({"sig", "pwd", "key", "apikey", "auth", "authorization"})
_NESTED = re.compile(r"(?i)(?:^|[;&\s])(?:pwd|password|passwd|secret|token)\s*=")


def secret_param(name: str) -> bool:
    """Whether a query parameter of this name carries a credential."""
    n = unquote(name).strip().lower().replace("-", "_")
    return any(part in n for part in _SECRET_PARTS) or not _SECRET_WORDS.isdisjoint(n.split("_"))


def _userinfo_end(rest: str) -> int:
    """Where the userinfo of ``rest`` (a URI after ``://``) ends: the index of its ``@``, or
    -1. The authority ends at the first ``/``, ``?`` or ``#``, as for urllib and requests; a
    raw password holding ``/`` (an unencoded ``${PW}``) is caught too: an ``@`` before the
    query whose text has ``user:`` first, where what follows ``:`` is not a port."""
    stop = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, stop)
    if at >= 0:
        return at
    query = min((i for i in (rest.find(c) for c in "?#") if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, query)
    if at < 0:
        return -1
    user, colon, after = rest[:at].partition(":")
    if not colon or "/" in user or re.match(r"\d+(/|$)", after):
        return -1
    return at


def _redact_uri(uri: str) -> str:
    scheme, sep, rest = uri.partition("://")
    at = _userinfo_end(rest)
    if at >= 0:
        user, colon, _ = rest[:at].partition(":")
        rest = f"{user}:{MASK}{rest[at:]}" if colon else rest
    rest, hash_, fragment = rest.partition("#")  # OAuth puts tokens in the fragment too
    head, q, query = rest.partition("?")
    return f"{scheme}{sep}{head}{q}{_redact_params(query)}{hash_}{_redact_params(fragment)}"


def _redact_params(query: str) -> str:
    items = []
    for item in re.split(r"([&;])", query):
        name, eq, value = item.partition("=")
        secret = secret_param(name) or _NESTED.search(unquote(value))  # odbc_connect=..PWD=..
        items.append(f"{name}={MASK}" if eq and value and secret else item)
    return "".join(items)


def _redact_match(match: re.Match) -> str:
    uri = match.group(0)
    trail = len(uri) - len(uri.rstrip(".,;:)]}"))  # prose around a URI: "(at http://...)."
    return _redact_uri(uri[: len(uri) - trail]) + uri[len(uri) - trail :]


def redact(text: Any) -> Any:
    """``text`` with the credentials of every URI in it masked; a dict, list or tuple is
    redacted value by value (keys too), anything else that is not a string is returned as is.
    Idempotent: a redacted text comes back unchanged."""
    if isinstance(text, str):
        return _URI.sub(_redact_match, text) if "://" in text else text
    if isinstance(text, dict):
        return {redact(k): redact(v) for k, v in text.items()}
    if isinstance(text, (list, tuple)):
        return type(text)(redact(v) for v in text)
    return text
