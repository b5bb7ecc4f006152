"""Deployment: a pruned model out of the Python process, as ONNX.

``export_onnx`` uses torch's own exporter (``torch.onnx.export(..., dynamo=True)``: the graph
from ``torch.export``, translated by onnxscript) with a dynamic batch axis, so one file serves
batch 1 and batch 64. Pruned models are plain dense modules after ``prune`` (reweights folded,
gates off), so nothing of the method is left in the graph. Needs ``pip install onnx onnxscript``
(the ``deploy`` extra); onnxruntime only to run the file.

The exporter silently writes opset 18 when asked for an older one (its version converter
fails on these graphs and falls back) or for one newer than the installed onnx knows; we check
the request first and the written file after, so the opset in the file is the one asked for,
or nothing is written.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from prune_core.macs import default_input_size

MIN_OPSET = 18  # torch.onnx's dynamo exporter: older opsets come out as 18
# weights this large go to an external ``<name>.data`` file: one protobuf holds at most 2 GiB
EXTERNAL_DATA_BYTES = 1 << 30


def onnx_opset(path: str | Path) -> int:
    """The default-domain opset an ONNX file declares (its weights are not loaded)."""
    return _opset_of(Path(path))


def _opset_of(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _parameter_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def _output_names(output: object) -> list[str]:
    """``logits`` for a tensor; the tensor fields' names of a mapping (a transformers
    ``ModelOutput`` keeps only the fields that are set, in order, as torch.export flattens it)."""
    if isinstance(output, Mapping):
        return [k for k, v in output.items() if isinstance(v, torch.Tensor)]
    return ["logits"]


class _TensorFields(nn.Module):
    """``model`` returning only its output object's tensor fields, as a tuple in field order:
    torch.export cannot return the plain ints some outputs also carry (MaskFormer-Swin's
    ``hidden_states_spatial_dimensions``), and the ONNX graph names its outputs by field."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = self.model(images)
        return tuple(output[name] for name in self.names)


def _check_opset(opset: int | None) -> None:
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if opset is not None and not MIN_OPSET <= opset <= newest:
        raise ValueError(
            f"export_onnx: opset {opset} is not supported: from {MIN_OPSET} (torch.onnx's "
            f"exporter) to {newest} (the installed onnx)"
        )


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_size: tuple[int, int, int] | None = None,
    *,
    opset: int | None = None,
) -> Path:
    """Write ``model`` (eval mode, CPU, float32) to ``path`` as ONNX; returns the path.

    Args:
        input_size: (C, H, W) of one image; default :func:`prune_core.default_input_size`.
        opset: ONNX opset version (None: the exporter's default), 18 or newer.
    Input ``images`` (batch, C, H, W) with a dynamic batch; output ``logits`` (batch, classes),
    or, for a model that returns a Hugging Face output object, one output per tensor field,
    named as the field (``logits``; ``last_hidden_state``, ``pooler_output`` of a base model).
    The file appears whole or not at all (exported beside it, then renamed). One file, weights
    inside, up to 1 GiB of parameters; above that (protobuf's 2 GiB limit) the weights go to
    ``<name>.data`` beside it, which the graph names.
    Raises:
        ImportError: onnx or onnxscript is not installed (``pip install flatten-prune[deploy]``).
        ValueError: an opset outside [18, the installed onnx's newest], one the exporter did
            not honour, or an ``input_size`` the model cannot take (one line, before export).
    """
    for package in ("onnx", "onnxscript"):
        try:
            __import__(package)
        except ImportError:
            raise ImportError(
                f"export_onnx needs {package}: pip install onnx onnxscript "
                "(or the project's [deploy] extra)"
            ) from None
    _check_opset(opset)
    size = default_input_size(model) if input_size is None else tuple(input_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # exported in a hidden folder beside it, under its own name (the weights may go to an
    # external ``<name>.data`` file that the graph names), then moved in: data first
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    partial = staging / path.name
    was_training = model.training
    model.eval()
    try:
        example = torch.zeros(2, *size, device=next(model.parameters()).device)
        try:
            with torch.no_grad():
                names = _output_names(model(example))
        except (RuntimeError, ValueError, AssertionError) as err:  # before torch.export's banner
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(
                f"export_onnx: the model does not take input_size {size}: {reason}"
            ) from None
        torch.onnx.export(
            _TensorFields(model, names) if names != ["logits"] else model,
            (example,),
            str(partial),
            dynamo=True,
            input_names=["images"],
            output_names=names,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            opset_version=opset,
            external_data=_parameter_bytes(model) > EXTERNAL_DATA_BYTES,
            verbose=False,
        )
        written = _opset_of(partial)
        if opset is not None and written != opset:
            raise ValueError(
                f"export_onnx: asked for opset {opset}, the exporter wrote {written}; "
                f"supported from {MIN_OPSET}"
            )
        for extra in sorted(staging.iterdir()):
            if extra != partial:
                extra.replace(path.parent / extra.name)
        partial.replace(path)
    finally:
        model.train(was_training)
        shutil.rmtree(staging, ignore_errors=True)
    return path
