"""One containment check for every name from outside that becomes a path.

A name the driver did not make (an MLflow tag, a bucket key, a run's artifact path) may hold
``..``, an absolute path or a link's target: joined to a folder it can point anywhere. A forged
child run's ``trial_id`` tag of ``../../..`` made the front's timing write ``plan.json`` and
``weights.pt`` outside its temporary folder. :func:`contained` is the one place such a join is
made: the result, resolved (``..`` and links followed), must lie inside the folder, resolved.
"""

from __future__ import annotations

from pathlib import Path


class EscapesFolder(ValueError):
    """A name from outside that would put a path outside the folder it is joined to."""


def contained(base: str | Path, name: str | Path) -> Path:
    """``base / name`` resolved, when it lies inside ``base`` (resolved); else
    :class:`EscapesFolder` (one line naming both). An empty name, ``.``, is ``base`` itself
    and refused too: a name must name something inside."""
    root = Path(base).resolve()
    target = (root / name).resolve()
    if target == root or not target.is_relative_to(root):
        raise EscapesFolder(
            f"{str(name)!r} is no path inside {root}: refused (a name from outside)"
        )
    return target
