"""Item 5: FLatten-Swin-T speed-up on a CUDA GPU with bf16 (images/s), one prepared script.

    python -m benchmarks.gpu_speedup --out benchmarks/results/gpu_speedup.md
    python -m benchmarks.gpu_speedup --device cpu --img-size 64 --quick --out /tmp/gpu.md  # check

Self-contained: needs only torch, timm and prune_core (no data, no network, no other benchmark
module). Weights are random — throughput depends only on shapes. For each MAC target three
pruned shapes are built on the CPU (where the MAC model traces the model once):

- ``uniform``  — ``magnitude_plan`` at the one keep ratio that meets the target;
- ``learned``  — ``finalize`` from ``initialize(mode="magnitude")`` scores: per-layer widths
                 chosen greedily against the MAC model, the shape the method produces;
- ``learned/8`` — the same with ``round_to=8`` (per-head widths multiples of 8, tensor cores).

then moved to the device and timed with ``torch.utils.benchmark`` (median of blocked runs after
warm-up; CUDA is synchronised by the timer), full and pruned models alternating over
``--rounds`` rounds, median over rounds. The markdown table is rewritten after every batch size,
so a run cut short still leaves what it measured. Exit status 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import timm
import torch
from torch import nn
from torch.utils import benchmark

import prune_core as pc


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="markdown file to write")
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default="flatten_swin_tiny")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--targets", type=float, nargs="+", default=[0.7, 0.5, 0.3])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64, 256])
    p.add_argument(
        "--precision",
        choices=("autocast-bf16", "bf16", "fp32"),
        default="autocast-bf16",
        help="autocast-bf16: fp32 weights under torch.autocast (what prune_core's "
        "engine does); bf16: weights cast to bfloat16",
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--min-run-time", type=float, default=1.0)
    p.add_argument("--compile", action="store_true", help="torch.compile every model")
    p.add_argument(
        "--quick",
        action="store_true",
        help="one target (0.5), batches 1 and 4, short runs: a smoke test",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.targets, args.batches, args.rounds, args.min_run_time = [0.5], [1, 4], 1, 0.2
    bad = [t for t in args.targets if not 0.0 < t < 1.0]
    if bad:
        p.error(f"--targets must be in (0, 1), got {bad[0]}")
    if min(args.batches) < 1 or args.rounds < 1 or args.min_run_time <= 0:
        p.error("--batches and --rounds must be >= 1, --min-run-time > 0")
    if args.img_size < 32 or args.img_size % 32:
        p.error(f"--img-size must be a multiple of 32 (Swin's four stages), got {args.img_size}")
    try:
        args.device = torch.device(args.device)
    except RuntimeError as err:
        p.error(f"--device: {err}")
    if args.device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no CUDA GPU (use --device cpu to check the script)")
    if args.precision != "fp32" and args.device.type == "cpu" and not args.quick:
        print("note: bf16 on CPU is slow and not what this script is for", file=sys.stderr)
    return args


def build(args: argparse.Namespace) -> list[dict]:
    size = (3, args.img_size, args.img_size)
    torch.manual_seed(0)
    full = timm.create_model(args.model, img_size=args.img_size).eval()
    full_macs = pc.count_macs(full, size)
    models = [{"plan": "full", "target": 1.0, "net": full, "macs": full_macs}]
    calib = torch.randn(4, *size)
    scored = copy.deepcopy(full)
    pc.initialize(scored, calib, mode="magnitude")
    for target in args.targets:
        uniform = copy.deepcopy(full)
        keep = pc.uniform_keep(uniform, size, target)
        pc.apply_plan(uniform, pc.magnitude_plan(uniform, keep))
        shapes = [("uniform", uniform)]
        for round_to in (1, 8):
            learned = copy.deepcopy(scored)
            pc.finalize(learned, size, target, round_to=round_to)
            shapes.append(("learned" if round_to == 1 else "learned/8", learned))
        for name, net in shapes:
            predicted = pc.MacModel(net, size).total()
            pc.prune(net)
            models.append({"plan": name, "target": target, "net": net, "macs": predicted})
        print(
            f"built target {target}: "
            + ", ".join(f"{m['plan']} {m['macs'] / full_macs:.3f}" for m in models[-3:]),
            flush=True,
        )
    return models


def prepare(net: nn.Module, args: argparse.Namespace) -> nn.Module:
    net = net.to(args.device).eval()
    if args.precision == "bf16":
        net = net.to(torch.bfloat16)
    return torch.compile(net) if args.compile else net


def images_per_second(net: nn.Module, x: torch.Tensor, args: argparse.Namespace) -> float:
    timer = benchmark.Timer("net(x)", globals={"net": net, "x": x})
    return x.shape[0] / timer.blocked_autorange(min_run_time=args.min_run_time).median


def write(args: argparse.Namespace, models: list[dict], results: dict, header: str) -> None:
    full_macs = models[0]["macs"]
    lines = [
        header,
        "",
        (
            "| batch | plan | target | MAC ratio | images/s | speed-up | limit 1/ratio | "
            "% of limit |"
        ),
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for batch, ips in results.items():
        for m, rate in zip(models, ips, strict=True):
            ratio = m["macs"] / full_macs
            speedup = rate / ips[0]
            lines.append(
                f"| {batch} | {m['plan']} | {m['target']:g} | {ratio:.3f} | "
                f"{rate:,.0f} | {speedup:.2f}× | {1 / ratio:.2f}× | "
                f"{100 * speedup * ratio:.0f} % |"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    dev = (
        torch.cuda.get_device_name(args.device)
        if args.device.type == "cuda"
        else platform.processor() or "CPU"
    )
    header = (
        f"{args.model} at {args.img_size}×{args.img_size} on {dev} ({args.device}), "
        f"{args.precision}{', torch.compile' if args.compile else ''}; torch "
        f"{torch.__version__}, timm {timm.__version__}, {dt.date.today().isoformat()}; "
        f"median of blocked runs ≥ {args.min_run_time} s, median over {args.rounds} "
        f"interleaved rounds; random weights (throughput depends only on shapes)."
    )
    models = build(args)
    for m in models:
        m["net"] = prepare(m["net"], args)
    autocast = (
        torch.autocast(args.device.type, dtype=torch.bfloat16)
        if args.precision == "autocast-bf16"
        else nullcontext()
    )
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    results: dict[int, list[float]] = {}
    with torch.inference_mode(), autocast:
        for batch in args.batches:
            x = torch.randn(batch, 3, args.img_size, args.img_size, device=args.device, dtype=dtype)
            try:
                for m in models:
                    for _ in range(3):
                        m["net"](x)
                rounds = [
                    [images_per_second(m["net"], x, args) for m in models]
                    for _ in range(args.rounds)
                ]
            except torch.cuda.OutOfMemoryError:
                print(f"batch {batch}: out of memory, skipped", flush=True)
                torch.cuda.empty_cache()
                continue
            results[batch] = [statistics.median(r[i] for r in rounds) for i in range(len(models))]
            write(args, models, results, header)
            print(
                f"batch {batch}: full {results[batch][0]:,.0f} img/s; "
                + ", ".join(
                    f"{m['plan']}@{m['target']:g} {rate / results[batch][0]:.2f}×"
                    for m, rate in zip(models[1:], results[batch][1:], strict=True)
                ),
                flush=True,
            )
    print(f"wrote {args.out} in {time.perf_counter() - started:.0f} s")
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
