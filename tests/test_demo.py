"""The runnable pipeline: python -m prune_core.demo, on a tiny budget."""

from __future__ import annotations

from prune_core.demo import main


def test_demo_runs_and_reports_the_target(capsys) -> None:
    code = main(
        [
            "--target",
            "0.6",
            "--img-size",
            "8",
            "--teacher-epochs",
            "1",
            "--search-steps",
            "30",
            "--finetune-epochs",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "top-1" in out and "images/s" in out
    ratio_row = next(line for line in out.splitlines() if "MAC ratio" in line)
    teacher_ratio, pruned_ratio = (float(c.strip()) for c in ratio_row.split("│")[2:4])
    assert teacher_ratio == 1.0
    assert 0.58 <= pruned_ratio <= 0.6


def test_demo_rejects_a_bad_target(capsys) -> None:
    assert main(["--target", "1.5"]) == 2
    assert "--target" in capsys.readouterr().out
