"""ONNX deployment: onnxruntime latency of full vs pruned models against the 1/MAC-ratio limit.

    python -m benchmarks.onnx_latency      # -> results/onnx_latency.csv and .md

Each model is exported with ``prune_core.export_onnx`` at full width and pruned to 0.5 of its
MACs with uniform L1 widths (``magnitude_plan`` at ``uniform_keep``: shapes decide the latency,
so random weights are enough). Latency: onnxruntime CPU session (all cores, default graph
optimisations), 2 warm-up runs, then the median of interleaved rounds (full, pruned, full, ...)
so load from other processes hits both alike. ``fraction_of_limit`` = speed-up / (1 / MAC ratio).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import timm
import torch

import prune_core as pc
from benchmarks._markdown import table, write_report
from benchmarks.digits_setup import machine

RESULTS = Path(__file__).resolve().parent / "results"
# (model, timm kwargs, batches): FLatten-Swin-T is ~4.5 GMACs per image, so its large batch is
# 16 on a 2-core machine; DeiT-Tiny takes the 1 and 64.
MODELS = (
    ("deit_tiny_patch16_224", {}, (1, 64)),
    ("flatten_swin_tiny", {}, (1, 16)),
)
TARGET = 0.5


def session(model: torch.nn.Module, path: Path) -> ort.InferenceSession:
    pc.export_onnx(model, path)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def latency_ms(sessions: list[ort.InferenceSession], x: np.ndarray, rounds: int) -> list[float]:
    """Median wall time of one ``run`` per session (ms), rounds interleaved across sessions."""
    for s in sessions:
        for _ in range(2):
            s.run(None, {"images": x})
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(rounds):
        for i, s in enumerate(sessions):
            start = time.perf_counter()
            s.run(None, {"images": x})
            times[i].append(1e3 * (time.perf_counter() - start))
    return [statistics.median(t) for t in times]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=RESULTS / "onnx_latency.csv")
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="onnx-") as tmp:
        for name, kwargs, batches in MODELS:
            torch.manual_seed(0)
            full = pc.make_prunable(timm.create_model(name, **kwargs), verbose=False).eval()
            size = pc.default_input_size(full)
            pruned = pc.make_prunable(timm.create_model(name, **kwargs), verbose=False).eval()
            pc.apply_plan(pruned, pc.magnitude_plan(pruned, pc.uniform_keep(pruned, size, TARGET)))
            pc.prune(pruned)
            ratio = pc.count_macs(pruned, size) / pc.count_macs(full, size)
            sessions = [
                session(full, Path(tmp) / "full.onnx"),
                session(pruned, Path(tmp) / "p.onnx"),
            ]
            for batch in batches:
                x = np.random.default_rng(0).standard_normal((batch, *size), dtype=np.float32)
                t_full, t_pruned = latency_ms(sessions, x, args.rounds)
                speedup = t_full / t_pruned
                rows.append(
                    {
                        "model": name,
                        "batch": batch,
                        "macs_ratio": round(ratio, 4),
                        "full_ms": round(t_full, 2),
                        "pruned_ms": round(t_pruned, 2),
                        "speedup": round(speedup, 3),
                        "fraction_of_limit": round(speedup * ratio, 3),
                    }
                )
                print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    headers = (
        "model",
        "batch",
        "MAC ratio",
        "full ms",
        "pruned ms",
        "speed-up",
        "limit",
        "% of limit",
    )
    cells = (
        [
            r["model"],
            r["batch"],
            f"{r['macs_ratio']:.3f}",
            f"{r['full_ms']:.2f}",
            f"{r['pruned_ms']:.2f}",
            f"{r['speedup']:.2f}×",
            f"{1 / r['macs_ratio']:.2f}×",
            f"{100 * r['fraction_of_limit']:.0f} %",
        ]
        for r in rows
    )
    write_report(
        args.out,
        [
            f"onnxruntime {ort.__version__}, CPU; {machine()}",
            "",
            *table(headers, "lrrrrrrr", cells),
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
