"""Which ``transformers`` classes compute the same function: their ``forward`` compared as code.

``transformers`` builds most vision models from copies of a few classes (its "modular" files
and "Copied from" comments), renaming them. Two classes whose ``forward`` has the same syntax
tree (names of the function, docstring, type annotations and decorators aside) compute the
same function of the attributes they read, so a twin written for one fits the other. Used by
``prune_core.hf_converters`` and ``prune_core.hf_legacy``; imports ``transformers`` only when
a reference is first needed.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import textwrap
from collections.abc import Callable

from torch import nn


@functools.cache
def fingerprint(fn: Callable) -> str | None:
    """The syntax tree of ``fn`` without its name, docstring and annotations (None: no source)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0]
    except (OSError, TypeError, SyntaxError, IndexError):
        return None
    if not isinstance(tree, ast.FunctionDef):
        return None
    tree.name, tree.returns, tree.decorator_list = "_", None, []
    body = tree.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        tree.body = body[1:] or [ast.Pass()]
    for arg in ast.walk(tree.args):
        if isinstance(arg, ast.arg):
            arg.annotation = None
    return ast.dump(tree)


@functools.cache
def reference(module: str, cls: str) -> str | None:
    """The fingerprint of ``transformers.models.<module>.<cls>.forward``."""
    found = importlib.import_module(f"transformers.models.{module}")
    return fingerprint(getattr(found, cls).forward)


def same_forward(m: nn.Module | None, module: str, cls: str) -> bool:
    """Whether ``m``'s class has the same ``forward`` code as ``<module>.<cls>``."""
    return m is not None and fingerprint(type(m).forward) == reference(module, cls)


__all__ = ["fingerprint", "reference", "same_forward"]
