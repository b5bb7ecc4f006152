"""``atomic_write`` for the orchestrator: the one implementation, ``prune_core/_atomic.py``.

``import prune_core._atomic`` would first run prune_core's package, which imports torch and timm
(seconds): the CLI's ``--dry-run``, the sweep lock and the report answer without them. So the
file is loaded here on its own, once per process, under its own module name: a later import of
prune_core finds it in ``sys.modules`` and uses the same module.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_NAME = "prune_core._atomic"


def _load():
    if _NAME in sys.modules:
        return sys.modules[_NAME]
    package = importlib.util.find_spec("prune_core")  # where it is, without running it
    if package is None or not package.submodule_search_locations:
        raise ImportError("prune_core is not installed")
    source = Path(next(iter(package.submodule_search_locations))) / "_atomic.py"
    spec = importlib.util.spec_from_file_location(_NAME, source)
    module = importlib.util.module_from_spec(spec)
    sys.modules[_NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_NAME]
        raise
    return module


atomic_write = _load().atomic_write

__all__ = ["atomic_write"]
