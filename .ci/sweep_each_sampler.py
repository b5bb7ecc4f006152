"""A 2-trial digits sweep with each sampler the config offers (``make test-latest``).

Run with the interpreter of the venv under test. Exits 1 naming every sampler whose sweep did
not finish with two trials in ``trials.parquet``; prints the versions it ran with first, so a
failure log says which releases broke it.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import typing
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from orchestrator import versions
from orchestrator.schema import SweepConfig

SAMPLERS = typing.get_args(SweepConfig.model_fields["sampler"].annotation)


def config(folder: Path, sampler: str) -> Path:
    raw = {
        "name": f"latest-{sampler}",
        "seed": 0,
        "model": {
            "name": "flatten_vit_micro",
            "num_classes": 10,
            "img_size": 8,
            "kwargs": {"embed_dim": 32, "depth": 2, "num_heads": 4},
        },
        "data": {"kind": "digits", "calib_images": 64},
        "teacher": {"epochs": 1, "lr": 0.003},
        "search": {"target": {"low": 0.4, "high": 0.8}, "steps": 4, "sim_every": 2},
        "finetune": {"epochs": 1},
        "sweep": {"num_samples": 2, "sampler": sampler, "population_size": 2, "asha": None},
        "resources": {"num_cpus": 2, "cpus_per_trial": 1, "teacher_cpus": 1},
        "storage": {"path": str(folder / "results")},
    }
    path = folder / f"{sampler}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def main() -> int:
    print("versions:", versions.summary()[0], flush=True)
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        for sampler in SAMPLERS:
            path = config(Path(tmp), sampler)
            proc = subprocess.run(
                [sys.executable, "-m", "orchestrator.sweep", str(path)],
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
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
