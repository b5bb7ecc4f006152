"""``python -m orchestrator.pick <sweep dir | parent run id>``: one model off the Pareto front.

Reads the sweep's ``pareto.parquet`` (the front, timed side by side at the sweep's end:
``latency_ms``, ``speedup``), keeps the trials within the budget (``--max-macs-ratio``,
``--max-latency-ms``, ``--min-top1``), prints them as a table and picks one by ``--order``:
``accurate`` (the default: the highest top-1, fewer MACs on a tie), ``fastest`` (the lowest
measured latency) or ``cheapest`` (the fewest MACs). With no trial within the budget it exits 1
with one line naming the closest trial and by how much it misses.

``--export DIR`` writes the picked model there (``model.onnx``, ``plan.json`` + ``weights.pt``,
a model card ``README.md``: :mod:`orchestrator.pick_export`); ``--register NAME`` logs it to
MLflow under the trial's run and registers a version with an alias
(:mod:`orchestrator.pick_register`). Both work for timm and ``model.source: hf`` sweeps (a
transformers model is rebuilt from the config its sweep's parent run keeps:
:mod:`orchestrator.pick_hf`).

The source is found as ``orchestrator.report`` finds it (a folder with ``sweep.json``, or a
parent run id with ``--tracking-uri`` / ``$MLFLOW_TRACKING_URI`` / ``./results/mlflow.db``).
What is read from MLflow is untrusted: the front's columns and types are checked, run ids must
look like run ids, and no value read back ever becomes a path.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from orchestrator._redact import redact
from orchestrator.mlflow_names import teacher_metrics
from orchestrator.report import Refused, _state, tracking_uri

RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # MLflow's run ids are 32 hex digits
REQUIRED = {  # column -> (accepted Arrow type test, kind)
    "trial_id": pa.types.is_string,
    "run_id": pa.types.is_string,
    "top1": pa.types.is_floating,
    "macs": pa.types.is_integer,
    "macs_ratio": pa.types.is_floating,
}
OPTIONAL = {
    "params": pa.types.is_integer,
    "latency_ms": pa.types.is_floating,
    "speedup": pa.types.is_floating,
    "fraction_of_limit": pa.types.is_floating,
}
ORDERS = {  # --order -> (sort key of a row, what it means)
    "accurate": (lambda r: (-r["top1"], r["macs"]), "the most accurate"),
    "fastest": (lambda r: (_or_inf(r.get("latency_ms")), -r["top1"]), "the fastest measured"),
    "cheapest": (lambda r: (r["macs"], -r["top1"]), "the cheapest in MACs"),
}


class NoMatch(Exception):
    """No front trial meets the budget: one line naming the closest one, exit 1."""


@dataclass
class Budget:
    max_macs_ratio: float | None = None
    max_latency_ms: float | None = None
    min_top1: float | None = None

    def misses(self, r: dict) -> list[tuple[str, float]]:
        """(what is missed, by how much relative to the bound) for each bound ``r`` breaks."""
        out = []
        if self.max_macs_ratio is not None and r["macs_ratio"] > self.max_macs_ratio:
            over = r["macs_ratio"] - self.max_macs_ratio
            out.append(
                (f"MAC ratio {r['macs_ratio']:.3f}, {over:.3f} over", over / self.max_macs_ratio)
            )
        if self.max_latency_ms is not None:
            ms = _or_inf(r.get("latency_ms"))
            over = ms - self.max_latency_ms
            if over > 0:
                text = "not timed" if math.isinf(ms) else f"{ms:.2f} ms, {over:.2f} ms over"
                out.append((text, over / self.max_latency_ms))
        if self.min_top1 is not None and r["top1"] < self.min_top1:
            under = self.min_top1 - r["top1"]
            out.append(
                (f"top-1 {r['top1']:.2f} %, {under:.2f} points under", under / self.min_top1)
            )
        return out

    def describe(self) -> str:
        parts = []
        if self.max_macs_ratio is not None:
            parts.append(f"MAC ratio <= {self.max_macs_ratio:g}")
        if self.max_latency_ms is not None:
            parts.append(f"latency <= {self.max_latency_ms:g} ms")
        if self.min_top1 is not None:
            parts.append(f"top-1 >= {self.min_top1:g} %")
        return ", ".join(parts) or "no budget"


def _or_inf(value) -> float:
    return math.inf if value is None or not math.isfinite(value) else float(value)


def validate(table: pa.Table) -> list[dict]:
    """The front's rows, checked: the columns pareto.py writes with their types, finite
    numbers in range, run ids that look like run ids. Refused (one line) otherwise."""
    for name, ok in {**REQUIRED, **OPTIONAL}.items():
        if name not in table.column_names:
            if name in REQUIRED:
                raise Refused(f"pareto.parquet has no {name!r} column")
            continue
        if not ok(table.schema.field(name).type):
            raise Refused(
                f"pareto.parquet: column {name!r} has type {table.schema.field(name).type}"
            )
    rows = table.to_pylist()
    for r in rows:
        if any(r[c] is None for c in REQUIRED):
            raise Refused(f"pareto.parquet: a row lacks one of {sorted(REQUIRED)}")
        if not RUN_ID.match(r["run_id"]):
            raise Refused(f"pareto.parquet: {r['run_id'][:40]!r} is not an MLflow run id")
        if not (0.0 <= r["top1"] <= 100.0 and 0.0 < r["macs_ratio"] <= 2.0 and r["macs"] > 0):
            raise Refused(f"pareto.parquet: trial {r['trial_id'][:40]!r} has values out of range")
        for c in OPTIONAL:
            if isinstance(r.get(c), float) and not math.isfinite(r[c]):
                r[c] = None  # a front model the sweep could not time
    return rows


@dataclass
class Front:
    rows: list[dict]
    uri: str | None  # the MLflow store (None: a folder whose sweep.json names none)
    parent: str | None  # the parent run id
    teacher: dict  # teacher_* numbers (top1, macs, ...), maybe empty


def load_front(source: str, explicit_uri: str | None) -> Front:
    """The front of a sweep folder or of a parent run (the module doc: how it is found)."""
    path = Path(source)
    if path.is_dir():
        state = _state(path)
        parent = state.get("parent_run_id")
        file = path / "pareto.parquet"
        if not file.is_file():
            raise Refused(f"{source}: no pareto.parquet (has the sweep finished a trial?)")
        rows = validate(pq.read_table(file))
        uri = tracking_uri(explicit_uri, path) if (parent or explicit_uri) else None
        if parent is not None and not RUN_ID.match(str(parent)):
            raise Refused(f"{source}/sweep.json: parent_run_id is not an MLflow run id")
        teacher = _teacher(uri, parent) if uri and parent else {}
        return Front(rows, uri, parent, teacher)
    if not RUN_ID.match(source):
        raise Refused(f"{source}: neither a sweep folder nor an MLflow run id")
    uri = tracking_uri(explicit_uri)
    from orchestrator.tracking import client

    c = client(uri)
    names = {f.path for f in c.list_artifacts(source)}
    if "pareto.parquet" not in names:
        raise Refused(f"run {source} has no pareto.parquet artifact (not a sweep's parent run?)")
    with tempfile.TemporaryDirectory(prefix="pick-") as tmp:
        rows = validate(pq.read_table(c.download_artifacts(source, "pareto.parquet", tmp)))
    return Front(rows, uri, source, _teacher(uri, source))


def _teacher(uri: str, parent: str) -> dict:
    from orchestrator.tracking import client

    return teacher_metrics(client(uri).get_run(parent).data.metrics)  # old names too


def choose(rows: list[dict], budget: Budget, order: str) -> tuple[dict, list[dict]]:
    """(the chosen row, every row within the budget, in ``order``); NoMatch when none is."""
    timed = any(r.get("latency_ms") is not None for r in rows)
    for asked, flag in ((order == "fastest", "--order fastest"),
                        (budget.max_latency_ms is not None, "--max-latency-ms")):  # fmt: skip
        if asked and not timed:
            raise NoMatch(f"{flag}: the front was not timed (no latency_ms)")
    fits = sorted((r for r in rows if not budget.misses(r)), key=ORDERS[order][0])
    if fits:
        return fits[0], fits
    if not rows:
        raise NoMatch("the front is empty")
    closest = min(rows, key=lambda r: sum(m for _, m in budget.misses(r)))
    why = "; ".join(text for text, _ in budget.misses(closest))
    raise NoMatch(
        f"no front trial within {budget.describe()}: the closest is trial "
        f"{closest['trial_id'][:40]} ({why})"
    )


def print_table(fits: list[dict], chosen: dict, console: Console, title: str) -> None:
    """The qualifying trials, compact; the chosen one in bold."""
    table = Table(title=title, title_justify="left")
    for col in ("trial", "top-1 %", "MAC ratio", "MACs", "ms/batch", "speed-up"):
        table.add_column(col, justify="left" if col == "trial" else "right")
    for r in fits:
        ms, up = r.get("latency_ms"), r.get("speedup")
        table.add_row(
            ("→ " if r is chosen else "  ") + r["trial_id"][:40],
            f"{r['top1']:.2f}",
            f"{r['macs_ratio']:.3f}",
            f"{r['macs']:,}",
            "" if ms is None else f"{ms:.2f}",
            "" if up is None else f"{up:.2f}×",
            style="bold" if r is chosen else None,
        )
    console.print(table, markup=False)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m orchestrator.pick", description=__doc__.split("\n")[0]
    )
    p.add_argument("source", help="a sweep folder (<storage.path>/<name>) or its parent run id")
    p.add_argument("--max-macs-ratio", type=float, default=None, metavar="R")
    p.add_argument(
        "--max-latency-ms",
        type=float,
        default=None,
        metavar="T",
        help="the front's measured latency_ms (ms per batch, timed at the sweep's end)",
    )
    p.add_argument("--min-top1", type=float, default=None, metavar="A", help="top-1 in %%")
    p.add_argument(
        "--order",
        choices=sorted(ORDERS),
        default="accurate",
        help="which qualifying trial to pick (default: accurate)",
    )
    p.add_argument(
        "--export",
        type=Path,
        default=None,
        metavar="DIR",
        help="write model.onnx, plan.json + weights.pt and README.md (model card)",
    )
    p.add_argument("--opset", type=int, default=None, help="ONNX opset for --export")
    p.add_argument(
        "--register",
        default=None,
        metavar="NAME",
        help="log the model to MLflow under the trial's run and register a version",
    )
    p.add_argument(
        "--alias",
        default=None,
        help="the registered version's alias (default: pareto-<R or its ratio>)",
    )
    p.add_argument("--tracking-uri", default=None, help="the MLflow store (as for report)")
    args = p.parse_args(argv)
    for name in ("max_macs_ratio", "max_latency_ms", "min_top1"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            p.error(f"--{name.replace('_', '-')} must be a positive number")
    return args


def main(argv: list[str] | None = None, console: Console | None = None) -> int:
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line per step
    args = parse_args(argv)
    console = console or Console(width=None if sys.stdout.isatty() else 120)
    budget = Budget(args.max_macs_ratio, args.max_latency_ms, args.min_top1)
    try:
        front = load_front(args.source, args.tracking_uri)
        chosen, fits = choose(front.rows, budget, args.order)
    except (Refused, NoMatch) as err:
        print(redact(f"orchestrator.pick: {err}").splitlines()[0], file=sys.stderr)
        return 1
    except Exception as err:  # a CLI: one line, whatever went wrong reading the source
        print(redact(f"orchestrator.pick: {args.source}: {err}").splitlines()[0], file=sys.stderr)
        return 1
    title = f"{len(fits)} of {len(front.rows)} Pareto trials within {budget.describe()}"
    print_table(fits, chosen, console, title)
    reason = f"{ORDERS[args.order][1]} of them (--order {args.order})"
    console.print(
        f"picked trial {chosen['trial_id'][:40]}: {reason}; top-1 {chosen['top1']:.2f} %, "
        f"MAC ratio {chosen['macs_ratio']:.3f}"
        + (f", {chosen['speedup']:.2f}× measured" if chosen.get("speedup") else ""),
        markup=False,
        highlight=False,
    )
    if args.export is None and args.register is None:
        return 0
    from orchestrator import pick_export

    try:
        if front.uri is None or front.parent is None:
            raise Refused(f"{args.source}: no MLflow run to fetch the trial's weights from")
        picked = pick_export.fetch(front.uri, front.parent, chosen)
        if args.export is not None:
            command = "python -m orchestrator.pick " + " ".join(
                argv if argv is not None else sys.argv[1:]
            )
            out = pick_export.export(
                picked, front.teacher, args.export, opset=args.opset, command=command
            )
            files = ", ".join(sorted(f.name for f in out.iterdir()))
            console.print(f"exported: {out} ({files})", markup=False)
        if args.register is not None:
            from orchestrator import pick_register

            alias = args.alias or pick_register.default_alias(args.max_macs_ratio, chosen)
            version = pick_register.register(
                front.uri, picked, args.register, alias, files=args.export
            )
            console.print(
                f"registered: models:/{args.register}/{version} (alias @{alias}) on run "
                f"{chosen['run_id']}",
                markup=False,
            )
    except Exception as err:  # one line: a refused opset, an existing folder, MLflow, ...
        print(redact(f"orchestrator.pick: {err}").splitlines()[0], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
