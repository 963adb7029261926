"""Where worldbench writes, checked in one place before anything is written.

Every path the program writes is one of:
  - under --results: worldbench.json, the store, the stage and data cache (named by content hashes, never
    by a user's name), rollout frames, crash logs (logs/), --baseline-ref's checkouts, the default report
    dir, and matplotlib's font cache (cache/matplotlib, which it would otherwise put in the home dir);
  - under --out: the report files, never inside the store;
  - the kernel cache (worldmodel/kernels: ~/.cache/worldbench/kernels);
  - the file GITHUB_STEP_SUMMARY names, appended to, where GitHub Actions asks for the job summary;
  - the OS temp dir, only for what Python's multiprocessing (and W&B's export) keep there while they run.
The user's git checkout is only read (harness.git, harness.baseline_ref).
The commands ask this module for their report dir and job summary before they train, so a destination
that cannot be written is exit 2 with nothing written, never a crash after the runs.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from worldmodel.errors import WorldbenchError

SUMMARY_ENV = "GITHUB_STEP_SUMMARY"


def report_dir(results: Path, out: Path | None) -> Path:
    """The report dir: --out, or <results>/report. Refused when it is a file, lies inside the store, or
    cannot be created. The last check before a command's first write: trying --out may touch its parent."""
    chosen = Path(out) if out is not None else Path(results) / "report"
    check_outside_store(results, chosen, "--out", "pass a report dir outside it")
    if out is not None:
        check_creatable_dir(chosen, "--out")
    elif chosen.exists() and not chosen.is_dir():
        raise WorldbenchError(f"the report dir '{chosen}' is a file; move it away or pass --out DIR")
    return chosen


def check_outside_store(results: Path, path: Path, what: str, fix: str) -> None:
    """Refuse a destination in the store (<results>/store), whose parquet tables a foreign file would break."""
    store = (Path(results) / "store").resolve()
    resolved = Path(path).resolve()
    if resolved == store or store in resolved.parents:
        raise WorldbenchError(f"{what} '{path}' is inside the store '{store}', whose tables it would break; {fix}")


def check_creatable_dir(path: Path, what: str) -> None:
    """`path` is a writable dir, or one that can be created: its nearest existing ancestor is a dir, and its
    first missing folder can be made (made and removed again: on /proc, root passes os.access but not mkdir)."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise WorldbenchError(f"{what} '{path}' is a file; pass a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise WorldbenchError(f"{what} '{path}' is not writable; pass a writable directory")
        return
    missing = path.absolute()
    while not missing.parent.exists():
        missing = missing.parent
    if not missing.parent.is_dir():
        raise WorldbenchError(f"{what} '{path}' lies under '{missing.parent}', which is a file; pass a directory")
    try:
        missing.mkdir()
        missing.rmdir()
    except OSError as err:
        raise WorldbenchError(f"{what} '{path}' cannot be created ({err.strerror or err}); "
                              f"pass a writable directory") from None


def job_summary(results: Path) -> Path | None:
    """The GitHub job summary file to append the markdown report to, when GITHUB_STEP_SUMMARY names one."""
    value = os.environ.get(SUMMARY_ENV)
    if not value:
        return None
    path = Path(value)
    check_outside_store(results, path, SUMMARY_ENV, "unset it or point it outside the results dir's store")
    if path.exists() and (not path.is_file() or not os.access(path, os.W_OK)):
        raise WorldbenchError(f"{SUMMARY_ENV} '{path}' is not a writable file; unset it or fix the path")
    if not path.exists() and not (path.parent.is_dir() and os.access(path.parent, os.W_OK | os.X_OK)):
        raise WorldbenchError(f"{SUMMARY_ENV} '{path}' is in a folder that does not exist or is not writable; "
                              f"unset it or fix the path")
    return path


@contextmanager
def caches_under(results: Path | None):
    """While a command runs, matplotlib keeps its font cache under <results>/cache/matplotlib (unless the user
    chose a place for it) instead of the home dir. It writes there when reports/ first imports it, which the
    commands do only once the results dir exists."""
    if results is None or "MPLCONFIGDIR" in os.environ:
        yield
        return
    os.environ["MPLCONFIGDIR"] = str(Path(results).absolute() / "cache" / "matplotlib")
    try:
        yield
    finally:
        del os.environ["MPLCONFIGDIR"]


def crash_log_dir(results: Path | None) -> Path | None:
    """Where a crash's traceback is kept: <results>/logs when --results is a worldbench results dir already,
    else nowhere (a crash must not create a results dir, nor write anywhere else)."""
    from harness.store import MARKER_FILE

    if results is None or not (Path(results) / MARKER_FILE).is_file():
        return None
    return Path(results) / "logs"
