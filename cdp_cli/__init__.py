"""cdp: a Customer Data Platform that runs as a command-line toolkit over local files.

From Python, start at `Project` (cdp_cli.project): a project's cdp.yaml, its store and its
folders. Every error a user can cause is a `CdpError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cdp_cli.errors import CdpError

if TYPE_CHECKING:
    from cdp_cli.project import Project

__version__ = "0.1.0"
__all__ = ["CdpError", "Project", "__version__"]


def __getattr__(name: str) -> Any:
    """`Project` is imported on first use, so that `import cdp_cli` stays cheap."""
    if name == "Project":
        from cdp_cli.project import Project

        return Project
    raise AttributeError(f"module 'cdp_cli' has no attribute {name!r}")
