"""Values kept within MLflow's limits, never cut by MLflow without a word.

MLflow truncates a param longer than ``MAX_PARAM_VAL_LENGTH`` (6,000 characters) and a tag
longer than ``MAX_TAG_VAL_LENGTH`` (8,000) with a line in its own logger, which a sweep's
console never shows: a ``search.target`` choice list of 1,300 values became a parent
``search_space`` tag of invalid JSON and a param cut mid-number. Here every value is fitted
before it is sent: one that fits goes as it is; a longer one is shortened with a note saying
how long it was and which artifact holds it whole (the parent run's ``config.json`` and
``search_space.json``), and a warning line is printed once per key. A JSON tag stays valid
JSON (:func:`json_tag`). The limits are read from the installed MLflow
(``mlflow.utils.validation``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

_WARNED: set[str] = set()  # keys already reported as shortened (once per key, per process)


def limits() -> tuple[int, int]:
    """(param, tag) value limits of the installed MLflow, in characters."""
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

    return MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH


def _warn(message: str) -> None:
    from orchestrator import driver_output  # the terminal's stderr, also in compact mode

    driver_output.warn(message)


def shorten(
    kind: str,
    key: str,
    value: str,
    limit: int,
    where: str,
    warn: Callable[[str], None] | None = None,
) -> str:
    """``value`` when it fits ``limit``, else its start and a note (the length, ``where`` the
    whole value is), within ``limit``; the first time a ``key`` is shortened, one line to
    ``warn``."""
    if len(value) <= limit:
        return value
    note = f" ... [{len(value)} characters, over MLflow's {limit}: whole in {where}]"
    if key not in _WARNED:
        _WARNED.add(key)
        (warn or _warn)(
            f"warning: MLflow {kind} {key!r} is {len(value):,} characters, over MLflow's limit "
            f"of {limit:,}: shortened there; the whole value is in {where}"
        )
    return value[: max(0, limit - len(note))] + note


def fit_params(
    params: Mapping[str, Any],
    where: str = "the parent run's config.json",
    warn: Callable[[str], None] | None = None,
) -> dict[str, str]:
    """Param values as text within MLflow's param limit (:func:`shorten`)."""
    limit = limits()[0]
    return {k: shorten("param", k, str(v), limit, where, warn) for k, v in params.items()}


def json_tag(key: str, value: Any, artifact: str, warn: Callable[[str], None] | None = None) -> str:
    """``value`` as a JSON tag that fits MLflow's tag limit and is valid JSON: whole when it
    fits; else each entry of a mapping shortened in turn, longest first (a string that says
    how long it was and names ``artifact``), and when even that does not fit, an object
    naming ``artifact`` alone. The first shortening of ``key`` warns once."""
    limit = limits()[1]
    text = json.dumps(value)
    if len(text) <= limit:
        return text
    if key not in _WARNED:
        _WARNED.add(key)
        (warn or _warn)(
            f"warning: MLflow tag {key!r} is {len(text):,} characters of JSON, over MLflow's "
            f"limit of {limit:,}: shortened there; the whole value is in the artifact {artifact}"
        )
    if isinstance(value, Mapping):
        out = {k: v for k, v in value.items()}
        for k in sorted(out, key=lambda k: -len(json.dumps(out[k]))):
            out[k] = f"[{len(json.dumps(value[k]))} characters: see {artifact}]"
            text = json.dumps(out)
            if len(text) <= limit:
                return text
    return json.dumps({"see": artifact, "characters": len(json.dumps(value))})


def fit_tags(
    tags: Mapping[str, Any],
    where: str = "the parent run's config.json and search_space.json",
    warn: Callable[[str], None] | None = None,
) -> dict[str, str]:
    """Tag values as text within MLflow's tag limit (:func:`shorten`)."""
    limit = limits()[1]
    return {k: shorten("tag", k, str(v), limit, where, warn) for k, v in tags.items()}
