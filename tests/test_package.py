"""The package as a user installs and scripts it: the wheel's contents, the suite file it finds, the CLI's
machine-readable output."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from harness.cli import main
from harness.suite import PACKAGED_CONFIG, find_config, load_suite
from worldmodel.config import STAGES

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "reports", "variants", "worldmodel")


def test_the_wheel_holds_the_code_the_default_suite_and_the_golden_checkpoints(tmp_path):
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info beside the sources
    for name in (*PACKAGES, "pyproject.toml", "README.md", "bench.toml"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(REPO / name, source / name, **({"symlinks": True, "ignore": shutil.ignore_patterns("__pycache__")}
                                           if copy is shutil.copytree else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True, timeout=300)
    wheel = zipfile.ZipFile(next((tmp_path / "dist").glob("worldbench-*.whl")))
    names = set(wheel.namelist())
    for package in PACKAGES:
        modules = {f"{package}/{p.relative_to(REPO / package)}" for p in (REPO / package).rglob("*.py")}
        assert modules <= names, modules - names
    assert wheel.read("harness/bench.toml") == (REPO / "bench.toml").read_bytes()  # the file, not the link
    for stage in STAGES:
        assert wheel.read(f"harness/golden/{stage}.pt") == (REPO / "harness" / "golden" / f"{stage}.pt").read_bytes()
    assert {"worldmodel/kernels/attention.cpp", "worldmodel/kernels/fused.cpp"} <= names
    assert not any(name.startswith(("tests/", "benchmarks/")) for name in names)
    metadata = wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    runtime = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert not any("statsmodels" in line for line in runtime)
    for extra in ("tensorboard", "mlflow", "wandb", "dev"):
        assert f"Provides-Extra: {extra}" in metadata


def test_nothing_outside_the_tests_imports_statsmodels():
    users = [str(path.relative_to(REPO)) for folder in (*PACKAGES, "benchmarks") for path in (REPO / folder).rglob("*.py")
             if re.search(r"^\s*(import|from)\s+statsmodels", path.read_text(), re.M)]
    assert users == []


def test_the_suite_file_is_found_from_here_upwards_else_the_packaged_one(tmp_path):
    deep = tmp_path / "project" / "a" / "b"
    deep.mkdir(parents=True)
    assert find_config(deep) in (PACKAGED_CONFIG, *[p / "bench.toml" for p in deep.parents])
    (tmp_path / "project" / "bench.toml").write_text('[comparison]\nalpha = 0.1\n')
    assert find_config(deep) == tmp_path / "project" / "bench.toml"
    assert load_suite(find_config(deep)).comparison.alpha == 0.1
    assert PACKAGED_CONFIG.read_bytes() == (REPO / "bench.toml").read_bytes()


def test_set_overrides_the_file_and_is_checked_as_the_file_is(tmp_path):
    suite = load_suite(REPO / "bench.toml", ["profiles.smoke.seeds=[3,4]", 'kpis."rollout.ar_mse".margin=0.2',
                                             "comparison.baseline=query_pool"])
    assert suite.profile("smoke").seeds == [3, 4] and suite.kpis["rollout.ar_mse"].margin == 0.2
    assert suite.comparison.baseline == "query_pool"
    assert suite.profile("smoke").model["tokenizer"]["steps"] == 24  # the rest of the table is kept


def test_version_json_listings_and_untruncated_names_when_piped(smoke_results, capsys):
    assert main(["--version"]) == 0  # argparse exits after printing; bench's run_command makes that exit 0
    assert re.match(r"worldbench \S+", capsys.readouterr().out)
    assert main(["list", "kpis", "--json"]) == 0
    kpis = json.loads(capsys.readouterr().out)
    assert {"kpi": "rollout.tf_action_response", "better": "higher", "scale": "log", "margin": 1 / 3,
            "blocking": True}.items() <= next(k for k in kpis if k["kpi"] == "rollout.tf_action_response").items()
    assert main(["list", "kpis"]) == 0  # piped (not a terminal): one tab-separated record a line, nothing cut
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t")[0] == "kpi" and "tokenizer.steps_to_target" in [line.split("\t")[0] for line in lines]
    assert main(["list", "runs", "--results", str(smoke_results), "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert len(runs) == 4 and {r["variant"] for r in runs} == {"meanpool_concat", "windowed_attention"}
    assert main(["show", runs[0]["run_id"][:6], "--results", str(smoke_results), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["run_id"] == runs[0]["run_id"] and shown["numpy_version"] and shown["cpu_model"]
    assert isinstance(shown["kpis"]["rollout.ar_mse"], float)
