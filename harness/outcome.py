"""The private channel from a guarded `bench` command to the process that sets its exit code.

harness.cli.guard runs each command in a child process and passes it the write end of a pipe, by number on
the child's command line (never through the environment, which a user or CI can set). The child notes on it
which plugin it is importing (`note_plugin`) and, once the command has decided, the exit code (`report_exit`).
Outside a guarded child (tests calling main directly, worker processes) both do nothing. A leaf module: it
imports nothing of the project, so the plugin loader can note through it.
"""
from __future__ import annotations

import json
import os
import threading
import time

PARENT_POLL_S = 0.5

_channel: int | None = None


def adopt_channel(fd: int) -> None:
    """In the guarded child: report on `fd`, and let no process this one starts inherit it (a worker must never
    be able to report for the command)."""
    global _channel
    _channel = fd
    os.set_inheritable(_channel, False)


def _send(kind: str, value: object) -> None:
    if _channel is not None:
        os.write(_channel, (json.dumps([kind, value]) + "\n").encode())


def note_plugin(name: str) -> None:
    """The plugin about to be imported ("" once they all are): a process that ends meanwhile is its doing."""
    _send("plugin", name)


def report_exit(code: int) -> None:
    """The exit code harness.cli.main decided; the guard exits with it, whatever ends this process after."""
    _send("exit", code)


def read_notes(fd: int) -> dict[str, object]:
    """Everything the child noted, the last value of each kind (read once the child has ended)."""
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    notes = {}
    for line in b"".join(chunks).decode(errors="replace").splitlines():
        try:
            kind, value = json.loads(line)
        except ValueError:
            continue
        notes[kind] = value
    return notes


def exit_with_parent(parent_pid: int) -> None:
    """A daemon thread ends this process once `parent_pid` is gone (reparented: a new ppid), even when the
    parent was killed with SIGKILL and could clean nothing up."""
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="worldbench-parent-watch", daemon=True).start()
