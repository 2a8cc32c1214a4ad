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
    rich_markup_mode=None,  # plain help: no "<bool>" type labels on flags
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
        both = sorted(exc.diagnostics + exc.warnings, key=_where)
        _fail([str(d) for d in both] + [_count(len(exc.diagnostics), len(exc.warnings))])
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


def _where(d) -> tuple:
    loc = d.location
    return (loc.file, loc.line, loc.column) if loc else ("", 0, 0), d.severity, d.code, d.message


def _count(errors: int, warnings: int) -> str:
    parts = [f"{errors} error{'s' if errors != 1 else ''}"] if errors else []
    parts += [f"{warnings} warning{'s' if warnings != 1 else ''}"] if warnings else []
    return ", ".join(parts)


def _warnings(warnings: list, strict: bool) -> None:
    """Print warnings (stderr); with --strict they fail the command like errors."""
    for w in warnings:
        typer.echo(str(w), err=True)
    if warnings and strict:
        _fail([f"{_count(0, len(warnings))}: failing because of --strict"])


STRICT_HELP = "Fail (exit 1) on warnings too: dead or surprising configuration."


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
def validate(site_dirs: list[Path] = typer.Argument(..., metavar="SITE_DIR...", help="Site folders (e.g. "
                                                  "sites/example), or files inside them (as pre-commit passes them)."),
             strict: bool = typer.Option(False, "--strict", help=STRICT_HELP)) -> None:
    """Check sites against the schemas and every semantic rule; print every error and warning."""
    from .api import validate_site
    from .errors import DiagnosticsError

    def body():
        problems, warnings = [], []
        for site_dir in dict.fromkeys(_site_of(p) for p in site_dirs):
            try:
                v = validate_site(site_dir)
            except DiagnosticsError as exc:
                problems += exc.diagnostics
                warnings += exc.warnings
                continue
            warnings += v.warnings
            typer.echo(f"{site_dir}: valid ({len(v.site.vpcs)} VPCs, "
                       f"{sum(len(x.routers) for x in v.site.vpcs.values())} routers"
                       f"{', ' + _count(0, len(v.warnings)) if v.warnings else ''})")
        if problems:
            raise DiagnosticsError(problems, warnings)
        _warnings(warnings, strict)

    _run(body)


@app.command()
def build(
    site_dir: Path = typer.Argument(..., metavar="SITE_DIR", help="The site folder, e.g. sites/example."),
    output: Path = typer.Option(Path("output"), "--output", "-o", metavar="DIR", help="Write DIR/<site>/."),
    locked: bool = typer.Option(False, "--locked", help="Fail instead of changing allocations.lock.yaml."),
    placeholder_secrets: bool = typer.Option(
        False, "--placeholder-secrets", help="Render fake secrets; the tree is marked not deployable."),
    strict: bool = typer.Option(False, "--strict", help=STRICT_HELP + " Nothing is written then."),
) -> None:
    """Validate, allocate and render one configuration tree per router."""
    from .site.schema import start_reading

    def body():
        # a large site's files are read by other processes while this one imports the rest of the build
        with start_reading(site_dir) as loading:
            from .api import BuildOptions, build_site, write_build
            options = BuildOptions(output=output, locked=locked, placeholder_secrets=placeholder_secrets)
            built = build_site(site_dir, options, loading)
        _warnings(built.warnings, strict)
        result = write_build(site_dir, built, options)
        names = ", ".join(result.routers[:8]) + (", ..." if len(result.routers) > 8 else "")
        typer.echo(f"built {result.output_dir} ({len(result.routers)} routers: {names})")
        if result.lock_changed:
            typer.echo(f"updated {Path(site_dir) / 'allocations.lock.yaml'}: commit it with the change")
        if placeholder_secrets:
            typer.echo("note: placeholder secrets: this tree is not deployable")
        if _kept is not None:  # a build leaves no thread, no connection, nothing to close
            _kept.append(built)

    _run(body)


@app.command()
def check(
    tree_dir: Path = typer.Argument(..., metavar="TREE_DIR", help="A built site, e.g. output/example."),
    router: Optional[list[str]] = typer.Option(None, "--router", metavar="NAME", help="Check only this router (repeatable)."),
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


# In the `vpcgen` process itself (``run``; tests run the app in theirs): what a command built, kept
# until the process ends at once, so that returning does not free it object by object either.
_kept: list | None = None


def run() -> None:
    """The `vpcgen` process (console script, `python -m vpcgen`): the app, then its exit. After a
    build, everything written and flushed, the process ends without freeing the millions of objects
    the build made one by one (0.16 s of a 1,000-VPC build) or tearing its modules down."""
    global _kept
    _kept = []
    try:
        app(prog_name="vpcgen")
        code = 0
    except SystemExit as exc:
        code = exc.code
    if not _kept:
        sys.exit(code)
    if not isinstance(code, int):  # None or a message, as sys.exit treats them
        if code is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # output that could not be written: the code Python's own exit gives then
        code = 120
    os._exit(code)



@app.command()
def deploy(
    tree_dir: Path = typer.Argument(..., metavar="TREE_DIR", help="A built site, e.g. output/example."),
    router: Optional[list[str]] = typer.Option(None, "--router", metavar="NAME", help="Deploy only this router (repeatable)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would change; change nothing."),
    parallel: int = typer.Option(1, "--parallel", min=1, max=256, metavar="N", help="VPCs deployed at the same time."),
    known_hosts: Optional[Path] = typer.Option(
        None, "--known-hosts", envvar="VPCGEN_KNOWN_HOSTS", metavar="FILE",
        help="Pinned host keys (default: TREE_DIR/known_hosts, copied from the site)."),
    identity: Optional[list[Path]] = typer.Option(None, "--identity", "-i", envvar="VPCGEN_IDENTITY", metavar="KEY",
                                                  help="SSH private key (repeatable); "
                                                  "the SSH agent and ~/.ssh keys are used too."),
    commands: Optional[Path] = typer.Option(None, "--commands", metavar="FILE", help="Service command overrides (YAML; "
                                            "default: the file VPCGEN_COMMANDS names)."),
    confirm_timeout: float = typer.Option(60.0, "--confirm-timeout", metavar="SECONDS", min=1.0, max=3600.0, help="Seconds after "
                                          "which a router restores its previous release by itself unless a new "
                                          "SSH session has confirmed the new one healthy."),
) -> None:
    """Ship built router trees over SSH: one atomic release per router, backup before master."""
    from .ops import overrides
    from .ops.deploy import DeployOptions, deploy_tree

    def body():
        options = DeployOptions(known_hosts=known_hosts or Path(tree_dir) / "known_hosts",
                                identity=[str(i) for i in identity or []], dry_run=dry_run, parallel=parallel,
                                confirm_timeout=confirm_timeout,
                                commands=overrides.load(commands))
        outcomes = deploy_tree(tree_dir, router, options,
                               lambda name, message: typer.echo(f"[{name}] {message}", err=True))
        width = max([len(o.router) for o in outcomes] + [6])
        typer.echo(f"{'router':<{width}}  {'result':<11}  {'time':>6}  detail")
        for o in outcomes:
            typer.echo(f"{o.router:<{width}}  {o.status:<11}  {o.seconds:5.1f}s  {o.detail}")
            if dry_run and o.status == "planned":
                typer.echo(f"{'':<{width}}    files: {', '.join(o.files) or 'none'}")
                typer.echo(f"{'':<{width}}    reload: {', '.join(o.services) or 'nothing'}")
                for path in o.secrets:  # the fact only: never a value, a sum or a part of one
                    typer.echo(f"{'':<{width}}    secret changed: {path} (<redacted>)")
                for line in o.diff:
                    typer.echo(line)
        counts = {s: sum(o.status == s for o in outcomes)
                  for s in ("changed", "skipped", "failed", "rolled back", "planned", "unchanged")}
        typer.echo(", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no routers")
        if counts["failed"] or counts["rolled back"]:
            raise typer.Exit(1)

    _run(body)



@app.command()
def rollback(
    tree_dir: Path = typer.Argument(..., help="The built site the router was deployed from, e.g. output/example."),
    router: str = typer.Option(..., "--router", metavar="NAME", help="The router to roll back."),
    to: Optional[str] = typer.Option(None, "--to", metavar="RELEASE", help="The release to make current (default: the previous one)."),
    known_hosts: Optional[Path] = typer.Option(
        None, "--known-hosts", metavar="FILE", envvar="VPCGEN_KNOWN_HOSTS",
        help="Pinned host keys (default: TREE_DIR/known_hosts, copied from the site)."),
    identity: Optional[list[Path]] = typer.Option(None, "--identity", "-i", metavar="KEY", envvar="VPCGEN_IDENTITY", help="SSH private key (repeatable)."),
    commands: Optional[Path] = typer.Option(None, "--commands", metavar="FILE", help="Service command overrides (YAML; "
                                            "default: the file VPCGEN_COMMANDS names)."),
    confirm_timeout: float = typer.Option(60.0, "--confirm-timeout", metavar="SECONDS", min=1.0, max=3600.0, help="Seconds after "
                                          "which the router goes back to the release it ran unless a new SSH "
                                          "session has confirmed the rollback healthy."),
) -> None:
    """Make the previous (or a named) release current again on a router, with deploy's checks, reloads,
    health checks and commit-confirm."""
    from .ops import overrides
    from .ops.deploy import DeployOptions, rollback_router

    def body():
        options = DeployOptions(known_hosts=known_hosts or Path(tree_dir) / "known_hosts",
                                identity=[str(i) for i in identity or []], confirm_timeout=confirm_timeout,
                                commands=overrides.load(commands))
        o = rollback_router(tree_dir, router, to, options,
                            lambda name, message: typer.echo(f"[{name}] {message}", err=True))
        typer.echo(f"{o.router}  {o.status}  {o.seconds:5.1f}s  {o.detail}")
        if o.status not in ("changed", "skipped"):
            raise typer.Exit(1)

    _run(body)


class StatusFormat(str, Enum):
    text = "text"
    json = "json"


@app.command()
def status(
    tree_dir: Path = typer.Argument(..., help="The built site the routers were deployed from, e.g. output/example."),
    router: Optional[list[str]] = typer.Option(None, "--router", metavar="NAME", help="Only this router (repeatable)."),
    format: StatusFormat = typer.Option(StatusFormat.text, "--format", help="text (a table and one line per "
                                        "finding) or json (for monitoring)."),
    known_hosts: Optional[Path] = typer.Option(
        None, "--known-hosts", metavar="FILE", envvar="VPCGEN_KNOWN_HOSTS",
        help="Pinned host keys (default: TREE_DIR/known_hosts, copied from the site)."),
    identity: Optional[list[Path]] = typer.Option(None, "--identity", "-i", metavar="KEY", envvar="VPCGEN_IDENTITY", help="SSH private key (repeatable)."),
    commands: Optional[Path] = typer.Option(None, "--commands", metavar="FILE", help="Service and status command overrides "
                                            "(YAML; default: the file VPCGEN_COMMANDS names)."),
    parallel: int = typer.Option(8, "--parallel", metavar="N", min=1, max=256, help="Routers asked at the same time."),
) -> None:
    """The live state of every router against the tree: release, files, firewall, VRRP (one master per
    pair), conntrackd, services, load-balancer members, VPN SAs, OSPF. Exit 1 on any finding."""
    import json as json_module

    from .ops import overrides
    from .ops.status import StatusOptions, render_text, status_tree

    def body():
        options = StatusOptions(known_hosts=known_hosts or Path(tree_dir) / "known_hosts",
                                identity=[str(i) for i in identity or []], parallel=parallel,
                                commands=overrides.load(commands))
        report = status_tree(tree_dir, router or None, options)
        if format == StatusFormat.json:
            typer.echo(json_module.dumps(report.as_json(), indent=2, sort_keys=True))
        else:
            typer.echo(render_text(report), nl=False)
        if report.findings:
            raise typer.Exit(1)

    _run(body)


@app.command()
def switchover(
    tree_dir: Path = typer.Argument(..., help="The built site the pair was deployed from, e.g. output/example."),
    vpc: str = typer.Option(..., "--vpc", metavar="NAME", help="The redundant VPC whose backup takes over."),
    timeout: float = typer.Option(30.0, "--timeout", metavar="SECONDS", min=1.0, max=600.0, help="Seconds for the backup to be "
                                  "the only master."),
    known_hosts: Optional[Path] = typer.Option(
        None, "--known-hosts", metavar="FILE", envvar="VPCGEN_KNOWN_HOSTS",
        help="Pinned host keys (default: TREE_DIR/known_hosts, copied from the site)."),
    identity: Optional[list[Path]] = typer.Option(None, "--identity", "-i", metavar="KEY", envvar="VPCGEN_IDENTITY", help="SSH private key (repeatable)."),
    commands: Optional[Path] = typer.Option(None, "--commands", metavar="FILE", help="Service and status command overrides "
                                            "(YAML; default: the file VPCGEN_COMMANDS names)."),
) -> None:
    """Planned handover of a pair's mastership to its backup (maintenance), after checking that the
    backup is healthy and in sync; returns when exactly one router is master again."""
    from .ops import overrides
    from .ops.switchover import SwitchoverOptions, switchover as run_switchover

    def body():
        options = SwitchoverOptions(known_hosts=known_hosts or Path(tree_dir) / "known_hosts",
                                    identity=[str(i) for i in identity or []], timeout=timeout,
                                    commands=overrides.load(commands))
        result = run_switchover(tree_dir, vpc, options, lambda m: typer.echo(m, err=True))
        typer.echo(f"{result.vpc}: {'switched over' if result.ok else 'FAILED'}: {result.detail}")
        if not result.ok:
            raise typer.Exit(1)

    _run(body)


class DiffFormat(str, Enum):
    text = "text"
    markdown = "markdown"
    json = "json"


@app.command()
def diff(
    site_dir: Path = typer.Argument(..., metavar="SITE_DIR", help="The site folder, e.g. sites/example (inside a git repository)."),
    base: str = typer.Option(..., "--base", metavar="GIT_REF", help="The git revision to compare with, e.g. origin/main."),
    format: DiffFormat = typer.Option(DiffFormat.text, "--format", help="text, markdown for a PR comment, or json "
                                      "(\"reachability\": the flows the change newly allows or denies)."),
    exit_code: bool = typer.Option(False, "--exit-code", help="Exit 1 when anything changes (like git diff)."),
) -> None:
    """Build the base revision and the working tree, and show which flows the change newly allows or
    denies, then what changes on which router."""
    from .gitops.diff import diff_site, render_json, render_markdown, render_text

    def body():
        report = diff_site(site_dir, base)
        render = {DiffFormat.markdown: render_markdown, DiffFormat.json: render_json}.get(format, render_text)
        typer.echo(render(report), nl=False)
        if exit_code and report.changed:
            raise typer.Exit(1)

    _run(body)



class GraphFormat(str, Enum):
    mermaid = "mermaid"
    dot = "dot"


@app.command()
def graph(
    site_dir: Path = typer.Argument(..., metavar="SITE_DIR", help="The site folder, e.g. sites/example."),
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
    kind: Optional[str] = typer.Argument(None, metavar="KIND", help="site, zone, vpc, acl, lock or defs."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", metavar="DIR", help="Write every schema into this folder."),
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
    site_dir: Path = typer.Argument(..., metavar="SITE_DIR", help="The new site folder, e.g. sites/prod (the repository root is the "
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


@lab_app.command("run", context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True})
def lab_run(
    tree_dir: Path = typer.Argument(..., help="The built site the lab was started from."),
    command: list[str] = typer.Argument(..., help="The command and its arguments (after --)."),
) -> None:
    """Run COMMAND on the running lab's management network, where every router's mgmt address
    answers SSH with the lab's key and pinned host keys (vpcgen deploy, status, switchover,
    rollback and ssh work against the lab as against real routers)."""
    from .lab import mgmt

    def body():
        code = mgmt.run(tree_dir, command[1:] if command[:1] == ["--"] else command)
        if code:
            raise typer.Exit(code)

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
                                               "services, reach, vxlan, guest, failover, ha, daytwo, deploy, convert (repeatable)."),
    results: Optional[Path] = typer.Option(None, "--results", help="Where to write the results (JSON); by "
                                           "default TREE_DIR.lab-results.json, next to the tree."),
    site: Optional[Path] = typer.Option(None, "--site", metavar="SITE_DIR", help="The site the tree was built "
                                        "from, for the rounds that deploy a changed copy of it (default: "
                                        "sites/<site name> when present)."),
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
        runner = labtest.run(tree_dir, rounds, progress=lambda m: typer.echo(m, err=True), site_dir=site)
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
    run()