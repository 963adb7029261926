"""Executors run RunSpecs somewhere and hand each finished RunRecord back to the driver.

local: `jobs` worker processes (spawned, so torch state never crosses a fork), each running
       runs one after another with cores // jobs torch threads. Workers are reused: a run
       depends only on its spec and seeds every RNG it uses.
ray:   each run is a Ray task asking for that many CPUs; `address` joins an existing cluster.
With --seed-batch K, what a worker or task takes is a group of up to K runs of one variant
(harness/seed_batches.py), and it hands back one record per run.
The driver alone writes the store, so both executors record identical rows for the same spec.

Local workers never outlive their driver: when the driver stops early (an exception, SIGTERM through
harness.cli) it terminates them, and each worker exits by itself once its parent is gone (kill -9).
"""
from __future__ import annotations

import multiprocessing
import os
import queue as queue_module
import socket
from contextlib import nullcontext
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Callable

from harness.matrix import RunSpec
from harness.outcome import exit_with_parent
from harness.plugins import import_plugins
from harness.seed_batches import execute_group, group_specs
from harness.worker import Progress, RunRecord, execute_run, now
from harness.types import RunRow
from worldmodel.errors import WorldbenchError

OnRecord = Callable[[RunRecord], None]


def threads_per_job(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // jobs)


def crashed_record(spec: RunSpec, executor: str, error: str) -> RunRecord:
    """A run whose worker died without reporting (killed for memory, segfault)."""
    return RunRecord(run=RunRow(
        run_id=spec.run_id, profile=spec.profile, dataset=spec.dataset, variant=spec.variant,
        seed=spec.seed, status="failed", error=error, failed_stage="", diverged_step=-1,
        config_json=spec.resolved_json(), stage_ids_json="{}", torch_version="", device="",
        precision=spec.precision, cpu_model="", host="", executor=executor, started_at=now(),
        finished_at=now(),
    ))


# ----------------------------------------------------------------------------- local

def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and terminate this driver's worker (and progress manager) processes."""
    pool.shutdown(wait=False, cancel_futures=True)
    for child in multiprocessing.active_children():
        child.terminate()
    for child in multiprocessing.active_children():
        child.join(timeout=5)


def units(specs: list[RunSpec], seed_batch: int) -> list[list[RunSpec]]:
    """What one worker call runs: one run, or with seed_batch > 1 a group of one variant's runs."""
    return group_specs(specs, seed_batch) if seed_batch > 1 else [[spec] for spec in specs]


def execute_unit(specs: list[RunSpec], results_root: str, threads: int, executor: str,
                 progress: Progress | None = None, device: str = "cpu") -> list[RunRecord]:
    """One unit in a worker: its records, in order (a group's come together, once its last run is evaluated)."""
    if len(specs) == 1:
        return [execute_run(specs[0], results_root, threads, executor, progress, device)]
    return execute_group(specs, results_root, threads, executor, progress, device)


def _local_worker(specs: list[RunSpec], results_root: str, threads: int, plugins: list[str], events,
                  device: str = "cpu") -> list[RunRecord]:
    import_plugins(plugins)
    progress = (lambda *event: events.put(event)) if events is not None else None
    return execute_unit(specs, results_root, threads, "local", progress, device)


def run_local(specs: list[RunSpec], results_root: str, jobs: int, plugins: list[str], on_record: OnRecord,
              progress: Progress | None = None, device: str = "cpu", seed_batch: int = 1) -> None:
    context = multiprocessing.get_context("spawn")
    threads = threads_per_job(jobs)
    # A manager process carries progress events; without progress bars none is started.
    with context.Manager() if progress else nullcontext() as manager:
        events = manager.Queue() if progress else None
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=exit_with_parent,
                                 initargs=(os.getpid(),)) as pool:
            try:
                futures = {pool.submit(_local_worker, unit, results_root, threads, plugins, events, device): unit
                           for unit in units(specs, seed_batch)}
                while futures:
                    done, _ = wait(futures, timeout=0.2, return_when=FIRST_COMPLETED)
                    _drain(events, progress)
                    for future in done:
                        unit = futures.pop(future)
                        try:
                            records = future.result()
                        except BaseException as err:  # the worker died, or its run exited past execute_run
                            records = [crashed_record(spec, "local", f"worker process died: {type(err).__name__}: "
                                                                     f"{err}") for spec in unit]
                        for record in records:
                            on_record(record)
                _drain(events, progress)
            except BaseException:  # SIGTERM, Ctrl-C, a store that cannot be written: no orphaned workers
                _stop_workers(pool)
                raise


def _drain(events, progress: Progress | None) -> None:
    while events is not None:
        try:
            progress(*events.get_nowait())
        except queue_module.Empty:
            return


# ----------------------------------------------------------------------------- ray

def _ray_worker(specs: list[RunSpec], results_root: str, threads: int, plugins: list[str],
                device: str = "cpu") -> list[RunRecord]:
    import_plugins(plugins)
    return execute_unit(specs, results_root, threads, "ray", device=device)


def check_ray_address(address: str, timeout_s: float = 5.0) -> None:
    """Refuse an address nothing listens on: ray.init would otherwise retry for minutes, logging as it goes."""
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise WorldbenchError(f"--ray-address '{address}' is not HOST:PORT (or ray://HOST:PORT, or auto)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise WorldbenchError(f"--ray-address '{address}': nothing answers there ({err.strerror or err}); "
                              f"start the cluster (`ray start --head`) or fix the address") from None


def start_ray(jobs: int, address: str | None = None) -> None:
    """Join the Ray cluster at `address`, or start a local one: called before anything is written, so a Ray
    that cannot start or be reached is a usage error (exit 2), not a failure after the results dir exists."""
    if address:
        check_ray_address(address)
    try:
        import ray
    except ImportError:
        raise WorldbenchError("the ray executor needs Ray; install it with `pip install 'worldbench[ray]'`") from None
    if ray.is_initialized():
        return
    try:
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(num_cpus=jobs * threads_per_job(jobs), include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise WorldbenchError(f"cannot start or reach Ray at '{address or 'local'}' ({err}); "
                              f"check --ray-address") from None


def run_ray(specs: list[RunSpec], results_root: str, jobs: int, plugins: list[str], on_record: OnRecord,
            device: str = "cpu", seed_batch: int = 1) -> None:
    """Each run, or group of runs (seed_batch), a Ray task (start_ray has connected this process to a cluster)."""
    import ray

    threads = threads_per_job(jobs)
    # On CUDA each task asks Ray for a share of one GPU: `jobs` tasks share each GPU.
    gpus = {"num_gpus": 1 / jobs} if device.startswith("cuda") else {}
    task = ray.remote(num_cpus=threads, max_retries=0, **gpus)(_ray_worker)
    pending = {task.remote(unit, results_root, threads, plugins, device): unit for unit in units(specs, seed_batch)}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        unit = pending.pop(done[0])
        try:
            records = ray.get(done[0])
        except Exception as err:  # the task's worker died
            records = [crashed_record(spec, "ray", f"ray task died: {type(err).__name__}: {str(err)[:200]}")
                       for spec in unit]
        for record in records:
            on_record(record)
