"""The command line: the only module that prints or exits.

Exit codes: 0 success, 1 the input, a check or a target failed, 2 usage error.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from . import __version__
from .errors import CheckError, DiagnosticsError, VpcgenError

app = typer.Typer(
    name="vpcgen",
    help="Compile a YAML repository of VPCs into checked, deployable router configuration trees.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _fail(lines: list[str]) -> None:
    for line in lines:
        typer.echo(line, err=True)
    raise typer.Exit(1)


def _run(fn):
    """Run a command body, mapping the library's errors to stderr lines and exit 1."""
    try:
        return fn()
    except DiagnosticsError as exc:
        count = len(exc.diagnostics)
        _fail([str(d) for d in exc.diagnostics] + [f"{count} error{'s' if count != 1 else ''}"])
    except VpcgenError as exc:
        text = str(exc)  # a message that starts with its location is printed as FILE:LINE:COL: error: ...
        _fail([text if re.match(r"^\S+:\d+(:\d+)?: error: ", text) else f"error: {text}"])
    except KeyboardInterrupt:
        _fail(["error: interrupted"])
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        _fail([f"{where}error: {exc.strerror or exc}"])
    except (typer.Exit, typer.BadParameter):  # usage errors: typer prints them, exit 2
        raise
    except Exception as exc:  # a bug in vpcgen: still one clear line, never a traceback
        _fail([f"error: internal error: {type(exc).__name__}: {exc} (please report this as a vpcgen bug)"])


def _terminated(signum, frame) -> None:
    raise KeyboardInterrupt


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"vpcgen {__version__}")
        raise typer.Exit(0)


@app.callback()
def main(version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True,
                                      callback=_print_version)) -> None:
    """Compile a YAML repository of VPCs into checked, deployable router configuration trees."""
    # a terminated command unwinds like an interrupted one: namespaces, staging folders and
    # locks it holds are released by their own cleanup code
    signal.signal(signal.SIGTERM, _terminated)


def _site_of(path: Path) -> Path:
    """A site folder, or the site folder a file lies in (pre-commit passes the changed files)."""
    if path.is_dir() or not path.exists():
        return path
    for parent in path.resolve().parents:
        if (parent / "site.yaml").is_file():
            return Path(os.path.relpath(parent))
    raise typer.BadParameter(f"{path} is not inside a site folder (no site.yaml above it)")


@app.command()
def validate(site_dirs: list[Path] = typer.Argument(..., help="Site folders (e.g. sites/example), or files "
                                                  "inside them (as pre-commit passes them).")) -> None:
    """Check sites against the schemas and every semantic rule; print every error."""
    from .api import validate_site
    from .errors import DiagnosticsError

    def body():
        problems = []
        for site_dir in dict.fromkeys(_site_of(p) for p in site_dirs):
            try:
                v = validate_site(site_dir)
            except DiagnosticsError as exc:
                problems += exc.diagnostics
                continue
            typer.echo(f"{site_dir}: valid ({len(v.site.vpcs)} VPCs, "
                       f"{sum(len(x.routers) for x in v.site.vpcs.values())} routers)")
        if problems:
            raise DiagnosticsError(problems)

    _run(body)


@app.command()
def build(
    site_dir: Path = typer.Argument(..., help="The site folder, e.g. sites/example."),
    output: Path = typer.Option(Path("output"), "--output", "-o", help="Write DIR/<site>/."),
    locked: bool = typer.Option(False, "--locked", help="Fail instead of changing allocations.lock.yaml."),
    placeholder_secrets: bool = typer.Option(
        False, "--placeholder-secrets", help="Render fake secrets; the tree is marked not deployable."),
) -> None:
    """Validate, allocate and render one configuration tree per router."""
    from .api import BuildOptions, build_site, write_build

    def body():
        options = BuildOptions(output=output, locked=locked, placeholder_secrets=placeholder_secrets)
        result = write_build(site_dir, build_site(site_dir, options), options)
        names = ", ".join(result.routers[:8]) + (", ..." if len(result.routers) > 8 else "")
        typer.echo(f"built {result.output_dir} ({len(result.routers)} routers: {names})")
        if result.lock_changed:
            typer.echo(f"updated {Path(site_dir) / 'allocations.lock.yaml'}: commit it with the change")
        if placeholder_secrets:
            typer.echo("note: placeholder secrets: this tree is not deployable")

    _run(body)


@app.command()
def check(
    tree_dir: Path = typer.Argument(..., help="A built site, e.g. output/example."),
    router: Optional[list[str]] = typer.Option(None, "--router", help="Check only this router (repeatable)."),
) -> None:
    """Run the daemons' own checkers on built router trees (needs root for network namespaces)."""
    from .ops.check import check_tree

    def body():
        results = check_tree(tree_dir, router or None)
        failed = 0
        for r in results:
            typer.echo(f"{r.router:<24} {r.checker:<12} {'ok' if r.ok else 'FAILED'}  ({r.seconds * 1000:.0f} ms)")
            if not r.ok:
                failed += 1
                for line in r.output.strip().splitlines()[-20:]:
                    typer.echo(f"{r.file}: error: {r.checker}: {line}", err=True)
        typer.echo(f"{len(results) - failed} passed, {failed} failed")
        if failed:
            raise CheckError(f"{failed} check(s) failed")

    _run(body)


def run() -> None:  # pragma: no cover - console entry for `python -m vpcgen`
    app()



@app.command()
def deploy(
    tree_dir: Path = typer.Argument(..., help="A built site, e.g. output/example."),
    router: Optional[list[str]] = typer.Option(None, "--router", help="Deploy only this router (repeatable)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would change; change nothing."),
    parallel: int = typer.Option(1, "--parallel", min=1, max=256, help="VPCs deployed at the same time."),
    known_hosts: Optional[Path] = typer.Option(
        None, "--known-hosts", help="Pinned host keys (default: TREE_DIR/known_hosts, copied from the site)."),
    identity: Optional[list[Path]] = typer.Option(None, "--identity", "-i", help="SSH private key (repeatable); "
                                                  "the SSH agent and ~/.ssh keys are used too."),
) -> None:
    """Ship built router trees over SSH: one atomic release per router, backup before master."""
    from .ops.deploy import DeployOptions, deploy_tree

    def body():
        options = DeployOptions(known_hosts=known_hosts or Path(tree_dir) / "known_hosts",
                                identity=[str(i) for i in identity or []], dry_run=dry_run, parallel=parallel)
        outcomes = deploy_tree(tree_dir, router, options,
                               lambda name, message: typer.echo(f"[{name}] {message}", err=True))
        width = max([len(o.router) for o in outcomes] + [6])
        typer.echo(f"{'router':<{width}}  {'result':<11}  {'time':>6}  detail")
        for o in outcomes:
            typer.echo(f"{o.router:<{width}}  {o.status:<11}  {o.seconds:5.1f}s  {o.detail}")
            if dry_run and o.status == "planned":
                typer.echo(f"{'':<{width}}    files: {', '.join(o.files) or 'none'}")
                typer.echo(f"{'':<{width}}    reload: {', '.join(o.services) or 'nothing'}")
        counts = {s: sum(o.status == s for o in outcomes)
                  for s in ("changed", "skipped", "failed", "rolled back", "planned", "unchanged")}
        typer.echo(", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no routers")
        if counts["failed"] or counts["rolled back"]:
            raise typer.Exit(1)

    _run(body)



class DiffFormat(str, Enum):
    text = "text"
    markdown = "markdown"


@app.command()
def diff(
    site_dir: Path = typer.Argument(..., help="The site folder, e.g. sites/example (inside a git repository)."),
    base: str = typer.Option(..., "--base", help="The git revision to compare with, e.g. origin/main."),
    format: DiffFormat = typer.Option(DiffFormat.text, "--format", help="text, or markdown for a PR comment."),
    exit_code: bool = typer.Option(False, "--exit-code", help="Exit 1 when anything changes (like git diff)."),
) -> None:
    """Build the base revision and the working tree, and show what changes on which router."""
    from .gitops.diff import diff_site, render_markdown, render_text

    def body():
        report = diff_site(site_dir, base)
        typer.echo(render_markdown(report) if format == DiffFormat.markdown else render_text(report), nl=False)
        if exit_code and report.changed:
            raise typer.Exit(1)

    _run(body)



class GraphFormat(str, Enum):
    mermaid = "mermaid"
    dot = "dot"


@app.command()
def graph(
    site_dir: Path = typer.Argument(..., help="The site folder, e.g. sites/example."),
    format: GraphFormat = typer.Option(GraphFormat.mermaid, "--format", help="mermaid (renders in pull requests "
                                       "and READMEs) or dot (Graphviz: dot -Tsvg)."),
) -> None:
    """Print the site's topology: zones, VPCs, tiers, routers, public IPs, VPN peers, gateways, OSPF areas."""
    from . import api
    from .gitops.graph import render

    def body():
        v = api.validate_site(site_dir)
        typer.echo(render(v.site, v.alloc, format.value), nl=False)

    _run(body)



@app.command()
def schema(
    kind: Optional[str] = typer.Argument(None, help="site, zone, vpc, acl, lock or defs."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write every schema into this folder."),
) -> None:
    """Print a JSON Schema of the site files (Draft 2020-12), or write them all for editors."""
    from .site.schema import KINDS, schema_text

    kinds = (*KINDS, "defs")

    def body():
        if output is not None:
            output.mkdir(parents=True, exist_ok=True)
            for k in kinds:
                (output / f"{k}.schema.json").write_text(schema_text(k), encoding="utf-8")
            typer.echo(f"wrote {', '.join(f'{k}.schema.json' for k in kinds)} to {output}")
        elif kind in kinds:
            typer.echo(schema_text(kind), nl=False)
        else:
            raise typer.BadParameter(f"give one of {', '.join(kinds)}, or --output DIR", param_hint="KIND")

    _run(body)


@app.command()
def init(
    site_dir: Path = typer.Argument(..., help="The new site folder, e.g. sites/prod (the repository root is the "
                                    "folder above sites/)."),
) -> None:
    """Scaffold a site repository that validates and builds: site, zone, VPC, ACLs, CI workflows,
    pre-commit hook and editor settings."""
    from .gitops.scaffold import scaffold

    def body():
        for line in scaffold(site_dir):
            typer.echo(line)

    _run(body)



lab_app = typer.Typer(help="Run a built site for real in network namespaces and prove it works (needs root).",
                      no_args_is_help=True)
app.add_typer(lab_app, name="lab")


@lab_app.command("up")
def lab_up(
    tree_dir: Path = typer.Argument(..., help="A built site, e.g. output/example."),
    vpc: Optional[str] = typer.Option(None, "--vpc", help="Only this VPC's routers and hosts."),
) -> None:
    """Start every router of the tree (and test hosts, internet side, core routers) in namespaces."""
    from .lab import run as lab

    def body():
        p = lab.up(tree_dir, vpc, progress=lambda m: typer.echo(m, err=True))
        kinds = {}
        for n in p.nodes:
            kinds[n.kind] = kinds.get(n.kind, 0) + 1
        typer.echo(f"lab {p.name} up: " + ", ".join(f"{v} {k}{'s' if v != 1 else ''}" for k, v in sorted(kinds.items()))
                   + f", {len(p.segments)} segments")

    _run(body)


@lab_app.command("down")
def lab_down(tree_dir: Path = typer.Argument(..., help="The built site the lab was started from.")) -> None:
    """Remove every namespace, link and process of the lab (also after a crash of `lab up`)."""
    from .lab import run as lab

    def body():
        removed = lab.down(tree_dir)
        typer.echo(f"lab {lab.lab_name(tree_dir)} down: {len(removed)} namespaces removed")

    _run(body)


@lab_app.command("fault")
def lab_fault(
    tree_dir: Path = typer.Argument(..., help="The built site the lab was started from."),
    fault: str = typer.Argument(..., help="sync-link VPC | upstream ROUTER | kill ROUTER SERVICE | stop ROUTER | "
                                "start ROUTER"),
    target: list[str] = typer.Argument(..., help="What the fault hits (see FAULT)."),
) -> None:
    """Inject a fault into the running lab: a cut sync link, a lost upstream, a killed daemon, a
    stopped or started router. `vpcgen lab heal` undoes them."""
    from .lab import run as lab

    _run(lambda: typer.echo(lab.fault(tree_dir, fault, target)))


@lab_app.command("heal")
def lab_heal(tree_dir: Path = typer.Argument(..., help="The built site the lab was started from.")) -> None:
    """Undo every fault injected with `vpcgen lab fault`."""
    from .lab import run as lab

    def body():
        for line in lab.heal(tree_dir) or ["no fault to heal"]:
            typer.echo(line)

    _run(body)


@lab_app.command("test")
def lab_test(
    tree_dir: Path = typer.Argument(..., help="The built site the lab was started from."),
    round_: Optional[list[str]] = typer.Option(None, "--round", help="Only these rounds: redundancy, acl, "
                                               "services, guest, failover, ha (repeatable)."),
    results: Optional[Path] = typer.Option(None, "--results", help="Where to write the results (JSON); by "
                                           "default TREE_DIR.lab-results.json, next to the tree."),
) -> None:
    """Run the scenario rounds against the running lab and print a pass/fail table with timings."""
    from .lab import rounds as labtest
    from .lab import run as lab

    def body():
        target = results or lab.results_path(tree_dir)
        rounds = round_ or list(labtest.ROUNDS)
        unknown = sorted(set(rounds) - set(labtest.ROUNDS))
        if unknown:
            raise typer.BadParameter(f"unknown round {', '.join(unknown)} (rounds: {', '.join(labtest.ROUNDS)})")
        runner = labtest.run(tree_dir, rounds, progress=lambda m: typer.echo(m, err=True))
        width = max([len(f"{c.round}: {c.name}") for c in runner.checks] + [10])
        for c in runner.checks:
            typer.echo(f"{'PASS' if c.ok else 'FAIL'}  {c.seconds:6.1f}s  {(c.round + ': ' + c.name):<{width}}  {c.detail}")
        failed = sum(not c.ok for c in runner.checks)
        target.write_text(labtest.results_json(runner), encoding="utf-8")
        typer.echo(f"{len(runner.checks) - failed} passed, {failed} failed; results in {target}")
        if failed:
            raise typer.Exit(1)

    _run(body)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())