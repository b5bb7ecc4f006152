"""A 2-trial digits sweep with each sampler the config offers (``make test-latest``).

Run with the interpreter of the venv under test. Exits 1 naming every sampler whose sweep did
not finish with two trials in ``trials.parquet``; prints the versions it ran with first, so a
failure log says which releases broke it.
"""

from __future__ import annotations

import sys
import tempfile
import typing
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import run_sweep_cli, write_config  # noqa: E402 - the suite's tiny experiment, one home

from orchestrator import versions
from orchestrator.schema import SweepConfig

SAMPLERS = typing.get_args(SweepConfig.model_fields["sampler"].annotation)


def config(folder: Path, sampler: str) -> Path:
    """The test suite's tiny digits experiment (tests/helpers.py TINY): 2 trials, each with
    a MAC target ``sampler`` chooses."""
    sweep = {"num_samples": 2, "sampler": sampler, "population_size": 2, "asha": None}
    search = {"target": {"low": 0.4, "high": 0.8}}
    return write_config(
        folder, f"latest-{sampler}", sweep=sweep, search=search, finetune={"epochs": 1}
    )


def main() -> int:
    print("versions:", versions.summary()[0], flush=True)
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        for sampler in SAMPLERS:
            path = config(Path(tmp), sampler)
            proc = run_sweep_cli(path, timeout=900)
            table = Path(tmp) / "results" / f"latest-{sampler}" / "trials.parquet"
            rows = pq.read_table(table).num_rows if table.is_file() else 0
            ok = proc.returncode == 0 and rows == 2
            print(f"{sampler}: exit {proc.returncode}, {rows} trial(s)", flush=True)
            if not ok:
                print(proc.stdout[-3000:] + proc.stderr[-3000:])
                failed.append(sampler)
    if failed:
        print(f"sweeps failed with the newest releases: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
