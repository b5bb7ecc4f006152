"""What a person sees in a terminal: the driver run under a pty, its screen counted.

rich changes its behaviour when stdout is a terminal (a live progress bar, and by default it
redirects ``sys.stdout``/``sys.stderr`` through the bar while it is shown), so the compact
console is only shown to be compact when the driver runs under a pseudo-terminal. The screen is
rebuilt from the bytes the terminal received by :func:`screen` (carriage returns, erased and
re-drawn lines, cursor moves up), and its non-empty lines are counted.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from helpers import ROOT, kill_group, write_config

pytestmark = pytest.mark.sweep

COLUMNS, ROWS = 200, 50  # wide: the MLflow command line stays one line to compare
TUNE_BOXES = ("Trial status", "Current time", "╭", "Logical resource usage")

_CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])|\x1b[()][A-Za-z0-9]|\x1b[=>78]")


def screen(raw: bytes, columns: int = COLUMNS) -> list[str]:
    """Every line a terminal of ``columns`` would show, scroll-back included, once ``raw`` has
    been written to it: text overwrites from the cursor, ``\\r`` returns to column 0, ``\\n``
    moves down, ``ESC[K``/``ESC[2K`` erase, ``ESC[nA`` moves up, a full line wraps; colours and
    other control sequences are dropped."""
    lines: list[list[str]] = [[]]
    row = col = 0
    text = raw.decode("utf-8", "replace")
    pos = 0
    while pos < len(text):
        match = _CSI.match(text, pos)
        if match:
            pos = match.end()
            arg, final = match.group(1) or "", match.group(2)
            count = int(arg) if arg.isdigit() else 1
            if final == "A":
                row = max(0, row - count)
            elif final == "B":
                row += count
            elif final == "G":
                col = count - 1
            elif final == "K":
                line = lines[row]
                if arg in ("", "0"):
                    del line[col:]
                elif arg == "2":
                    line.clear()
                else:  # 1: start of line to the cursor
                    line[: col + 1] = [" "] * min(len(line), col + 1)
            while len(lines) <= row:
                lines.append([])
            continue
        char = text[pos]
        pos += 1
        if char == "\r":
            col = 0
        elif char == "\n":
            row += 1
            while len(lines) <= row:
                lines.append([])
        elif char == "\b":
            col = max(0, col - 1)
        elif char >= " " or char == "\t":
            if col >= columns:
                row, col = row + 1, 0
                while len(lines) <= row:
                    lines.append([])
            line = lines[row]
            line.extend(" " * (col - len(line)))
            if col < len(line):
                line[col] = char
            else:
                line.append(char)
            col += 1
    return ["".join(line).rstrip() for line in lines]


def test_screen_rebuilds_a_redrawn_progress_bar() -> None:
    raw = (
        b"teacher: x\r\n\x1b[?25l\rtrials 0/4\r\x1b[2Ktrials 1/4\r\x1b[2K"
        b"\x1b[1mab\x1b[0m started\r\ntrials 1/4\r\x1b[2K\r\n\x1b[1Ax\x1b[?25h"
    )
    assert [line for line in screen(raw) if line] == ["teacher: x", "ab started", "x"]


def run_in_terminal(args: list[str], cwd: Path, timeout: float) -> tuple[int, bytes]:
    """Run ``args`` with stdin, stdout and stderr on a new pty of COLUMNS x ROWS; its exit
    status and every byte the terminal received."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(COLUMNS)}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        args, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    quiet_since = None
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: nothing holds the terminal open any more
                    break
                if not data:
                    break
                chunks.append(data)
                quiet_since = None
            elif proc.poll() is not None:  # exited; a Ray daemon may still hold the pty
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > 2:
                    break
            assert time.monotonic() < deadline, b"".join(chunks).decode(errors="replace")[-3000:]
        return proc.wait(timeout=60), b"".join(chunks)
    finally:
        kill_group(proc.pid)
        os.close(master)


def test_the_compact_console_stays_compact_in_a_terminal(tmp_path: Path) -> None:
    """4 trials under a pty: every Ray/Tune line (status tables, config boxes, the teacher's
    epochs) goes to ray.log; the terminal shows the bar, one line per trial event and the
    end summary."""
    config = write_config(
        tmp_path,
        "pty",
        search={"target": [0.4, 0.7]},
        sweep={
            "num_samples": 4,
            "max_concurrent_trials": 2,
            "sampler": "random",
            "asha": {"metric": "top1", "grace_period": 1, "reduction_factor": 2},
        },
    )
    code, raw = run_in_terminal(
        [sys.executable, "-m", "orchestrator.sweep", str(config)], ROOT, timeout=900
    )
    shown = screen(raw)
    text = "\n".join(shown)
    lines = [line for line in shown if line.strip()]
    (tmp_path / "screen.txt").write_text(text)
    assert code == 0, text[-3000:]
    for box in TUNE_BOXES:
        assert box not in text, f"{box!r} reached the terminal:\n{text[-3000:]}"
    assert "teacher epoch" not in text
    sweep_dir = tmp_path / "results" / "pty"
    log = (sweep_dir / "ray.log").read_text(errors="replace")
    assert "teacher epoch" in log  # redirected, not silenced
    assert len(lines) <= 45, text
    assert sum(" started: " in line for line in lines) == 4
    # the end: counts, then (last) the parent run and how to open its runs table
    counts = re.search(
        r"4 trials in \d+ s: (\d) complete, (\d) stopped early \(ASHA\), 0 failed", text
    )
    assert counts and int(counts[1]) + int(counts[2]) == 4, text[-3000:]
    state = json.loads((sweep_dir / "sweep.json").read_text())
    db = tmp_path / "results" / "mlflow.db"
    assert lines[-3:] == [
        f"MLflow: parent run {state['parent_run_id']}, experiment {state['experiment_id']}; to "
        "open its runs table run",
        f"  mlflow ui --backend-store-uri sqlite:///{db} --port 5000",
        f"  then open http://127.0.0.1:5000/#/experiments/{state['experiment_id']}/runs"
        f"?workflowType=machine_learning&viewStateShareKey={state['parent_run_id']}",
    ]  # the sweep's own view of its runs table (end_summary.share_view)
