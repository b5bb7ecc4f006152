"""A picked front trial in MLflow's model registry (``python -m orchestrator.pick --register``).

Under the trial's own child run: a pyfunc (``orchestrator/pruned_pyfunc.py``, logged as code:
the PyTorch pruned model rebuilt from its ``plan.json``, ``weights.pt`` and ``model.json``, and
a transformers model's ``config.json``),
with its signature and an input example, and the same model as ONNX (``mlflow.onnx``: runs
with onnxruntime alone). The pyfunc is registered as a new version of ``NAME`` with the
trial's ``macs_ratio`` and ``top1`` (and trial, run and ONNX model) as version tags, and an
alias (``pareto-0_5`` for ``--max-macs-ratio 0.5``: MLflow's aliases allow no dot) moved to
it. The registry needs a database-backed store (SQLite, PostgreSQL, a server).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np
import torch

from orchestrator.pick_export import Picked, write_model_files
from orchestrator.pick_hf import CONFIG_FILE
from orchestrator.report import Refused
from orchestrator.tracking import check_uri
from prune_core.training import logits_of

PYFUNC = Path(__file__).with_name("pruned_pyfunc.py")
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
ALIAS = re.compile(r"^[A-Za-z0-9_-]{1,255}$")


def default_alias(max_macs_ratio: float | None, row: dict) -> str:
    """``pareto-<the --max-macs-ratio>`` (else ``-<the trial's ratio, 2 decimals>``)."""
    ratio = f"{max_macs_ratio:g}" if max_macs_ratio is not None else f"{row['macs_ratio']:.2f}"
    return "pareto-" + ratio.replace(".", "_")


def _requirements(hf: bool = False) -> list[str]:
    """The pyfunc's pins (the last two: the ONNX model's); ``hf`` adds transformers."""
    import onnxruntime
    import timm

    extra = []
    if hf:
        import transformers

        extra = [f"transformers=={transformers.__version__}"]
    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"timm=={timm.__version__}",
        *extra,
        f"numpy=={np.__version__}",
        f"onnxruntime=={onnxruntime.__version__}",
    ]


def client(uri: str, registry_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=check_uri(uri), registry_uri=registry_uri)


def _uris(restore: tuple | None = None) -> tuple:
    """MLflow's process-wide tracking and registry URIs as they were set, with their
    environment variables (``mlflow.set_tracking_uri`` sets them too); ``restore`` puts them
    back as they were, unset included, so the defaults still apply after :func:`register`."""
    from mlflow.tracking._model_registry import utils as registry
    from mlflow.tracking._tracking_service import utils as tracking

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    if restore is not None:
        tracking._tracking_uri, registry._registry_uri, *env = restore
        for name, value in zip(names, env, strict=True):
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return (tracking._tracking_uri, registry._registry_uri, *map(os.environ.get, names))


def register(uri: str, picked: Picked, name: str, alias: str, files: Path | None = None) -> str:
    """Log, register and alias the picked model (module doc); returns the version number.
    ``files``: an export folder of this model (:mod:`orchestrator.pick_export`) to log, else
    the files are written to a temporary one."""
    import mlflow
    import onnx
    from mlflow.models import infer_signature

    if not MODEL_NAME.match(name):
        raise Refused(f"--register {name[:40]!r}: letters, digits, '_', '-', '.' only")
    if not ALIAS.match(alias) or re.match(r"^[vV]\d+$", alias) or alias == "latest":
        raise Refused(f"--alias {alias[:40]!r}: letters, digits, '_' and '-' only (not vN)")
    row = picked.row
    model = picked.model()
    x = torch.randn(2, *picked.input_size, generator=torch.Generator().manual_seed(0)).numpy()
    with torch.inference_mode():
        y = logits_of(model(torch.from_numpy(x))).numpy()
    signature = infer_signature(x, y)
    previous = _uris()
    c = client(uri, registry_uri=uri)
    status = c.get_run(row["run_id"]).info.status
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        with tempfile.TemporaryDirectory(prefix="pick-register-") as tmp:
            if files is None:
                files = Path(tmp)
                write_model_files(picked, model, files)
            artifacts = {
                "arch": str(files / "model.json"),
                "plan": str(files / "plan.json"),
                "weights": str(files / "weights.pt"),
            }
            hf = picked.hf_config is not None
            if hf:
                artifacts["hf_config"] = str(files / CONFIG_FILE)
            with mlflow.start_run(run_id=row["run_id"]):
                info = mlflow.pyfunc.log_model(
                    name="pruned_model",
                    python_model=str(PYFUNC),
                    artifacts=artifacts,
                    signature=signature,
                    input_example=x,
                    pip_requirements=_requirements(hf),
                )
                onnx_info = mlflow.onnx.log_model(
                    onnx.load(str(files / "model.onnx")),
                    name="pruned_model_onnx",
                    signature=signature,
                    pip_requirements=_requirements()[-2:],
                )
        version = mlflow.register_model(
            info.model_uri,
            name,
            tags={
                "macs_ratio": f"{row['macs_ratio']:.4f}",
                "top1": f"{row['top1']:.2f}",
                "trial_id": row["trial_id"][:100],
                "run_id": row["run_id"],
                "onnx_model_uri": onnx_info.model_uri,
            },
        ).version
        c.set_registered_model_alias(name, alias, version)
        c.update_model_version(
            name,
            version,
            description=f"Pareto trial {row['trial_id'][:100]}: top-1 {row['top1']:.2f} %, "
            f"MAC ratio {row['macs_ratio']:.3f}; ONNX: {onnx_info.model_uri}",
        )
    finally:
        if status != "RUNNING":  # start_run reopened the trial's run; it ends as it was
            c.set_terminated(row["run_id"], status=status)
        _uris(previous)
    return str(version)
