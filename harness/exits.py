"""Exit codes of every `bench` command, in one place (a leaf module: it imports nothing of the project).

0 ok / PASS, 1 FAIL (or a planted fault not as expected), 2 usage or config error, 3 INCONCLUSIVE,
4 runs crashed (or an internal error), 130 interrupted (Ctrl-C), 128 + SIGTERM (or SIGHUP) terminated. Only
harness.cli.run_command turns the end of a command into one of them, and harness.cli.guard makes the
process exit with it.
"""
from __future__ import annotations

import signal

EXIT_OK = EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_INCONCLUSIVE = 3
EXIT_CRASHED = 4
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 128 + signal.SIGTERM

VERDICT_EXIT = {"PASS": EXIT_PASS, "FAIL": EXIT_FAIL, "INCONCLUSIVE": EXIT_INCONCLUSIVE}
