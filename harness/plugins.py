"""The user's [plugins] modules: imported so that the components they register can be chosen.

The CLI process imports them while it loads the suite (`load_plugins`): anything a plugin raises at
import, SystemExit and KeyboardInterrupt included, is a usage error naming the plugin's file and line.
Worker processes import them again before a run (`import_plugins`): there a plugin that raises or
exits ends only that worker's run, which is recorded as failed. A plugin that ends the CLI process
itself (os._exit) cannot fake an exit code either: see harness.outcome.

A plugin registers components; it may not change the code that judges them. `check_judge` refuses a command
whose harness/ or reports/ modules hold a function or class a plugin put there (monkeypatching the statistics
to say PASS), after the plugins are imported and again before a verdict is written. It is a check, not a
sandbox: code that sets out to evade it can, and in CI the pull request's code runs the gate anyway, so its
diff is what a maintainer reviews.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback

from harness import outcome
from worldmodel.errors import WorldbenchError


JUDGE_PACKAGES = ("harness", "reports")  # the code that computes and writes the verdict
_loaded: list[str] = []  # the plugins this process imported (load_plugins)


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
        _loaded.append(name)
        check_judge()
    outcome.note_plugin("")


def check_judge() -> None:
    """Refuse (exit 2) when a loaded harness/ or reports/ module holds a function or class defined in a plugin."""
    plugins = tuple(dict.fromkeys(_loaded))
    if not plugins:
        return
    for module_name, module in list(sys.modules.items()):
        if module is None or module_name.split(".")[0] not in JUDGE_PACKAGES:
            continue
        for attribute, value in list(vars(module).items()):
            owner = getattr(value, "__module__", None)
            if isinstance(owner, str) and any(owner == p or owner.startswith(f"{p}.") for p in plugins):
                raise WorldbenchError(
                    f"plugins.modules: plugin '{owner}' replaced {module_name}.{attribute}; a plugin registers "
                    f"components and may not change how worldbench judges them: remove that from the plugin")


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
