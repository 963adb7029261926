"""`bench export`: recorded curves and KPIs written for TensorBoard, MLflow and W&B, read back with each
tracker's own reader. Each test skips when its extra is not installed (.ci/run installs them)."""
from __future__ import annotations

import importlib.util
import json
import math
import struct
from pathlib import Path

import pytest

from harness.cli import main
from harness.export import tracked_runs
from harness.store import Store
from tiny import record_fabricated

REPO = Path(__file__).resolve().parents[1]
KPIS = {"dynamics.val_loss": 0.25, "actions.nmi": 0.5, "rollout.ar_mse": float("nan")}  # NaN: not measured


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """Two recorded runs (fabricated: loss 1/step x scale over ten steps per stage) and one failed run."""
    from harness.matrix import plan_runs
    from harness.suite import load_suite

    folder = tmp_path_factory.mktemp("export") / "results"
    store = Store(folder)
    specs = plan_runs(load_suite(REPO / "bench.toml"), "smoke", "sprite_world", ["meanpool_concat"], [0, 1, 2])
    for spec, status in zip(specs, ("ok", "ok", "failed")):
        record_fabricated(store, spec, KPIS, status, loss_scale=1 + spec.seed)
    return folder


def expected(results: Path) -> dict[str, dict]:
    """Run name -> {"curves": {(tag, step): value}, "kpis": {name: value}} as the export should write them."""
    return {run.name: {"curves": {(tag, step): value for tag, step, value in run.scalars()}, "kpis": run.kpis}
            for run in tracked_runs(Store(results, create=False))}


def export(results: Path, tracker: str, out: Path) -> None:
    assert main(["export", "--to", tracker, "--results", str(results), "--out", str(out)]) == 0


def needs(module: str):
    return pytest.mark.skipif(importlib.util.find_spec(module) is None,
                              reason=f"needs the {module} extra (pip install 'worldbench[{module}]')")


def test_the_export_takes_finished_runs_and_leaves_unmeasured_kpis_out(results):
    runs = expected(results)
    assert len(runs) == 2 and all(name.startswith("meanpool_concat-s") for name in runs)
    for run in runs.values():
        assert set(run["kpis"]) == {"dynamics.val_loss", "actions.nmi"}
        assert len(run["curves"]) == 30  # three stages, ten steps


@needs("tensorboard")
def test_tensorboard_event_files_read_back(results, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    export(results, "tensorboard", tmp_path)
    for name, run in expected(results).items():
        events = EventAccumulator(str(tmp_path / name))
        events.Reload()
        read = {(tag, event.step): event.value for tag in events.Tags()["scalars"] if not tag.startswith("kpi/")
                for event in events.Scalars(tag)}
        assert read.keys() == run["curves"].keys()
        assert all(math.isclose(read[key], value, rel_tol=1e-6) for key, value in run["curves"].items())
        kpis = {tag[4:]: events.Scalars(tag)[0].value for tag in events.Tags()["scalars"] if tag.startswith("kpi/")}
        assert kpis == pytest.approx(run["kpis"])


@needs("mlflow")
def test_an_mlflow_file_store_reads_back(results, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    export(results, "mlflow", tmp_path)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("worldbench")
    found = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    runs = expected(results)
    assert found.keys() == runs.keys()
    for name, run in runs.items():
        mlflow_run = found[name]
        assert mlflow_run.data.params["variant"] == "meanpool_concat"
        assert mlflow_run.data.metrics["kpi/actions.nmi"] == pytest.approx(run["kpis"]["actions.nmi"])
        read = {(metric.key, metric.step): metric.value for key in ("tokenizer/loss", "dynamics/loss")
                for metric in client.get_metric_history(mlflow_run.info.run_id, key)}
        assert read == pytest.approx({k: v for k, v in run["curves"].items()
                                      if k[0] in ("tokenizer/loss", "dynamics/loss")})


def wandb_records(path: Path):
    """The records of a W&B transaction log (run-*.wandb), decoded with W&B's own protobuf schema. The framing is
    LevelDB's log format behind a 7-byte ':W&B' header, which wandb-core writes and `wandb sync` reads."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0)
    block, position, pending = 32768, 7, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record
        elif kind == 0:
            break


@needs("wandb")
def test_wandb_offline_runs_read_back(results, tmp_path):
    export(results, "wandb", tmp_path)
    runs = expected(results)
    logs = sorted((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == len(runs)
    for log in logs:
        records = list(wandb_records(log))
        name = next(r.run.display_name for r in records if r.WhichOneof("record_type") == "run")
        history, summary = {}, {}
        for record in records:
            kind = record.WhichOneof("record_type")
            if kind == "history":
                values = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                          for item in record.history.item}
                stage = next(key.split("/")[0] for key in values if key.endswith("/step"))
                history.update({(key, values[f"{stage}/step"]): value for key, value in values.items()
                                if key.startswith(f"{stage}/") and not key.endswith("/step")})
            elif kind == "summary":
                summary.update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                for item in record.summary.update})
        assert history == pytest.approx(runs[name]["curves"])
        assert {k[4:]: v for k, v in summary.items() if k.startswith("kpi/")} == pytest.approx(runs[name]["kpis"])


def test_a_missing_extra_or_an_out_inside_the_store_is_one_line_and_nothing_written(results, tmp_path, capsys,
                                                                                  monkeypatch):
    from harness import export as exporter

    monkeypatch.setitem(exporter.TRACKERS, "wandb", ("no_such_tracker_module_wb", "wandb"))
    assert main(["export", "--to", "wandb", "--results", str(results), "--out", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'worldbench[wandb]'" in err and not (tmp_path / "w").exists()
    inside = results / "store" / "exported"
    monkeypatch.setitem(exporter.TRACKERS, "tensorboard", ("json", "tensorboard"))  # installed or not, as here
    assert main(["export", "--to", "tensorboard", "--results", str(results), "--out", str(inside)]) == 2
    assert "inside the store" in capsys.readouterr().err and not inside.exists()
    assert main(["export", "--to", "tensorboard", "--results", str(results)]) == 2  # --out is required
