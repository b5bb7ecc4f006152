"""Issue 26, "nothing silently wrong, nobody let in": state a failed start leaves, what
``--resume`` compares, values MLflow would cut, and names from outside that become paths."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
from helpers import fault_rules, run_sweep_cli, write_config

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
    rules = fault_rules(tmp_path, {"point": "tuner", "action": "raise"})
    config = write_config(tmp_path, "build", sweep={"num_samples": 1})
    env = {**os.environ, "ORCHESTRATOR_FAULTS": str(rules)}
    proc = run_sweep_cli(config, timeout=600, env=env)
    assert proc.returncode != 0
    assert "InjectedFault: injected fault at tuner" in proc.stderr, proc.stderr[-2000:]
    assert (rules.parent / "fired-0.json").is_file()  # it fired where Tune writes tuner.pkl
    folder = tmp_path / "results" / "build"
    assert not (folder / sweep_state.TUNER_STATE).exists()
    assert not sweep_state.restorable(str(folder))  # the next start is a fresh one


# ----------------------------------------------------------------------------- long values
def test_values_over_mlflows_limits_are_shortened_with_one_warning():
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

    from orchestrator import mlflow_limits

    mlflow_limits._WARNED.clear()
    assert mlflow_limits.limits() == (MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH)
    said: list[str] = []
    params = mlflow_limits.fit_params({"a": "x" * 9000, "b": 7}, warn=said.append)
    assert params["b"] == "7" and len(params["a"]) == MAX_PARAM_VAL_LENGTH
    assert params["a"].endswith(
        "[9000 characters, over MLflow's 6000: whole in the parent run's config.json]"
    )
    mlflow_limits.fit_params({"a": "x" * 9000}, warn=said.append)  # the same key: no 2nd line
    assert said == [
        "warning: MLflow param 'a' is 9,000 characters, over MLflow's limit of 6,000: "
        "shortened there; the whole value is in the parent run's config.json"
    ]
    space = {"search/target": "choice of " + ", ".join(f"{i / 1300:g}" for i in range(1300))}
    space["finetune/lr"] = "range [0.001, 0.01]"
    tag = json.loads(
        mlflow_limits.json_tag("search_space", space, "search_space.json", said.append)
    )
    length = len(json.dumps(space["search/target"]))
    assert tag == {
        "search/target": f"[{length} characters: see search_space.json]",
        "finetune/lr": "range [0.001, 0.01]",
    }
    assert len(said) == 2 and "'search_space'" in said[1]
    huge = {f"k{i}": "y" * 50 for i in range(400)}  # many short entries: the pointer alone
    assert json.loads(mlflow_limits.json_tag("h", huge, "h.json", said.append))["see"] == "h.json"


def test_a_long_choice_list_reaches_mlflow_whole_in_artifacts_and_valid_in_tags(tmp_path, capsys):
    """Issue 26: 1,300 choices made the parent's search_space tag invalid JSON (cut at 8,000)
    and a param cut at 6,000, without a word."""
    from helpers import minimal
    from mlflow import MlflowClient

    from orchestrator import mlflow_limits, space, tracking
    from orchestrator.config import parse_config

    mlflow_limits._WARNED.clear()
    choices = [round(0.1 + i * 0.0005, 4) for i in range(1300)]
    exp = parse_config(minimal(search__target=choices), "x.yaml")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp_id = tracking.experiment_id(uri, "long", tmp_path / "artifacts")
    rows = space.describe(exp.tunable_sections)
    run_id = tracking.start_parent(uri, exp_id, "long", exp.model_dump(mode="json"), rows)
    run = MlflowClient(uri).get_run(run_id)
    assert all(len(v) <= 6000 for v in run.data.params.values())
    assert all(len(v) <= 8000 for v in run.data.tags.values())
    tag = json.loads(run.data.tags["search_space"])  # valid JSON, not cut mid-value
    assert "see search_space.json" in tag["search/target"]
    folder = Path(MlflowClient(uri).download_artifacts(run_id, "", str(tmp_path / "got")))
    whole = json.loads((folder / "search_space.json").read_text())
    assert whole["search/target"].count(",") == 1299  # every choice, in the artifact
    config = json.loads((folder / "config.json").read_text())
    assert len(config["search"]["target"]["choices"]) == 1300
    err = capsys.readouterr().err
    assert "warning: MLflow tag 'search_space' is" in err and err.count("'search_space'") == 1
    assert "warning: MLflow param " in err  # the choice list as a param, shortened


# ----------------------------------------------------------------------------- names from outside
@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../b", ".", "", "m0/../../m1"])
def test_a_name_that_leaves_its_folder_is_refused(tmp_path, name):
    from orchestrator._paths import EscapesFolder, contained

    with pytest.raises(EscapesFolder, match="is no path inside"):
        contained(tmp_path, name)


def test_names_inside_their_folder_pass_and_links_out_do_not(tmp_path):
    from orchestrator._paths import EscapesFolder, contained

    assert contained(tmp_path, "m0") == tmp_path.resolve() / "m0"
    assert contained(tmp_path, "teacher/teacher.pt") == tmp_path.resolve() / "teacher/teacher.pt"
    (tmp_path / "out").symlink_to(tmp_path.parent)
    with pytest.raises(EscapesFolder):
        contained(tmp_path, "out/x")


def test_a_bucket_key_with_dotdot_is_never_written_outside_the_sweep(tmp_path, monkeypatch):
    """mirror.pull copies the mirror's keys under the sweep folder: a key holding '..' is
    refused before anything is written (S3 keys may contain it)."""
    import pyarrow.fs as pafs
    from helpers import minimal

    from orchestrator import mirror
    from orchestrator._paths import EscapesFolder
    from orchestrator.config import parse_config

    exp = parse_config(
        minimal(storage={"path": "s3://bucket/sweeps", "local_dir": str(tmp_path / "local")}),
        "x.yaml",
    )

    class Listing:  # the bucket's listing, as pyarrow's S3 filesystem gives it
        def get_file_info(self, selector):
            return [pafs.FileInfo(f"{selector.base_dir}/../../../evil.txt", pafs.FileType.File)]

    monkeypatch.setattr(mirror, "_remote", lambda uri: (Listing(), "bucket/sweeps/t.driver"))
    with pytest.raises(EscapesFolder, match="evil.txt"):
        mirror.pull(exp)
    assert not list(tmp_path.rglob("evil.txt"))


def test_a_forged_child_run_stays_out_of_the_table(tmp_path, capsys):
    """Issue 26: a child run whose parent tag names our sweep (top-1 99.9, 1 MAC, trial_id
    '../../..') entered the front after --resume, which rebuilds the table from MLflow. Only the
    trials the driver recorded as launched are read back."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

    from orchestrator import launched, tracking
    from orchestrator.child_runs import ChildRuns
    from orchestrator.trial_table import TrialTable

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(uri)
    exp_id = tracking.experiment_id(uri, "forged", tmp_path / "artifacts")
    parent = c.create_run(exp_id, run_name="sweep").info.run_id
    runs = {}
    for tid, top1 in (("a1b2_00000", 61.0), ("../../../../tmp/evil", 99.9)):
        tags = {tracking.PARENT_TAG: parent, tracking.TRIAL_TAG: tid, "trial_status": "TERMINATED"}
        run = c.create_run(exp_id, run_name=tid, tags=tags).info.run_id
        metrics = [Metric("top1", top1, 0, 1), Metric("macs", 1e6 if top1 < 90 else 1, 0, 1)]
        c.log_batch(run, metrics=metrics + [Metric("macs_ratio", 0.5, 0, 1)])
        c.log_batch(run, tags=[RunTag("x", "y")])
        c.set_terminated(run)
        runs[tid] = run
    sweep_dir = tmp_path / "sweep"
    launched.record(sweep_dir, "a1b2_00000")  # what LaunchedTrials wrote as Tune started it
    assert (sweep_dir / launched.LAUNCHED).stat().st_mode & 0o777 == 0o600
    table = TrialTable(uri, parent, str(sweep_dir), "t")
    ChildRuns(uri, parent, "forged", [], table, adopted=False).adopt()
    assert table.table().column("trial_id").to_pylist() == ["a1b2_00000"]
    err = capsys.readouterr().err
    forged = runs["../../../../tmp/evil"]
    assert (
        f"1 child run(s) of this sweep's parent run were not launched by it (e.g. run {forged}"
        in (err)
    )
    assert launched.own_runs([], tmp_path / "older") == []  # no record: nothing to check against


# ----------------------------------------------------------------------------- resume after an edit
def test_resume_after_editing_the_yaml_is_refused_naming_the_fields(tmp_path, capsys, monkeypatch):
    """Issue 26: --resume with an edited file mixed both (Tune restored the old Optuna space,
    trials trained with the new file). Compared with the config sweep.json keeps, both sides
    masked alike (the password in tracking.uri is neither stored nor a change)."""
    import yaml
    from mlflow import MlflowClient

    from orchestrator.config import load_config
    from orchestrator.sweep import _masked

    uri = f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"
    monkeypatch.setenv("PW", "hunter2")
    config = write_config(tmp_path, "edited", tracking={"uri": "postgresql://u:${PW}@db/x"})
    exp = _masked(load_config(config), uri)  # as the driver holds it
    exp.sweep_dir.mkdir(parents=True)
    parent, fresh = sweep_state.parent_run(exp, uri)  # what the first start did
    assert fresh and "hunter2" not in (exp.sweep_dir / "sweep.json").read_text()
    (exp.sweep_dir / sweep_state.TUNER_STATE).write_bytes(pickle.dumps({}))  # a whole state
    monkeypatch.setenv("PW", "rotated")  # a new password is no change to the sweep
    assert sweep_state.config_changes(_masked(load_config(config), uri)) == {}
    raw = yaml.safe_load(config.read_text())
    raw["search"]["steps"] = 7
    raw["finetune"]["lr"] = {"low": 0.001, "high": 0.01}
    config.write_text(yaml.safe_dump(raw))
    capsys.readouterr()  # MLflow's own lines as it made the store
    assert main([str(config), "--resume", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"{config}: --resume: changed since the sweep started: finetune.lr.high, finetune.lr.low, "
        "finetune.lr.value, search.steps; resume with the file it started with, or pass "
        "--accept-changes (recorded on the parent run)"
    ]
    assert main([str(config), "--accept-changes", "--tracking-uri", uri]) == 2
    assert "--accept-changes goes with --resume" in capsys.readouterr().err
    # --resume --accept-changes records them on the parent run (the driver calls this once
    # the parent run is found again) and the new file becomes the reference
    edited = _masked(load_config(config), uri)
    changes = sweep_state.config_changes(edited)
    assert changes["search.steps"] == (6, 7)
    sweep_state.record_changes(edited, uri, parent, changes)
    run = MlflowClient(uri).get_run(parent)
    assert run.data.tags["config_changes"] == ", ".join(changes)
    got = MlflowClient(uri).download_artifacts(parent, "config_changes.json", str(tmp_path))
    assert json.loads(Path(got).read_text())[0]["changes"]["search.steps"] == {
        "started": 6,
        "now": 7,
    }
    assert sweep_state.config_changes(edited) == {}
