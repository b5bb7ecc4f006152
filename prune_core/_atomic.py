"""One atomic file write for the whole project: a reader sees the old file or the new one, never
part of one, and the new one survives a power cut once this returns.

The temporary file lives in the target's folder (a rename never crosses file systems), its data
is fsynced before the rename, and the folder is fsynced after it (the rename itself is then on
disk); on any failure, the temporary file is removed and the old file is left as it was.

Standard library only, and nothing imported from prune_core: the orchestrator loads this file
without prune_core's package (which imports torch) through ``orchestrator/_atomic.py``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

Writer = Callable[[str], object]  # writes the whole file at the path it is given


def atomic_write(path: str | Path, data: bytes | str | Writer, *, mode: int | None = None) -> Path:
    """Write ``path`` whole or not at all.

    Args:
        path: the file to (re)place.
        data: its bytes (a str is UTF-8 encoded), or a writer called with the temporary path
            that writes the whole file there (``pq.write_table(t, p)``, ``fig.savefig(p)``,
            ``torch.save(obj, p)``); the temporary name ends with ``path``'s suffix, so a
            writer that infers the format from it (savefig) picks the right one.
        mode: the file's permission bits (e.g. 0o600), set before any byte is written; by
            default the umask's, as for any new file.
    Returns:
        ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
        try:
            if mode is not None:
                os.fchmod(fd, mode)  # the umask does not narrow what was asked for
            if not callable(data):
                os.write(fd, data.encode() if isinstance(data, str) else bytes(data))
        finally:
            os.close(fd)
        if callable(data):
            data(str(tmp))
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    """The rename on disk; a file system that cannot fsync a folder (some network ones) is
    left to its own guarantees."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
