"""--dry-run names the versions in use and warns when one is outside what the lock tested."""

from __future__ import annotations

from importlib import metadata

import yaml
from helpers import minimal

from orchestrator import versions
from orchestrator.sweep import main


def test_the_lock_pins_every_key_package_at_its_installed_version():
    """``make install`` installs the lock: this venv and the lock agree on the key packages
    (a lock regenerated without reinstalling, or a venv drifted from it, fails here)."""
    pins = versions.locked()
    assert len(pins) >= 30
    for name in versions.KEY_PACKAGES:
        assert (
            pins[versions._normalise(name)].split("+")[0] == metadata.version(name).split("+")[0]
        ), name


def test_a_release_series_other_than_the_locked_one_is_untested():
    found = {"optuna": "5.2.0", "torch": "2.14.3", "timm": "1.0.31", "ray": None, "Pillow": "12.0"}
    pins = {"optuna": "5.1.0", "torch": "2.14.1+cu128", "timm": "1.0.31", "pillow": "13.0.0"}
    assert versions.untested(found, pins) == [
        "optuna 5.2.0 (lock: 5.1.0)",
        "Pillow 12.0 (lock: 13.0.0)",
    ]


def test_dry_run_prints_the_versions_and_warns_in_one_line(tmp_path, monkeypatch, capsys):
    raw = minimal()
    raw["storage"] = {"path": str(tmp_path / "results")}
    config = tmp_path / "x.yaml"
    config.write_text(yaml.safe_dump(raw))

    assert main([str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for name in ("torch", "timm", "ray", "optuna", "mlflow", "pyarrow", "pillow", "transformers"):
        assert f"{name} {metadata.version(name)}" in " ".join(out.split()), name
    assert "untested" not in out

    lock = tmp_path / "old-lock.txt"
    lock.write_text("optuna==4.5.0\n    # via flatten-prune\npillow==11.3.0\ntorch==2.14.1\n")
    monkeypatch.setattr(versions, "LOCK", lock)
    assert main([str(config), "--dry-run"]) == 0
    warning = [line for line in capsys.readouterr().out.splitlines() if "untested" in line]
    assert len(warning) == 1
    assert f"optuna {metadata.version('optuna')} (lock: 4.5.0)" in warning[0]
    assert "pillow" in warning[0] and "torch" not in warning[0]


def test_transformers_is_shown_when_installed_and_left_out_when_not(monkeypatch):
    """An extra (model.source: hf): in the row and judged against the lock when installed; a
    timm-only install shows no "transformers missing". A key package that is missing still
    says so."""
    lock = versions.locked()
    assert lock["transformers"] == metadata.version("transformers")
    row, warning = versions.summary()
    assert f"transformers {metadata.version('transformers')}" in row and warning is None

    real = metadata.version

    def without(*names):
        def version(name):
            if name in names:
                raise metadata.PackageNotFoundError(name)
            return real(name)

        return version

    monkeypatch.setattr(versions.metadata, "version", without("transformers", "optuna"))
    row, _ = versions.summary()
    assert "transformers" not in row and "optuna missing" in row
