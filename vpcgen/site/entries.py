"""What may sit in a site folder: anything else is a mistake (a misnamed folder, a stray document)
that would otherwise be ignored without a word."""

from __future__ import annotations

import difflib
from pathlib import Path

from ..errors import Diagnostic, Location
from .loader import KIND_DIRS, LOCK_FILE, display_path

FOLDERS = (*sorted(KIND_DIRS), "secrets")
FILES = ("site.yaml", LOCK_FILE, "known_hosts")
HANDLED = ("site.yml",)  # the loader reports these itself


def unknown_entries(site_dir) -> list[Diagnostic]:
    """One error per entry of the site folder that vpcgen does not read (hidden entries and
    Markdown notes aside)."""
    root_arg = Path(site_dir)
    root = root_arg.resolve()
    if not root.is_dir():
        return []
    out = []
    for path in sorted(root.iterdir()):
        name = path.name
        if name.startswith(".") or name in FOLDERS + FILES + HANDLED or (path.suffix == ".md" and path.is_file()):
            continue
        shown = display_path(path, root_arg, root)
        if path.is_dir():
            close = difflib.get_close_matches(name, FOLDERS, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}/? " if close else ""
            out.append(Diagnostic(Location(shown), f"unknown folder '{name}/' in the site folder: {hint}"
                                  f"vpcgen reads only {', '.join(f + '/' for f in FOLDERS)}", "unknown-entry"))
            continue
        stem = Path(name).stem
        kind = next((k for k in KIND_DIRS.values() if stem in (k, k + "s")), None)
        if kind is not None or path.suffix in (".yaml", ".yml"):
            folder = next((f for f, k in KIND_DIRS.items() if k == kind), None)
            where = f"{folder}/<name>.yaml" if folder else "zones/, vpcs/ or acls/ (the folder decides the kind)"
            hint = f"a document goes to {where}"
        else:
            hint = f"a site folder holds {', '.join(FILES)} and {', '.join(f + '/' for f in FOLDERS)}"
        out.append(Diagnostic(Location(shown), f"unknown file '{name}' in the site folder: {hint}", "unknown-entry"))
    return out
