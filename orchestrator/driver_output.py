"""Where the driver's output goes: the sweep's own lines to the terminal, Ray's to a file.

Ray and Tune write to the process's stdout/stderr from Python (status tables, worker logs
forwarded to the driver, warnings) and from C++ (the raylet, GCS); between them the 16-trial
demo printed over a thousand lines. In the compact mode the file descriptors 1 and 2 are
pointed at ``<sweep folder>/ray.log`` for the length of the sweep, so *everything* written
there lands in that file, and the driver's own output (the live view, the front, errors) goes
to duplicates of the original terminal descriptors instead. ``-v`` leaves the descriptors
alone: Ray's full output on the terminal, as before.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import TracebackType
from typing import TextIO

from rich.console import Console

from orchestrator._redact import redact

_ACTIVE: DriverOutput | None = None  # the one a running sweep entered


def warn(message: str) -> None:
    """A driver-side warning (tracking outage, mirror failure) on the terminal's stderr, also
    while Ray's output goes to the log file; credentials in any URI in it masked (_redact)."""
    stream = _ACTIVE.err if _ACTIVE is not None else sys.stderr
    print(redact(message), file=stream, flush=True)


class DriverOutput:
    """Context manager: ``console`` / ``err`` reach the terminal; in compact mode fds 1 and 2
    go to ``log_path`` until exit (appended; created with the umask's mode).

    Args:
        log_path: Ray's output file (compact mode), e.g. ``<sweep folder>/ray.log``.
        verbose: leave stdout/stderr where they are (``console``/``err`` are then the same).
    """

    def __init__(self, log_path: Path, *, verbose: bool) -> None:
        self.log_path, self.verbose = Path(log_path), verbose
        self._saved: tuple[int, int] | None = None
        self.err: TextIO = sys.stderr
        self.console = Console(width=None if sys.stdout.isatty() else 120)

    def __enter__(self) -> DriverOutput:
        global _ACTIVE
        _ACTIVE = self
        if self.verbose:
            return self
        sys.stdout.flush()
        sys.stderr.flush()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        tty = os.isatty(1)
        self._saved = (os.dup(1), os.dup(2))
        out = os.fdopen(os.dup(self._saved[0]), "w", buffering=1)
        self.err = os.fdopen(os.dup(self._saved[1]), "w", buffering=1)
        self.console = Console(file=out, width=None if tty else 120, force_terminal=tty or None)
        log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        try:
            os.dup2(log, 1)
            os.dup2(log, 2)
        finally:
            os.close(log)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        global _ACTIVE
        _ACTIVE = None
        if self._saved is None:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        self._saved = None
        self.console.file.flush()
        self.err.flush()
