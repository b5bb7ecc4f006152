"""The versions a sweep runs with, against the lock the test suite passed with.

``requirements-lock.txt`` (pip-tools output, ``make upgrade-lock``) pins every package the suite
passed with; ``make install`` installs exactly that. A machine installed some other way (a bare
``pip install -e .``, a cluster image) may hold newer releases, and a new release of Optuna or
Pillow has broken the main job before (NSGA-II stopped pickling, posterize refused 0 bits).
``--dry-run`` shows the versions in use and names, in one line, each key package whose release
series (major.minor) differs from the lock's: a patch release is within the tested range, a
new minor or major release is not.

``transformers`` is an extra (``pip install flatten-prune[hf]``, ``model.source: hf``): it is
shown and judged when installed, and left out of the row when not (no "missing" for a package
a timm-only install never needed).

Reads package metadata only (``importlib.metadata``), so it imports none of the packages.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

KEY_PACKAGES = ("torch", "timm", "ray", "optuna", "mlflow", "pyarrow", "pillow", "transformers")
OPTIONAL_PACKAGES = ("transformers",)  # extras: in the row only when installed
LOCK = Path(__file__).resolve().parents[1] / "requirements-lock.txt"

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def installed(names: tuple[str, ...] = KEY_PACKAGES) -> dict[str, str | None]:
    """``{package: version}`` as installed, None where a package is missing."""
    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def locked(path: Path = LOCK) -> dict[str, str]:
    """``{normalised name: version}`` of every ``name==version`` line of a pip-tools lock;
    empty when the file is absent (an install from a wheel carries no lock)."""
    if not path.is_file():
        return {}
    pins = {}
    for line in path.read_text().splitlines():
        match = _PIN.match(line.strip())
        if match:
            pins[_normalise(match[1])] = match[2]
    return pins


def _series(version: str) -> tuple[str, ...]:
    """(major, minor) of a version string; a local tag such as ``+cu128`` is ignored."""
    return tuple(version.split("+")[0].split(".")[:2])


def untested(found: dict[str, str | None], pins: dict[str, str]) -> list[str]:
    """``"optuna 5.2.0 (lock: 5.1.0)"`` for each package whose installed release series is not
    the locked one; packages absent from either side are not judged."""
    out = []
    for name, version in found.items():
        pin = pins.get(_normalise(name))
        if version is not None and pin is not None and _series(version) != _series(pin):
            out.append(f"{name} {version} (lock: {pin})")
    return out


def cuda() -> str:
    """``"CUDA 12.8, 1 GPU"``, ``"CUDA 12.8, no GPU"`` or ``"CPU-only torch"`` (imports torch)."""
    import torch

    if torch.version.cuda is None:
        return "CPU-only torch"
    count = torch.cuda.device_count()
    return f"CUDA {torch.version.cuda}, {count or 'no'} GPU{'s' if count > 1 else ''}"


def summary(path: Path | None = None) -> tuple[str, str | None]:
    """(the versions row of ``--dry-run``, a one-line warning or None), against ``path``
    (default: the repository's lock)."""
    path = path or LOCK
    found = {n: v for n, v in installed().items() if v is not None or n not in OPTIONAL_PACKAGES}
    row = ", ".join(f"{n} {v or 'missing'}" for n, v in found.items()) + f"; {cuda()}"
    pins = locked(path)
    if not pins:
        return row, None
    drift = untested(found, pins)
    if not drift:
        return row, None
    return row, f"untested releases: {', '.join(drift)}; the suite passed with {path.name}"
