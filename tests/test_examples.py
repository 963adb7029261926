"""The examples in examples/ work as their README says: the plugin example end to end on the smoke profile."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from harness.cli import main
from harness.exits import EXIT_INCONCLUSIVE, EXIT_PASS
from harness.suite import PACKAGED_CONFIG
from worldmodel import registry

PLUGIN_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "my_plugin"


def test_the_plugin_example_registers_a_component_and_gates_it_on_smoke(tmp_path, monkeypatch, capsys):
    """examples/my_plugin/README.md's steps: the default suite plus variant.toml, the plugin importable, then
    `bench gate --profile smoke --candidate max_pool` trains both arms with the plugin's encoder and gives a verdict."""
    suite = tmp_path / "bench.toml"
    suite.write_text(PACKAGED_CONFIG.read_text() + "\n" + (PLUGIN_EXAMPLE / "variant.toml").read_text())
    monkeypatch.syspath_prepend(str(PLUGIN_EXAMPLE))  # PYTHONPATH=. in its folder; the workers inherit it
    # The plugin registers into this process too: give the slot a copy, restored afterwards, and forget the module.
    registry.components()
    monkeypatch.setitem(registry._REGISTRY, "lam_encoder", dict(registry._REGISTRY["lam_encoder"]))
    monkeypatch.setitem(sys.modules, "my_encoders", None)
    monkeypatch.delitem(sys.modules, "my_encoders")

    assert main(["list", "components", "--config", str(suite), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {"slot": "lam_encoder", "component": "max_pool",
            "description": "LAM encoder: max over patches, then concat(frame t, frame t+1) -> MLP."} in listed

    results, out = tmp_path / "results", tmp_path / "report"
    code = main(["gate", "--config", str(suite), "--profile", "smoke", "--candidate", "max_pool",
                 "--results", str(results), "--out", str(out), "--format", "json", "--quiet"])
    # Two smoke seeds settle little: PASS or INCONCLUSIVE, never a usage error, a crash or (for this encoder) FAIL.
    assert code in (EXIT_PASS, EXIT_INCONCLUSIVE), capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert (report["baseline"], report["candidate"]) == ("meanpool_concat", "max_pool")
    assert report["reproduce_command"].startswith("bench gate") and "--candidate max_pool" in report["reproduce_command"]
    runs = pd.read_parquet(results / "store" / "runs")
    assert sorted(zip(runs["variant"], runs["seed"], runs["status"])) == [
        ("max_pool", 0, "ok"), ("max_pool", 1, "ok"), ("meanpool_concat", 0, "ok"), ("meanpool_concat", 1, "ok")]
    config = json.loads(runs.set_index("variant").loc["max_pool"].iloc[0]["config_json"])
    assert config["model"]["actions"]["encoder"] == "max_pool"  # the plugin's component, not the baseline's
