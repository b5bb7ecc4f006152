"""One driver per sweep folder: an exclusive lock held for the driver's lifetime.

Two drivers of the same sweep started seconds apart both passed the "already holds a sweep"
check (Tune's state appears only after the teacher), both trained a teacher, and raced on the
MLflow SQLite file's first schema migration, which broke it for good. So the driver takes an
operating-system lock (``filelock``: ``flock`` on ``<sweep>/.driver.lock``, released by the
kernel when the process dies, even by SIGKILL, so a crashed driver never leaves it stuck)
before it looks at the folder, and keeps it until it exits; a second driver is refused at once
with the first one's pid, host and start time (``<sweep>/.driver.json``). Both files start with
a dot: the bucket mirror (mirror.py) skips them.

The lock is local to one machine (and to NFS where ``flock`` is supported); two heads sharing
only a bucket are not protected by it.

(A SQLite tracking store's first use has a lock of its own, beside the database, which
several sweeps of one storage path share: ``orchestrator.tracking.init_sqlite``.)
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from filelock import FileLock, Timeout

from orchestrator._atomic import atomic_write

LOCK, OWNER = ".driver.lock", ".driver.json"


class SweepBusy(RuntimeError):
    """Another driver holds the sweep folder; ``str()`` is the one line the CLI prints."""


class SweepLock:
    """``with SweepLock(folder):`` the folder is this process's until the block ends.

    Creates the folder; raises :class:`SweepBusy` (writing nothing) when another process holds
    it. A folder this lock created and nobody wrote into is removed again on exit, so a driver
    that fails before its first file leaves nothing behind.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.disposable: set[str] = set()  # files that may go with a fresh folder (a log)
        self.fresh = False
        self._created: list[Path] = []
        self._lock: FileLock | None = None

    def __enter__(self) -> SweepLock:
        self.fresh = not self.folder.exists()
        missing = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
        self._created = missing  # this folder and the parents made for it, innermost first
        self.folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.folder / LOCK, timeout=0)  # never wait: refuse at once
        try:
            lock.acquire()
        except Timeout:
            raise SweepBusy(
                f"{self.folder} is in use by another sweep driver ({self.owner()}); wait for it "
                "to end or stop it"
            ) from None
        self._lock = lock
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        atomic_write(self.folder / OWNER, json.dumps(record))
        return self

    def owner(self) -> str:
        """The holder as the holder recorded it ("pid 123 on host, since 12:00:01")."""
        try:
            record = json.loads((self.folder / OWNER).read_text())
        except (OSError, ValueError):  # the holder is between its lock and its record
            return "its owner record is not written yet"
        since = time.strftime("%H:%M:%S", time.localtime(record["started"]))
        return f"pid {record['pid']} on {record['host']}, since {since}"

    def __exit__(self, *exc) -> None:
        if self._lock is None:
            return
        own = {LOCK, OWNER} | self.disposable
        (self.folder / OWNER).unlink(missing_ok=True)
        if self.fresh and {p.name for p in self.folder.iterdir()} <= own:
            # nothing but our lock: leave no empty sweep. Removed while still held; filelock
            # re-checks the file after it locks, so a driver starting now never owns a ghost.
            for name in self.disposable:
                (self.folder / name).unlink(missing_ok=True)
            (self.folder / LOCK).unlink(missing_ok=True)
            try:
                for folder in self._created:  # the sweep folder, then parents made for it
                    folder.rmdir()
            except OSError:  # another driver created a file in it just now: it is theirs
                pass
        self._lock.release()
        self._lock = None
