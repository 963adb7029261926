"""`bench report` and `bench gate`: statistics -> verdict -> reports -> exit code."""
from __future__ import annotations

COMMANDS: dict = {}


def add_commands(commands, add_config, add_results) -> None:
    """Registers the report and gate sub-commands."""
