"""Exactness of make_prunable + surgery on every supported model family: the README's table.

    python -m benchmarks.exactness      # -> results/exactness.csv and .md (about a minute)

For each family a small instance (random weights, every parameter moved off its init so that
zero-initialised biases and bias tables cannot hide an error) is converted, a random half of
every head's channels is masked, and the model is pruned. Columns:

- ``converted_vs_original``: max |Δ| of the logits, converted (no mask) vs the timm model;
- ``pruned_vs_masked``: max |Δ|, the dense pruned model vs the masked one;
- ``mac_model_vs_torch``: |MAC model − torch's count of the pruned model| / torch's count;
- ``qk_whole``: attention layers that keep q/k at full width (qk-norm, cosine, rotary);
- ``onnx_vs_torch``: max |Δ| of onnxruntime on ``export_onnx`` of the pruned model.
The tests (tests/test_convert.py, tests/test_timm_families.py, tests/test_deploy.py) hold
the same contract with thresholds (1e-5, 1e-4, 1 %, 1e-4); this table records the measured
values.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import timm
import torch
from timm.layers import SwiGLUPacked

import prune_core as pc
from benchmarks._markdown import table, write_report
from benchmarks.digits_setup import machine
from prune_core.attention import attention_modules
from prune_core.convert import qk_kept_whole, supported_modules

RESULTS = Path(__file__).resolve().parent / "results"
VIT = {"img_size": 32, "patch_size": 8, "depth": 2, "num_classes": 10}
SWIN = {"img_size": 64, "window_size": 4, "embed_dim": 32, "depths": (2, 2), "num_heads": (2, 4)}
FAMILIES = (  # (family as a user knows it, timm model, kwargs)
    ("FLatten ViT (linear + softmax)", "flatten_vit_micro", {"img_size": 16}),
    (
        "FLatten-Swin (linear + window)",
        "flatten_swin_tiny",
        {"img_size": 64, "window_size": 4, "depths": (1, 1, 1, 1), "num_classes": 10},
    ),
    ("ViT / DeiT", "deit_tiny_patch16_224", VIT),
    ("DeiT III (layer scale)", "deit3_small_patch16_224", VIT),
    (
        "DINOv2 (register tokens)",
        "vit_small_patch14_reg4_dinov2",
        {**VIT, "patch_size": 14, "img_size": 28},
    ),
    ("ViT, qk-norm", "vit_small_patch16_224", {**VIT, "qk_norm": True}),
    ("ViT, SwiGLU MLP", "vit_small_patch16_224", {**VIT, "mlp_layer": SwiGLUPacked}),
    ("Swin", "swin_tiny_patch4_window7_224", {**SWIN, "embed_dim": 32}),
    ("Swin V2 (cosine, continuous bias)", "swinv2_tiny_window8_256", SWIN),
    (
        "BEiT (relative position bias)",
        "beit_base_patch16_224",
        {**VIT, "embed_dim": 96, "num_heads": 4},
    ),
    ("BEiT v2", "beitv2_base_patch16_224", {**VIT, "embed_dim": 96, "num_heads": 4}),
    (
        "EVA-02 (rotary, SwiGLU)",
        "eva02_tiny_patch14_224",
        {"img_size": 28, "depth": 2, "num_classes": 10},
    ),
)


def measure(family: str, name: str, kwargs: dict) -> dict:
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    size = pc.default_input_size(model)
    x = torch.randn(4, *size)
    with torch.no_grad():
        original = model(x)
    kinds = sorted(set(supported_modules(model).values()))
    model = pc.make_prunable(model, verbose=False)
    with torch.no_grad():
        converted = model(x)
    pc.apply_plan(model, pc.random_plan(model, 0.5))  # half of every head, random
    macs = pc.MacModel(model, size)
    predicted = float(macs.total(macs.current_widths()))
    with torch.no_grad():
        masked = model(x)
        pc.prune(model)
        pruned = model(x)
    counted = pc.count_macs(model, size)
    with tempfile.TemporaryDirectory() as tmp:
        path = pc.export_onnx(model, Path(tmp) / "m.onnx")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (onnx_out,) = session.run(None, {"images": x.numpy()})
    return {
        "family": family,
        "timm_model": name,
        "converted": ", ".join(kinds) or "(already prunable)",
        "attention_layers": len(attention_modules(model)),
        "qk_whole": len(qk_kept_whole(model)),
        "converted_vs_original": float((converted - original).abs().max()),
        "pruned_vs_masked": float((pruned - masked).abs().max()),
        "mac_model_vs_torch": abs(predicted - counted) / counted,
        "onnx_vs_torch": float(np.abs(onnx_out - pruned.numpy()).max()),
        "macs_pruned": counted,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=RESULTS / "exactness.csv")
    args = p.parse_args(argv)
    rows = []
    for family, name, kwargs in FAMILIES:
        rows.append(measure(family, name, kwargs))
        print(f"{family}: {rows[-1]}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(args.out, index=False)
    headers = (
        "family",
        "timm model",
        "converted",
        "attention layers (q/k whole)",
        "converted vs original",
        "pruned vs masked",
        "MAC model vs torch",
        "ONNX vs torch",
    )
    cells = (
        [
            r["family"],
            f"`{r['timm_model']}`",
            r["converted"],
            f"{r['attention_layers']} ({r['qk_whole']})",
            f"{r['converted_vs_original']:.1e}",
            f"{r['pruned_vs_masked']:.1e}",
            f"{100 * r['mac_model_vs_torch']:.2f} %",
            f"{r['onnx_vs_torch']:.1e}",
        ]
        for r in rows
    )
    write_report(args.out, [machine(), "", *table(headers, "lllrrrrr", cells)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
