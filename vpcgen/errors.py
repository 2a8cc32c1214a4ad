"""Diagnostics and the library's one root exception.

Every stage collects diagnostics instead of stopping at the first problem; the CLI is the only
place that prints them (as ``FILE:LINE:COL: error: MESSAGE [code]``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Location:
    file: str
    line: int = 0  # 1-based; 0 when only the file is known
    column: int = 0

    def __str__(self) -> str:
        if self.line:
            return f"{self.file}:{self.line}:{self.column}"
        return self.file


@dataclass(frozen=True, order=True)
class Diagnostic:
    location: Location | None
    message: str
    code: str
    severity: str = "error"  # or "warning": dead or surprising configuration that still builds

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        return f"{where}{self.severity}: {self.message} [{self.code}]"


class VpcgenError(Exception):
    """Root of every error the library raises on purpose."""


class DiagnosticsError(VpcgenError):
    """The input is wrong; carries every problem found, in a stable order."""

    def __init__(self, diagnostics: list[Diagnostic], warnings: list[Diagnostic] = ()):
        self.diagnostics = sorted(set(diagnostics), key=_sort_key)
        self.warnings = sorted(set(warnings), key=_sort_key)  # printed with the errors, never counted as one
        super().__init__("\n".join(str(d) for d in self.diagnostics))


def _sort_key(d: Diagnostic):
    loc = d.location or Location("")
    return (loc.file, loc.line, loc.column, d.code, d.message, d.severity)


class CheckError(VpcgenError):
    """A daemon's checker rejected a built tree."""
