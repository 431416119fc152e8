"""The research probes stay runnable: each answers --help (they import only the product's public API)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

RESEARCH = Path(__file__).resolve().parents[2] / "research"


@pytest.mark.parametrize("probe", sorted(p.name for p in RESEARCH.glob("*.py")))
def test_probe_answers_help(probe, tmp_path):
    proc = subprocess.run([sys.executable, str(RESEARCH / probe), "--help"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("usage:"), proc.stderr


def test_every_probe_is_in_the_readme():
    readme = (RESEARCH / "README.md").read_text()
    assert all(f"`{p.name}`" in readme for p in RESEARCH.glob("*.py"))
