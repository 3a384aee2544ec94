"""`cdp init`: a new project made from the files cdp ships, and where those files are."""

from __future__ import annotations

import sys
from pathlib import Path

from cdp_cli.errors import CdpError
from cdp_cli.files import atomic_write

PROJECT_FILES = ("cdp.yaml", "tag_rules", "journeys", "templates", "sample_data")


def shipped_root() -> Path:
    """Where the example project lives: the source checkout, else the installed data files."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "cdp.yaml").is_file() and (checkout / "sample_data").is_dir():
        return checkout
    installed = Path(sys.prefix) / "share" / "cdp"
    if (installed / "cdp.yaml").is_file():
        return installed
    raise CdpError("cannot find the example project cdp ships with; reinstall cdp")


def _shipped_files(root: Path) -> list[Path]:
    files = []
    for name in PROJECT_FILES:
        path = root / name
        if path.is_file():
            files.append(Path(name))
        elif path.is_dir():
            files += sorted(
                p.relative_to(root)
                for p in path.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts
            )
    return files


def init_project(directory: Path, force: bool = False) -> list[Path]:
    """Copy cdp.yaml, tag rules, journeys, templates and the sample data into `directory`.

    Refuses, before writing anything, when a file would be overwritten and `force` is False.
    """
    root = shipped_root()
    files = _shipped_files(root)
    existing = [f for f in files if (directory / f).exists()]
    if existing and not force:
        shown = ", ".join(str(directory / f) for f in existing[:3])
        more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        raise CdpError(f"{shown}{more} already exist; --force overwrites them")
    written = []
    for name in PROJECT_FILES:
        if (root / name).is_dir():
            (directory / name).mkdir(parents=True, exist_ok=True)
    for relative in files:
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(target, "wb") as f:  # --force over a file: the old or the new, whole
            f.write((root / relative).read_bytes())
        written.append(target)
    return written
