"""sqlite-utils, imported without pandas and numpy: every module of cdp imports it from here.

sqlite-utils imports pandas and numpy when they are installed (the predict and match extras
bring them), to map their column types, which cdp never hands it: 0.3 s and 65 MB more in
every cdp command. Both are hidden while sqlite-utils loads; they import as usual after.
"""

from __future__ import annotations

import sys

_HIDDEN = [name for name in ("pandas", "numpy") if name not in sys.modules]
for _name in _HIDDEN:
    sys.modules[_name] = None  # type: ignore[assignment]  # None: the import fails
try:
    import sqlite_utils as sqlite_utils  # the explicit re-export of this module
finally:
    for _name in _HIDDEN:
        sys.modules.pop(_name, None)

__all__ = ["sqlite_utils"]
