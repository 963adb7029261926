"""Fixtures shared by test modules: the smoke profile trained once per session."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def smoke_results(tmp_path_factory) -> Path:
    """`bench run` of the smoke profile's comparison (both variants, its seeds), shared: tests that only read
    it, or gate on it (which reuses every run), pay for the training once."""
    results = tmp_path_factory.mktemp("smoke") / "results"
    code = main(["run", "--config", str(REPO / "bench.toml"), "--profile", "smoke", "--results", str(results),
                 "--jobs", "2", "--quiet"])
    assert code == 0
    return results
