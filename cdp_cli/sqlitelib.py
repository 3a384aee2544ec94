"""sqlite-utils, imported without pandas and numpy: every module of cdp imports it from here.

sqlite-utils imports pandas and numpy when they are installed (the predict and match extras
bring them), to map their column types, which cdp never hands it: 0.3 s and 65 MB more in
every cdp command. Both are hidden while sqlite-utils loads; they import as usual after.

It also imports dateutil's parser for its recipes (parsedate, parsedatetime), which cdp never
calls: 10 ms of every command that opens the store. The parser is loaded lazily (importlib's
LazyLoader): the module is there, and runs on its first use, by whoever uses it.
"""

from __future__ import annotations

import importlib.util
import sys


def _load_lazily(name: str) -> None:
    """Put module `name` in sys.modules, to run on first attribute access; nothing if it is
    imported already, or cannot be found (then sqlite-utils' own import says so)."""
    if name in sys.modules:
        return
    parent_name, _, child = name.rpartition(".")
    try:
        spec = importlib.util.find_spec(name)  # imports the parent package, not the module
    except ImportError:
        return
    if spec is None or spec.loader is None:
        return
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    if parent_name:  # as the import system binds a submodule to its package
        setattr(sys.modules[parent_name], child, module)


_HIDDEN = [name for name in ("pandas", "numpy") if name not in sys.modules]
for _name in _HIDDEN:
    sys.modules[_name] = None  # type: ignore[assignment]  # None: the import fails
_load_lazily("dateutil.parser")
try:
    import sqlite_utils as sqlite_utils  # the explicit re-export of this module
finally:
    for _name in _HIDDEN:
        sys.modules.pop(_name, None)

__all__ = ["sqlite_utils"]
