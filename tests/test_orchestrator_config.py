"""Experiment YAML: the shipped configs validate; bad ones fail with one line naming the file
and the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, error_of, minimal, run_sweep_cli

from orchestrator.config import INIT_MODES, ConfigError, load_config, parse_config
from orchestrator.space import DefineByRun, describe, explored


def test_shipped_configs_validate(monkeypatch, tmp_path):
    digits = load_config(ROOT / "experiments" / "digits.yaml")
    assert digits.model.name == "flatten_vit_micro" and digits.data.kind == "digits"
    assert digits.sweep.num_samples >= 12 and digits.resources.gpus_per_trial == 0
    assert digits.tracking.uri is None and digits.tracking_uri().startswith("sqlite:///")
    assert len(explored(digits.tunable_sections)) >= 5  # Optuna has a real space to explore
    with pytest.raises(
        ConfigError,
        match="imagenet.yaml: model.checkpoint: environment "
        "variable FLATTEN_SWIN_T_CKPT is not set",
    ):
        load_config(ROOT / "experiments" / "imagenet.yaml")
    for var in ("FLATTEN_SWIN_T_CKPT", "FLATTEN_SWIN_S_CKPT", "FLATTEN_SWIN_B_CKPT"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    for var in ("IMAGENET", "SHARED"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    for file, model in (
        ("imagenet.yaml", "flatten_swin_tiny"),
        ("imagenet_swin_s.yaml", "flatten_swin_small"),
        ("imagenet_swin_b.yaml", "flatten_swin_base"),
    ):
        imagenet = load_config(ROOT / "experiments" / file)
        assert imagenet.data.train == tmp_path / "imagenet" / "train"
        assert imagenet.model.name == model and imagenet.model.num_classes == 1000
        assert imagenet.resources.gpus_per_trial == 1 and imagenet.finetune.workers > 1
        letter = model.removeprefix("flatten_swin_")[0].upper()
        assert imagenet.model.checkpoint == tmp_path / f"flatten_swin_{letter.lower()}_ckpt"


def test_init_modes_match_prune_core():
    import prune_core

    assert tuple(INIT_MODES) == tuple(prune_core.INIT_MODES)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"search__target": {"low": 0, "high": 0.5}},
            "experiments/x.yaml: search.target.low: must be in (0, 1], got 0",
        ),
        (
            {"search__target": 1.5},
            "experiments/x.yaml: search.target: must be in (0, 1], got 1.5",
        ),
        (
            {"search__target": {"low": 0.8, "high": 0.3}},
            "experiments/x.yaml: search.target: low (0.8) must be below high (0.3)",
        ),
        (
            {"search__sim_temperature": {"low": 0.1, "high": 10, "log": True, "step": 1}},
            "experiments/x.yaml: search.sim_temperature: step and log cannot be combined",
        ),
        (
            {"search__init_mode": ["uniform", "bogus"]},
            "experiments/x.yaml: search.init_mode.choices: must be one of",
        ),
        (
            {"search__mac_target": 0.5},
            "experiments/x.yaml: search.mac_target: unknown key",
        ),
        ({"model__img_szie": 16}, "experiments/x.yaml: model.img_szie: unknown key"),
        ({"sweep__sampler": "grid"}, "experiments/x.yaml: sweep.sampler: input should be"),
        ({"teacher__epochs": 0}, "experiments/x.yaml: teacher.epochs: must be > 0 when neither"),
        ({"data__kind": "parquet"}, "experiments/x.yaml: data.train: required for kind parquet"),
        (
            {"model__num_classes": 100},
            "experiments/x.yaml: model.num_classes: digits has 10 classes",
        ),
    ],
)
def test_errors_name_file_and_field(overrides, expected):
    message = error_of(minimal(**overrides))
    assert message.startswith(expected), message
    assert "\n" not in message


def test_missing_section_is_named():
    raw = minimal()
    del raw["finetune"]
    assert error_of(raw) == "experiments/x.yaml: finetune: required"


def test_fixed_value_allowed_anywhere_a_range_is():
    fixed = {
        "target": 0.4,
        "sim_temperature": 2.0,
        "init_mode": "magnitude",
        "init_scale": 0.0,
        "mac_loss_weight": 5.0,
        "lr": 1e-3,
        "logit_lr": 0.05,
    }
    config = parse_config(minimal(search=fixed, finetune={"epochs": 1, "lr": 2e-3}), "x.yaml")
    assert explored(config.tunable_sections) == []
    constants = DefineByRun(config.tunable_sections)(None)
    assert {k: constants[f"search/{k}"] for k in fixed} == fixed
    assert constants["finetune/lr"] == 2e-3
    # every tunable leaf is a constant, including those the file leaves at their default
    assert constants["search/penalty"] == "squared" and constants["finetune/distill_alpha"] == 0.5


def test_define_by_run_samples_inside_the_ranges():
    import optuna

    config = parse_config(
        minimal(
            search={
                "target": {"low": 0.3, "high": 0.8},
                "sim_temperature": {"low": 0.1, "high": 10, "log": True},
                "init_mode": ["uniform", "attn_leave_out"],
                "init_scale": {"low": 0.5, "high": 2.0},
                "distill_alpha": [0.0, 0.5],  # any space-typed setting can be explored
            },
            finetune={"epochs": 1, "lr": [1e-3, 3e-3]},
        ),
        "x.yaml",
    )
    space = DefineByRun(config.tunable_sections)
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0)
    )
    modes = set()
    for _ in range(20):
        trial = study.ask()
        constants = space(trial)
        p = trial.params
        assert 0.3 <= p["search/target"] <= 0.8 and 0.1 <= p["search/sim_temperature"] <= 10
        assert p["search/init_mode"] in ("uniform", "attn_leave_out")
        assert p["finetune/lr"] in (1e-3, 3e-3) and p["search/distill_alpha"] in (0.0, 0.5)
        # init_scale means nothing under uniform scores: sampled only for the other modes
        assert ("search/init_scale" in p) == (p["search/init_mode"] != "uniform")
        modes.add(p["search/init_mode"])
        assert {"search/mac_loss_weight", "search/lr", "finetune/weight_decay"} <= set(constants)
        assert not set(constants) & set(p)
        study.tell(trial, [1.0, 1.0])
    assert modes == {"uniform", "attn_leave_out"}
    assert dict(describe(config.tunable_sections))["search/sim_temperature"] == (
        "log range [0.1, 10]"
    )


def test_yaml_level_errors(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text(yaml.safe_dump(minimal()) + "seed: 1\nseed: 2\n")
    with pytest.raises(ConfigError, match=r"dup.yaml: line \d+: invalid YAML: .*duplicate key"):
        load_config(dup)
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: {name: [\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: line \d+: invalid YAML"):
        load_config(broken)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty.yaml: the file is empty"):
        load_config(empty)
    with pytest.raises(ConfigError, match="nope.yaml: no such file"):
        load_config(tmp_path / "nope.yaml")


def test_paths_expand_env_vars_and_become_absolute(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARDS", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    raw = minimal(data={"kind": "parquet", "train": "$SHARDS/train", "val": "rel/val"})
    config = parse_config(raw, "x.yaml")
    assert config.data.train == tmp_path / "train" and config.data.val == tmp_path / "rel" / "val"
    monkeypatch.delenv("SHARDS")
    raw = minimal(data={"kind": "parquet", "train": "${SHARDS}/train", "val": "v"})
    assert error_of(raw) == (
        "experiments/x.yaml: data.train: environment variable SHARDS is not set"
    )


def test_paths_trials_read_from_the_environment_are_resolved_in_the_driver(tmp_path, monkeypatch):
    """Issue 26: a relative FASHION_MNIST_DIR passed --dry-run, trained the teacher, then every
    trial failed (Tune runs each in its own folder, where the relative path means nothing). The
    driver makes it data.root, absolute; the trials never read the variable."""
    from orchestrator.config import _ENV_PATHS
    from prune_core.fashion_mnist import ENV_VAR

    assert _ENV_PATHS[("data", "root")][0] == ENV_VAR
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(ENV_VAR, "data/fashion")
    config = parse_config(minimal(data={"kind": "fashion_mnist"}), "x.yaml")
    assert config.data.root == tmp_path / "data" / "fashion"
    yaml_root = parse_config(minimal(data={"kind": "fashion_mnist", "root": "mine"}), "x.yaml")
    assert yaml_root.data.root == tmp_path / "mine"  # the file's own setting wins
    assert parse_config(minimal(), "x.yaml").data.root is None  # digits reads no folder
    monkeypatch.delenv(ENV_VAR)
    assert parse_config(minimal(data={"kind": "fashion_mnist"}), "x.yaml").data.root is None


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_sweep_cli(*args, cwd=cwd)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            {"search__target": {"low": 0, "high": 0.5}},
            "search.target.low: must be in (0, 1]",
        ),
        ({"model__name": "no_such_vit"}, "model.name: unknown timm model 'no_such_vit'"),
        ({"model__checkpoint": "missing.pth"}, "model.checkpoint: no such file:"),
        ({"tracking__uri": "./mlruns"}, "tracking.uri: './mlruns' is MLflow's retired file store"),
    ],
)
def test_cli_bad_input_one_line_no_traceback_nothing_written(tmp_path, edit, expected):
    raw = minimal(**edit)
    raw["storage"] = {"path": str(tmp_path / "results")}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = run_cli(str(path), cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"{path}: {expected}"] or (len(lines) == 1 and expected in lines[0]), lines
    assert lines[0].startswith(str(path))
    assert "Traceback" not in proc.stderr + proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # nothing written


def test_cli_missing_file_and_dry_run(tmp_path):
    proc = run_cli("nope.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == "nope.yaml: no such file"
    raw = minimal(search={"target": {"low": 0.3, "high": 0.8}})
    raw["storage"] = {"path": str(tmp_path / "results")}
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = run_cli(str(path), "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "search/target" in proc.stdout and "range [0.3, 0.8]" in proc.stdout
    assert "1 CPU, 0 GPU" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.yaml"]  # dry run writes nothing


def test_search_settings_reach_prune_core():
    """Every search setting of the YAML arrives in prune_core's SearchConfig unchanged."""
    from orchestrator.trial_settings import search_config

    exp = parse_config(
        minimal(
            search__groups=["qk", "v"],
            search__min_width={"qk": 2},
            search__mac_step="cost_proportional",
            search__weight_decay=0.01,
            search__logit_optimizer="sgd",
            search__reweight_lr=0.003,
            search__qk_reweight_init="sqrt_ratio",
            search__use_reweight=False,
            search__similarity_to="kept",
        ),
        "x.yaml",
    )
    config = search_config(exp, {"search": {}})  # nothing sampled: all fixed in the file
    assert config.groups == ("qk", "v") and config.min_width == {"qk": 2}
    assert (config.mac_step, config.logit_optimizer, config.qk_reweight_init) == (
        "cost_proportional",
        "sgd",
        "sqrt_ratio",
    )
    assert (config.weight_decay, config.reweight_lr, config.use_reweight) == (0.01, 0.003, False)
    assert config.similarity_to == "kept" and config.target == 0.5
    sampled = {"search": {"target": 0.3, "init_mode": "uniform"}}
    exp = parse_config(minimal(search__target=[0.3, 0.5], search__init_mode=["uniform"]), "x")
    config = search_config(exp, sampled)
    assert (config.target, config.init_mode, config.init_scale) == (0.3, "uniform", 1.0)
    assert "search.min_width" in error_of(minimal(search__min_width={"qk": 0}))
    assert "search.groups" in error_of(minimal(search__groups=["attn"]))


def test_points_to_evaluate_are_checked_against_the_space() -> None:
    sections = {
        "search": {"target": [0.3, 0.5]},
        "finetune": {"epochs": 1, "lr": {"low": 1e-4, "high": 1e-2, "log": True}},
    }
    point = {"search": {"target": 0.3}, "finetune": {"lr": 1e-3}}
    ok = parse_config(
        minimal(**sections, sweep__points_to_evaluate=[point, {}]), "experiments/x.yaml"
    )
    assert ok.sweep.points_to_evaluate[0] == point
    cases = {
        "'search.lr' is not an explored parameter (explored: search.target, finetune.lr)": {
            "search": {"lr": 1e-3}
        },
        "search.target: 0.4 is not one of the choices [0.3, 0.5]": {"search": {"target": 0.4}},
        "finetune.lr: 0.1 is outside [0.0001, 0.01]": {"finetune": {"lr": 0.1}},
        "finetune.lr: expected a number, got 'fast'": {"finetune": {"lr": "fast"}},
    }
    for message, bad in cases.items():
        error = error_of(minimal(**sections, sweep__points_to_evaluate=[{}, bad]))
        assert error == f"experiments/x.yaml: sweep.points_to_evaluate[1]: {message}", error
    flat = error_of(minimal(**sections, sweep__points_to_evaluate=[{"search/target": 0.3}]))
    assert flat.startswith("experiments/x.yaml: sweep.points_to_evaluate.0."), flat


def fresh_python(code: str) -> str:
    """What ``code`` prints in a new interpreter (a fresh ``sys.modules``), from the repo root."""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return out.stdout.strip() + ("\n" + out.stderr if out.stderr.strip() else "")


def test_the_sweep_cli_loads_no_torch_ray_or_mlflow_before_it_needs_them() -> None:
    """--dry-run and config errors answer in about a second: importing the CLI (and parsing a
    config) must not pull in torch, Ray or MLflow."""
    code = (
        "import sys; import orchestrator.sweep as s; "
        "from orchestrator.config import load_config; load_config('experiments/digits.yaml'); "
        "print(sorted(m for m in ('torch', 'ray', 'mlflow', 'optuna') if m in sys.modules))"
    )
    out = fresh_python(code)
    assert out.splitlines()[0] == "[]", out


def test_the_checks_before_ray_starts_do_not_import_torch() -> None:
    """What a run does before the teacher can start (config, inputs, local resources) is on the
    critical path: the digits config asks for no GPU (``gpus_per_worker`` counts only with
    ``finetune.workers`` > 1), so counting GPUs must not import torch (~2 s measured)."""
    code = (
        "import sys; from orchestrator import preflight; "
        "from orchestrator.config import check_inputs, load_config; "
        "exp = load_config('experiments/digits.yaml'); check_inputs(exp, 'x'); "
        "preflight.check(exp, 'x', local=True, model=False); "
        "print(preflight.local_resources(exp), 'torch' in sys.modules)"
    )
    out = fresh_python(code)
    assert out.splitlines()[0] == "(2.0, 0.0) False", out


def test_the_sections_cannot_drift_from_prune_cores_configs() -> None:
    """Every SearchConfig / TrainConfig field is set from exactly one place (the section's field
    of the same name, fixed or sampled, or the seed), with the same default and the same
    allowed values."""
    import dataclasses
    import typing

    import prune_core as pc
    import prune_core.pruning_search as ps
    from orchestrator import schema, space
    from orchestrator import trial_settings as ts

    def defaults(cls) -> dict:
        out = {}
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
        return out

    def plain(default):
        if isinstance(default, space.FloatSpace | space.ChoiceSpace):
            return default.value
        return tuple(default) if isinstance(default, list) else default

    cases = (
        (schema.SearchSettings, pc.SearchConfig),
        (schema.FinetuneSettings, pc.TrainConfig),
        (schema.TeacherConfig, pc.TrainConfig),
    )
    for section, config in cases:
        mirrored = set(section.model_fields) - ts.ORCHESTRATOR_ONLY
        fields = {f.name for f in dataclasses.fields(config)}
        assert mirrored <= fields, (section, mirrored - fields)
        if section is not schema.TeacherConfig:  # the teacher has no distillation settings
            assert mirrored | {"seed"} == fields, (section, fields - mirrored)
        # the teacher trains from scratch: its lr default (2e-3) is its own, on purpose
        ref = defaults(config) if section is not schema.TeacherConfig else {}
        for name in mirrored:
            default = section.model_fields[name].get_default(call_default_factory=True)
            if name in ref and default is not None and name != "epochs":
                assert plain(default) == ref[name], (section, name)
    # the choices a section allows are prune_core's
    choices = {
        "init_mode": pc.INIT_MODES,
        "penalty": ps.PENALTIES,
        "logit_optimizer": ps.LOGIT_OPTIMIZERS,
        "mac_step": ps.MAC_STEPS,
        "qk_reweight_init": ps.QK_REWEIGHT_INITS,
        "similarity_to": ("all", "kept"),
    }
    for name, allowed in choices.items():
        assert schema.SearchSettings.model_fields[name].annotation.ALLOWED == allowed, name
    groups = schema.SearchSettings.model_fields["groups"].annotation
    assert typing.get_args(typing.get_args(groups)[0]) == pc.prunable.GROUPS


def test_one_thread_rule_for_every_process_kind():
    from orchestrator.schema import ResourcesConfig

    r = ResourcesConfig(cpus_per_trial=0.5, teacher_cpus=1.5, cpus_per_worker=3)
    # CPUs rounded up, at least 1: the teacher trains and is timed on the same 2 threads
    assert (r.threads(), r.threads(r.teacher_cpus), r.threads(r.cpus_per_worker)) == (1, 2, 3)
    pinned = ResourcesConfig(torch_threads=4, teacher_cpus=1.5)
    assert pinned.threads() == pinned.threads(pinned.teacher_cpus) == 4


def test_teacher_and_front_timing_use_the_thread_rule(monkeypatch):
    """Both set torch's threads from ``resources.threads(teacher_cpus)`` (the teacher once
    used int(): 1.5 CPUs trained on 1 thread and were timed on 2)."""
    import torch

    from orchestrator import speed, teacher

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop  # the threads are set: nothing after matters here

    exp = parse_config(minimal(resources={"teacher_cpus": 1.5, "num_cpus": 2}), "x.yaml")
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    monkeypatch.setattr(teacher, "build_datasets", stop)
    monkeypatch.setattr(speed, "load_teacher", stop)
    with pytest.raises(Stop):
        teacher.train_teacher(exp)
    with pytest.raises(Stop):
        speed._timing_task(exp, {}, {})
    assert seen == [2, 2]
