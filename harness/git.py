"""The one place that runs git: in the checkout this code runs from, unless a command names another folder."""
from __future__ import annotations

import subprocess
from pathlib import Path

from harness.matrix import WORLDMODEL_DIR

ROOT = WORLDMODEL_DIR.parent  # the checkout whose code is running


def git(*args: str, cwd: Path = ROOT, timeout: float | None = None) -> subprocess.CompletedProcess:
    """`git ARGS` in `cwd`, its output captured as text; the caller reads returncode, stdout and stderr.
    Without optional locks: `git status` would otherwise take .git/index.lock and refresh the index, writing
    into the user's checkout."""
    return subprocess.run(["git", "--no-optional-locks", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def git_state() -> tuple[str, bool]:
    """This checkout's commit and whether tracked files have uncommitted changes; ("unknown", False) outside git."""
    try:
        commit = git("rev-parse", "HEAD", timeout=10).stdout.strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):  # no git, or it hung
        return "unknown", False
    return commit or "unknown", dirty
