"""The compact console: Ray's output (any write to fd 1 or 2) into ray.log, ours to the terminal."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from helpers import write_config

ROOT = Path(__file__).resolve().parents[1]


def run(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )


def test_compact_mode_sends_fd_writes_to_the_log_and_ours_to_the_terminal(tmp_path) -> None:
    code = f"""
        import os, sys
        from orchestrator.driver_output import DriverOutput
        with DriverOutput({str(tmp_path / "ray.log")!r}, verbose=False) as out:
            print("python print, as Ray's Tune reporter does")
            os.write(2, b"C++ write to fd 2, as the raylet does\\n")
            out.console.print("the live view line")
            print("an error line", file=out.err)
        print("after: back on stdout")
    """
    proc = run(code, cwd=str(ROOT))
    assert proc.stdout.splitlines() == ["the live view line", "after: back on stdout"]
    assert proc.stderr.strip() == "an error line"
    log = (tmp_path / "ray.log").read_text().splitlines()
    assert log == [
        "python print, as Ray's Tune reporter does",
        "C++ write to fd 2, as the raylet does",
    ]


def test_verbose_mode_leaves_everything_on_the_terminal(tmp_path) -> None:
    code = f"""
        import os
        from orchestrator.driver_output import DriverOutput
        with DriverOutput({str(tmp_path / "ray.log")!r}, verbose=True) as out:
            print("ray line")
            out.console.print("our line")
    """
    proc = run(code, cwd=str(ROOT))
    assert proc.stdout.splitlines() == ["ray line", "our line"]
    assert not (tmp_path / "ray.log").exists()


def test_ray_that_does_not_start_is_one_line(monkeypatch, tmp_path):
    """ray.init raising a bare Exception (its node timed out on an overloaded machine) is one
    line naming the cause, not a traceback."""
    import ray

    from orchestrator import sweep_run
    from orchestrator.config import load_config

    def timed_out(**kwargs):
        raise Exception(
            "The current node timed out during startup. This could happen because ...\nmore"
        )

    monkeypatch.setattr(ray, "init", timed_out)
    exp = load_config(write_config(tmp_path, "noray"))
    line = sweep_run.start_ray(exp, None, resume=False)
    assert line == (
        "orchestrator.sweep: Ray did not start: The current node timed out during startup. "
        "This could happen because ..."
    )
