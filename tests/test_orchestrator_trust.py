"""Issue 26, "nothing silently wrong, nobody let in": state a failed start leaves, what
``--resume`` compares, values MLflow would cut, and names from outside that become paths."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import pytest
from helpers import write_config

from orchestrator import sweep_state
from orchestrator.sweep import main


# ----------------------------------------------------------------------------- a failed start
def test_only_a_whole_tuner_state_is_restorable(tmp_path):
    """A 0-byte or cut-short tuner.pkl (a Tuner build that failed) is no sweep to resume;
    read without unpickling (pickletools walks the opcodes)."""
    folder = tmp_path / "sweep"
    assert sweep_state.tuner_state(str(folder)) == "none"
    folder.mkdir()
    state = folder / sweep_state.TUNER_STATE
    whole = pickle.dumps({"trainable": "x" * 100, "config": list(range(50))})
    for data, expected in ((b"", "torn"), (whole[:-5], "torn"), (whole, "ok")):
        state.write_bytes(data)
        assert sweep_state.tuner_state(str(folder)) == expected
        assert sweep_state.restorable(str(folder)) is (expected == "ok")
    sweep_state.discard_tuner(str(folder))
    assert not state.exists()
    sweep_state.discard_tuner(str(folder))  # nothing there: no error


def test_resume_of_a_start_that_failed_before_its_first_trial_says_so(tmp_path, capsys):
    config = write_config(tmp_path, "torn")
    folder = tmp_path / "results" / "torn"
    folder.mkdir(parents=True)
    (folder / sweep_state.TUNER_STATE).write_bytes(b"")
    assert main([str(config), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"{config}: --resume: {folder}/tuner.pkl is empty or cut short (a start that failed "
        "before its first trial): start it again without --resume"
    ]


@pytest.mark.sweep
def test_a_tuner_that_fails_to_build_leaves_nothing_that_blocks_a_rerun(tmp_path):
    """Issue 26: Tune creates tuner.pkl, then pickles the Tuner into it; a failure in between
    (injected there: faults.py's ``tuner`` point) left 0 bytes, the next start said "pass
    --resume" and --resume died with EOFError. Now the file is removed with the failure."""
    rules = tmp_path / "faults" / "rules.json"
    rules.parent.mkdir()
    rules.write_text(json.dumps([{"point": "tuner", "action": "raise"}]))
    config = write_config(tmp_path, "build", sweep={"num_samples": 1})
    env = {**os.environ, "ORCHESTRATOR_FAULTS": str(rules)}
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.sweep", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode != 0
    assert "InjectedFault: injected fault at tuner" in proc.stderr, proc.stderr[-2000:]
    assert (rules.parent / "fired-0.json").is_file()  # it fired where Tune writes tuner.pkl
    folder = tmp_path / "results" / "build"
    assert not (folder / sweep_state.TUNER_STATE).exists()
    assert not sweep_state.restorable(str(folder))  # the next start is a fresh one
