"""The user's [plugins] modules: imported so that the components they register can be chosen.

The CLI process imports them while it loads the suite (`load_plugins`): anything a plugin raises at
import, SystemExit and KeyboardInterrupt included, is a usage error naming the plugin's file and line.
Worker processes import them again before a run (`import_plugins`): there a plugin that raises or
exits ends only that worker's run, which is recorded as failed. A plugin that ends the CLI process
itself (os._exit) cannot fake an exit code either: see harness.outcome.
"""
from __future__ import annotations

import importlib
import importlib.util
import traceback

from harness import outcome
from worldmodel.errors import WorldbenchError


def load_plugins(modules: list[str]) -> None:
    """Import each plugin in the CLI process; any failure is one line naming the plugin (exit 2)."""
    for name in modules:
        outcome.note_plugin(name)  # if the import ends the process, the guard names this plugin
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is None or not (name == err.name or name.startswith(f"{err.name}.")):
                raise WorldbenchError(plugin_failure(name, err)) from None
            raise WorldbenchError(f"plugins.modules: cannot import '{name}' ({err}); check the module path") from None
        except BaseException as err:  # noqa: BLE001 - user code: SyntaxError, sys.exit, anything at import
            raise WorldbenchError(plugin_failure(name, err)) from None
    outcome.note_plugin("")


def import_plugins(modules: list[str]) -> None:
    """Import the plugins in a worker process (the CLI process has checked them already)."""
    for name in modules:
        importlib.import_module(name)


def plugin_failure(name: str, err: BaseException) -> str:
    """One line: the plugin, where in its source it failed (file:line) and the error's first line."""
    try:
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec and spec.origin else ""
    except (ImportError, ValueError):
        origin = ""
    if isinstance(err, SyntaxError) and err.filename:
        where = f"{err.filename}:{err.lineno}"
        message = err.msg
    else:
        frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename == origin]
        where = f"{origin}:{frames[-1].lineno}" if frames else origin or name
        message = (str(err).strip().splitlines() or [""])[0][:200]
    return (f"plugins.modules: plugin '{name}' ({where}) failed to import: {type(err).__name__}: {message}; "
            f"fix the plugin or remove it from [plugins]")
