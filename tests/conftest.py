"""Shared helpers: copying sites to temporary folders and running the CLI in-process."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vpcgen.cli import app

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "sites" / "example"
FIXTURE_SITES = ROOT / "tests" / "fixtures" / "sites"


def copy_site(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def process_exists(pid: int) -> bool:
    """A process with that pid exists: running, or ended and not reaped yet (a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def run_cli(*args: str):
    """(exit code, stdout, stderr) of `vpcgen ARGS` run in-process."""
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def example(tmp_path: Path) -> Path:
    return copy_site(EXAMPLE, tmp_path / "example")
