"""The README's prune_core example runs as written and does what its comments say."""

from __future__ import annotations

import re

import timm
from helpers import ROOT

import prune_core as pc


def readme_block(heading: str) -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split(f"## {heading}\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_timm_example_runs_as_written(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)  # it writes out/
    namespace: dict = {}
    exec(compile(readme_block("prune_core on a timm model"), "README.md", "exec"), namespace)
    model, teacher, size = namespace["model"], namespace["teacher"], namespace["size"]
    ratio = pc.count_macs(model, size) / pc.count_macs(teacher, size)
    assert 0.48 <= ratio <= 0.5
    fresh = timm.create_model("deit_tiny_patch16_224", **namespace["arch"])
    out = tmp_path / "out"
    reloaded = pc.load_pruned(
        pc.make_prunable(fresh, verbose=False), out / "plan.json", out / "weights.pt"
    )
    x = namespace["calib_images"][:4]
    assert (reloaded.eval()(x) - model.eval()(x)).abs().max() < 1e-5
    printed = capsys.readouterr().out.splitlines()
    assert float(printed[-2]) == ratio and "top1" in printed[-1]
