"""A picked front trial as files a deployment can use (``python -m orchestrator.pick --export``).

:func:`fetch` reads what the trial left in MLflow (its child run's ``plan.json`` and
``weights.pt``, the parent run's ``config.json``), checking it on the way: the run must be a
child of the sweep's parent run, the architecture a registered timm model with plain
arguments (none that would make timm read a file) or, for ``model.source: hf``, the parent
run's transformers config (``hf_config.json``, checked by :mod:`orchestrator.pick_hf`), the
weights loaded with ``weights_only=True``, every file downloaded under a fixed name (nothing
read from MLflow becomes a path). :func:`export` writes ``model.onnx`` (dynamic batch,
``prune_core.export_onnx``), ``plan.json`` + ``weights.pt`` (``prune_core.save_pruned``) with
``model.json`` (the architecture they need; an hf model's transformers config beside it as
``config.json``), ``sweep.yaml`` (the sweep's config as it ran, checked by the schema) and a
model card ``README.md``; the folder is built beside the target and
renamed into place, so it appears whole or not at all.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

import prune_core
from orchestrator import pick_hf
from orchestrator.hf_model import CONFIG_ARTIFACT
from orchestrator.pruned_pyfunc import build
from orchestrator.report import Refused
from orchestrator.tracking import PARENT_TAG, client
from prune_core.training import logits_of

ROOT = Path(__file__).resolve().parents[1]
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # an experiment name (schema.Experiment)
# timm.create_model arguments that read files or fetch weights: never from MLflow's data
UNSAFE_KWARGS = {"pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path",
                 "cache_dir", "pretrained_strict"}  # fmt: skip
TOLERANCE = 1e-4  # ONNX vs PyTorch logits, max |Δ|
SWEEP_FILE = "sweep.yaml"  # the sweep's config as it ran, in the export folder


@dataclass
class Picked:
    row: dict  # the front's row (validated by pick.validate)
    arch: dict  # model.json: name, num_classes, img_size, kwargs (hf: source, config too)
    plan: prune_core.Plan
    weights: dict[str, torch.Tensor]
    config: dict  # the sweep's config.json (credentials already masked by the sweep)
    params: dict[str, str] = field(default_factory=dict)  # the trial's MLflow params
    commit: str = "unknown"
    parent: str = ""
    hf_config: dict | None = None  # model.source hf: the transformers config (pick_hf)

    @property
    def input_size(self) -> tuple[int, int, int]:
        a = self.arch
        if self.hf_config is not None:
            return (pick_hf.channels(self.hf_config), a["img_size"], a["img_size"])
        return (int(a["kwargs"].get("in_chans", 3)), a["img_size"], a["img_size"])

    def model(self) -> torch.nn.Module:
        return build(self.arch, self.plan, self.weights, hf_config=self.hf_config)


def check_arch(model: dict) -> dict:
    """The ``model`` section of config.json as model.json, or Refused (an hf model's
    transformers config is checked apart: :func:`orchestrator.pick_hf.check_config`)."""
    import timm

    if not isinstance(model, dict):
        raise Refused("config.json has no model section")
    name, classes, size = model.get("name"), model.get("num_classes"), model.get("img_size")
    kwargs = model.get("kwargs") or {}
    for key, value, high in (("num_classes", classes, 1_000_000), ("img_size", size, 8192)):
        if type(value) is not int or not 1 <= value <= high:
            raise Refused(f"config.json: model.{key} {str(value)[:20]!r} is out of range")
    source = model.get("source", "timm")  # absent: a sweep from before model.source
    if source == "hf":
        return pick_hf.arch(name, classes, size, kwargs)
    if source != "timm":
        raise Refused(f"config.json: model.source {str(source)[:20]!r} is neither timm nor hf")
    if not isinstance(name, str) or not timm.is_model(name):
        raise Refused(f"config.json: model {str(name)[:60]!r} is not a timm model here")
    if not isinstance(kwargs, dict):
        raise Refused("config.json: model.kwargs is not a mapping")
    for key, value in kwargs.items():
        plain = isinstance(value, (bool, int, float)) or (
            isinstance(value, str) and len(value) < 64 and not re.search(r"[/\\:]", value)
        )
        if key in UNSAFE_KWARGS or not re.match(r"^[a-z_][a-z0-9_]*$", key) or not plain:
            raise Refused(f"config.json: model.kwargs.{key[:40]} is not accepted")
    return {"name": name, "num_classes": classes, "img_size": size, "kwargs": dict(kwargs)}


def fetch(uri: str, parent: str, row: dict) -> Picked:
    """The trial of ``row`` (a validated front row) from MLflow (the module doc)."""
    c = client(uri)
    run = c.get_run(row["run_id"])
    if run.data.tags.get(PARENT_TAG) != parent:
        raise Refused(f"run {row['run_id']} is not a trial of the sweep's parent run {parent}")
    with tempfile.TemporaryDirectory(prefix="pick-") as tmp:
        config = json.loads(Path(c.download_artifacts(parent, "config.json", tmp)).read_text())
        trial = Path(tmp) / "trial"
        trial.mkdir()
        plan = Path(c.download_artifacts(row["run_id"], "plan.json", str(trial))).read_text()
        weights = torch.load(
            c.download_artifacts(row["run_id"], "weights.pt", str(trial)),
            map_location="cpu",
            weights_only=True,
        )
        if not isinstance(config, dict):
            raise Refused("the parent run's config.json is not a mapping")
        arch = check_arch(config.get("model"))
        hf_config = None
        if arch.get("source") == "hf":
            if CONFIG_ARTIFACT not in {f.path for f in c.list_artifacts(parent)}:
                raise Refused(
                    f"the parent run has no {CONFIG_ARTIFACT}: the sweep started before pick "
                    "could rebuild hf models; run it again to export or register its models"
                )
            text = Path(c.download_artifacts(parent, CONFIG_ARTIFACT, tmp)).read_text()
            hf_config = pick_hf.check_config(json.loads(text), arch["num_classes"])
    return Picked(
        row=row,
        arch=arch,
        plan=prune_core.Plan.from_json(plan),
        weights=weights,
        config=config,
        params=dict(run.data.params),
        commit=c.get_run(parent).data.tags.get("git_commit", "unknown"),
        parent=parent,
        hf_config=hf_config,
    )


def sweep_yaml(config: dict) -> str | None:
    """The sweep's config.json as the YAML ``orchestrator.sweep`` takes, or None when it does
    not pass the schema (a sweep from an older release): the card then names experiments/.

    Checked by the schema alone, not :func:`orchestrator.config.parse_config`: that expands
    ``$VAR`` in path fields, and a value read from MLflow must not pull this machine's
    environment into a file; every string is passed through the credential mask again.
    """
    import yaml
    from pydantic import ValidationError

    from orchestrator._redact import redact
    from orchestrator.schema import Experiment

    try:
        checked = Experiment.model_validate(copy.deepcopy(config)).model_dump(mode="json")
    except (ValidationError, ValueError, TypeError):
        return None
    header = (
        "# The sweep this model came from, as it ran (orchestrator.pick --export).\n"
        "# Set storage.path and tracking.uri for your machine before running it again.\n"
    )
    return header + yaml.safe_dump(redact(checked), sort_keys=False)


def write_model_files(picked: Picked, model: torch.nn.Module, folder: Path, opset=None) -> float:
    """model.onnx, plan.json, weights.pt, model.json and sweep.yaml in ``folder`` (an hf
    model's transformers config beside them: config.json); returns the largest |Δ| of the ONNX
    logits from PyTorch's on a seeded batch of 4 (ValueError beyond 1e-4)."""
    prune_core.export_onnx(model, folder / "model.onnx", picked.input_size, opset=opset)
    prune_core.save_pruned(model, picked.plan, folder)
    (folder / "model.json").write_text(json.dumps(picked.arch, indent=1) + "\n")
    config = sweep_yaml(picked.config)
    if config is not None:
        (folder / SWEEP_FILE).write_text(config)
    if picked.hf_config is not None:
        (folder / pick_hf.CONFIG_FILE).write_text(json.dumps(picked.hf_config, indent=1) + "\n")
    import onnxruntime as ort

    x = torch.randn(4, *picked.input_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = logits_of(model(x)).numpy()
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": x.numpy()})[0]
    delta = float(abs(got - want).max())
    if not delta <= TOLERANCE:
        raise ValueError(f"model.onnx differs from the PyTorch model by {delta:.2e}")
    return delta


def export(picked: Picked, teacher: dict, directory: Path, *, opset=None, command="") -> Path:
    """The export folder (module doc); Refused if ``directory`` exists and is not empty."""
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise Refused(f"{directory} exists and is not empty: choose another folder")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        model = picked.model()
        delta = write_model_files(picked, model, staging, opset)
        written = prune_core.onnx_opset(staging / "model.onnx")
        has_sweep_file = (staging / SWEEP_FILE).is_file()
        card = model_card(picked, teacher, delta, written, command, has_sweep_file)
        (staging / "README.md").write_text(card)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 -> what mkdir would have made
        staging.rename(directory)  # an empty directory is replaced; a non-empty one refused
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _text(value) -> str:
    """A value read from MLflow, safe inside a Markdown table or code span."""
    return re.sub(r"[\r\n|`]", " ", str(value))[:200]


def reproduce(picked: Picked, command: str, has_sweep_file: bool) -> list[str]:
    """The commands that rerun the sweep (its config as it ran: ``sweep.yaml`` in this folder)
    and this pick."""
    yaml_file = SWEEP_FILE
    if not has_sweep_file:
        name = picked.config.get("name")
        yaml_file = f"experiments/{name}.yaml" if isinstance(name, str) and NAME.match(name) else ""
        if not yaml_file or not (ROOT / yaml_file).is_file():
            yaml_file = "<the experiment YAML: config.json on the parent run>"
    return [
        f"git checkout {_text(picked.commit).removesuffix('+dirty')}",
        f"python -m orchestrator.sweep {yaml_file}   # the sweep (its trials are not "
        "bit-reproducible across machines)",
        f"{_text(command)}   # this model, from that sweep's front",
    ]


def fixed_settings(config: dict) -> dict[str, str]:
    """The sweep's fixed ``search`` / ``finetune`` settings from its ``config.json``
    (``search/lr`` -> ``0.0005``): a child run's params hold only the explored ones."""
    out = {}
    for section in ("search", "finetune"):
        for name, value in (config.get(section) or {}).items():
            if isinstance(value, dict):  # a tunable leaf: fixed when it has a value
                if value.get("value") is None:
                    continue
                value = value["value"]
            out[f"{section}/{name}"] = str(value)
    return out


def rebuild_lines(picked: Picked) -> list[str]:
    """The model card's lines on rebuilding the PyTorch model from the folder."""
    if picked.hf_config is None:
        return [
            "- `plan.json`, `weights.pt`, `model.json`: the PyTorch model, rebuilt with",
            "  `orchestrator.pruned_pyfunc.build(json.load(open('model.json')), 'plan.json', "
            "'weights.pt')`",
            "  (timm + prune_core: `load_pruned` on the prunable model).",
        ]
    return [
        "- `plan.json`, `weights.pt`, `model.json`, `config.json` (the transformers config: "
        "`from_config`, nothing downloaded): the PyTorch model, rebuilt with",
        "  `orchestrator.pruned_pyfunc.build(json.load(open('model.json')), 'plan.json', "
        "'weights.pt', hf_config=json.load(open('config.json')))`",
        "  (transformers + prune_core: `AutoModelForImageClassification.from_config`, "
        "`make_prunable`, `load_pruned`; or `AutoConfig.from_pretrained` of this folder).",
    ]


def model_card(
    picked: Picked, teacher: dict, delta: float, opset: int, command: str, has_sweep_file: bool
) -> str:
    r, a, cfg = picked.row, picked.arch, picked.config
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    source = cfg.get("model", {}).get("checkpoint") or (cfg.get("teacher") or {}).get("checkpoint")
    if picked.hf_config is not None:  # the checkpoint's own weights were the teacher
        source = f"{a['name']} (transformers {picked.hf_config['model_type']}, from_pretrained)"
    t_top1, t_macs = teacher.get("top1"), teacher.get("macs")
    speed = "not timed"
    if r.get("speedup") is not None:
        speed = (
            f"{r['speedup']:.2f}× over the teacher ({r['latency_ms']:.2f} ms per batch of "
            f"{_text(data.get('eval_batch_size', '?'))}, timed side by side with the teacher at "
            "the sweep's end)"
        )
    lines = [
        f"# {_text(a['name'])} pruned to {r['macs_ratio']:.3f} of its MACs",
        "",
        f"Channel-pruned by flatten-prune (trial `{_text(r['trial_id'])}` of sweep "
        f"`{_text(cfg.get('name', '?'))}`, MLflow run `{r['run_id']}`, parent `{picked.parent}`).",
        "",
        "| | |",
        "|---|---|",
        f"| source model | `{_text(a['name'])}`, {a['num_classes']} classes, {a['img_size']} px, "
        f"weights: {_text(source) if source else 'the sweep’s teacher (trained by the sweep)'} |",
        f"| teacher top-1 | {'?' if t_top1 is None else f'{t_top1:.2f} %'} |",
        f"| top-1 | {r['top1']:.2f} % |",
        f"| MACs | {r['macs']:,} ({r['macs_ratio']:.3f} of "
        f"{'the teacher' if t_macs is None else f'{int(t_macs):,}'}) |",
        f"| params | {'?' if r.get('params') is None else format(r['params'], ',')} |",
        f"| measured speed-up | {speed} |",
        f"| data | {_text(data.get('kind', '?'))}"
        + (f", {_text(data['root'])}" if data.get("root") else "")
        + " |",
        f"| commit | `{_text(picked.commit)}` |",
        f"| ONNX | opset {opset}, dynamic batch; max abs diff to PyTorch {delta:.1e} |",
        "",
        "## Method settings (the trial's explored params, then the sweep's fixed settings)",
        "",
        "| setting | value |",
        "|---|---|",
        *(f"| `{_text(k)}` | {_text(v)} |" for k, v in sorted(picked.params.items())),
        *(
            f"| `{_text(k)}` | {_text(v)} (fixed) |"
            for k, v in sorted(fixed_settings(cfg).items())
            if k not in picked.params
        ),
        "",
        "## Files",
        "",
        "- `model.onnx`: input `images` (batch, "
        + ", ".join(map(str, picked.input_size))
        + "), output `logits`; weights inside (in `model.onnx.data` beside it above 1 GiB).",
        *rebuild_lines(picked),
        *(
            [
                f"- `{SWEEP_FILE}`: the sweep's configuration as it ran (set `storage.path` and "
                "`tracking.uri` for your machine)."
            ]
            if has_sweep_file
            else []
        ),
        "",
        "## Reproduce",
        "",
        "```bash",
        *reproduce(picked, command, has_sweep_file),
        "```",
        "",
    ]
    return "\n".join(lines)
