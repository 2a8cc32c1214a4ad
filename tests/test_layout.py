"""The package's layout is its architecture: four worlds, and the built tree's contract in one home."""

from __future__ import annotations

import ast
from pathlib import Path

from vpcgen import tree
from vpcgen.compiler import render

PACKAGE = Path(__file__).resolve().parent.parent / "vpcgen"


def imported(path: Path) -> set[str]:
    """Every vpcgen module a file imports, as dotted names under vpcgen."""
    here = path.relative_to(PACKAGE).with_suffix("").parts[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(here[:len(here) - node.level + 1])
                parts = base + (node.module.split(".") if node.module else [])
                names = [".".join(parts + [a.name]) for a in node.names] if not node.module else [".".join(parts)]
                out.update(names)
            elif node.module and node.module.startswith("vpcgen"):
                out.add(node.module.removeprefix("vpcgen").lstrip("."))
        elif isinstance(node, ast.Import):
            out.update(a.name.removeprefix("vpcgen").lstrip(".") for a in node.names if a.name.startswith("vpcgen"))
    return out


def test_readers_of_a_tree_import_nothing_of_the_compiler():
    """check, deploy and the lab read built trees through the contract, never through the compiler."""
    for world in ("ops", "lab"):
        for path in sorted((PACKAGE / world).rglob("*.py")):
            bad = sorted(m for m in imported(path) if m.split(".")[0] in ("compiler", "site", "api"))
            assert not bad, f"{path.relative_to(PACKAGE.parent)} imports {bad}"


def test_reading_a_site_imports_nothing_of_what_comes_after():
    for path in sorted((PACKAGE / "site").glob("*.py")):
        bad = sorted(m for m in imported(path) if m.split(".")[0] in ("compiler", "ops", "lab", "gitops", "api"))
        assert not bad, f"{path.relative_to(PACKAGE.parent)} imports {bad}"


def test_generated_paths_and_state_files_are_written_only_in_the_contract():
    """No path of a generated file, manifest or state file appears as a literal outside vpcgen/tree.py
    (templates get theirs from the render context)."""
    needles = set(tree.GENERATED.values()) | {tree.MANIFEST, tree.SECRET_SUMS, "vrrp.state", tree.STATE_DIR + "/"}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "tree.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found += [f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {n}" for n in needles if n in node.value]
    assert not found, "\n".join(found)


def test_the_daemons_table_and_the_contract_agree():
    assert {d.name for d in render.DAEMONS} == set(tree.GENERATED)
    assert {d.service for d in render.DAEMONS} == set(tree.SERVICES)
    assert set(tree.CHECKED.values()) <= set(tree.GENERATED.values())
    assert set(tree.CHECK_COMMANDS) | set(tree.HEALTH_COMMANDS) <= set(tree.SERVICES)


def test_the_reachability_model_reads_only_a_resolved_site():
    """vpcgen.reach is shared by the lab and the diff: it imports nothing else of vpcgen."""
    for path in sorted((PACKAGE / "reach").glob("*.py")):
        bad = sorted(m for m in imported(path) if m.split(".")[0] != "reach")
        assert not bad, f"{path.relative_to(PACKAGE.parent)} imports {bad}"


def test_four_worlds_at_the_top():
    """Plus the one model of reachability (reach) the lab and gitops share."""
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert folders == ["compiler", "gitops", "lab", "ops", "reach", "site"]
