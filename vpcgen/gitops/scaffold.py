"""`vpcgen init`: a new site repository that validates and builds out of the box.

The site goes to SITE_DIR; the repository files (workflows, pre-commit, editor settings,
.gitignore, the JSON Schemas for offline editors) go to the repository root, the folder above
`sites/`. Existing files are never overwritten.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import jinja2

from .. import __version__
from ..errors import VpcgenError
from ..site.schema import KINDS, schema_text

SCHEMAS = ".vpcgen/schemas"
SITE_NAME = re.compile(r"^([a-z]|[a-z][a-z0-9-]{0,30}[a-z0-9])\Z")

# template -> path (site files relative to the site folder, repository files to its root)
SITE_FILES = {
    "site.yaml.j2": "site.yaml",
    "zone.yaml.j2": "zones/zone1.yaml",
    "vpc.yaml.j2": "vpcs/web.yaml",
    "acl-front.yaml.j2": "acls/front.yaml",
    "acl-back.yaml.j2": "acls/back.yaml",
    "known_hosts.j2": "known_hosts",
}
REPO_FILES = {
    "gitignore.j2": ".gitignore",
    "pre-commit-config.yaml.j2": ".pre-commit-config.yaml",
    "vscode-settings.json.j2": ".vscode/settings.json",
    "workflow-pr.yml.j2": ".github/workflows/vpcgen-pr.yml",
    "workflow-main.yml.j2": ".github/workflows/vpcgen-main.yml",
    "workflow-deploy.yml.j2": ".github/workflows/vpcgen-deploy.yml",
}


def _environment() -> jinja2.Environment:
    # GitHub expressions use {{ }}: these templates use [[ ]] instead
    return jinja2.Environment(loader=jinja2.PackageLoader("vpcgen.gitops", "templates"), undefined=jinja2.StrictUndefined,
                              variable_start_string="[[", variable_end_string="]]", block_start_string="[%",
                              block_end_string="%]", keep_trailing_newline=True, autoescape=False)


UNKNOWN_SOURCE = "vpcgen @ git+https://REPLACE-WITH-YOUR-VPCGEN-REPOSITORY@REPLACE-WITH-A-COMMIT"


def package_source() -> str | None:
    """pip's requirement for exactly the vpcgen that runs now: a git URL pinned to a commit, from
    pip's record of a git install (PEP 610) or from the clone vpcgen runs from; None when unknown."""
    try:
        info = json.loads(distribution("vpcgen").read_text("direct_url.json") or "null")
    except (PackageNotFoundError, ValueError):
        info = None
    if isinstance(info, dict) and isinstance(info.get("vcs_info"), dict) and info["vcs_info"].get("vcs") == "git":
        url, commit = info.get("url"), info["vcs_info"].get("commit_id")
        if isinstance(url, str) and isinstance(commit, str) and _REMOTE.match(url):
            return f"vpcgen @ git+{url}@{commit}"
    clone = Path(__file__).resolve().parents[2]
    if not (clone / "pyproject.toml").is_file():
        return None

    def git(*args: str) -> str:
        try:
            result = subprocess.run(["git", "-C", str(clone), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return ""
        return result.stdout.strip() if result.returncode == 0 else ""

    url, commit = git("remote", "get-url", "origin"), git("rev-parse", "HEAD")
    scp = re.match(r"^[\w.-]+@([\w.-]+):(.+)$", url)  # git@github.com:owner/vpcgen.git: https for CI
    if scp:
        url = f"https://{scp.group(1)}/{scp.group(2)}"
    if not (_REMOTE.match(url) and re.fullmatch(r"[0-9a-f]{40}", commit)):
        return None
    return f"vpcgen @ git+{url}@{commit}"


_REMOTE = re.compile(r"^(https|ssh)://[^\s\"'@]*?[^\s\"']*$")


def _workflow_note(path: Path, sites_dir: str) -> list[str]:
    """A kept workflow that would not build the new site is said, with what to do."""
    text = path.read_text(encoding="utf-8", errors="replace")
    m = re.search(r"^  SITES: (\S+)", text, re.M)
    if m and m.group(1) == sites_dir:
        return [f"{path} already builds every site under {sites_dir}/, this one included"]
    what = f"builds the sites under {m.group(1)}/" if m else "builds one site only (an older vpcgen wrote it)"
    return [f"warning: {path} {what}, not this one: delete .github/workflows/vpcgen-*.yml and run `vpcgen init` "
            f"for a new site, or set SITES: {sites_dir} in each (they build every site under it)"]


def repository_root(site_dir: Path) -> Path:
    site_dir = Path(site_dir)
    return site_dir.parent.parent if site_dir.parent.name == "sites" else site_dir.parent


def scaffold(site_dir) -> list[str]:
    site_dir = Path(site_dir)
    name = site_dir.name
    if not SITE_NAME.match(name):  # it is written into workflow files and shell lines as is
        raise VpcgenError(f"{site_dir}: a site folder's name is a site name: a single letter, or lower-case "
                          "letters, digits and '-', starting with a letter, at most 32 characters")
    if site_dir.exists() and any(site_dir.iterdir()):
        raise VpcgenError(f"{site_dir} exists and is not empty: vpcgen init only creates new sites")
    root = repository_root(site_dir)
    env = _environment()
    site_path = Path(os.path.relpath(site_dir, root)).as_posix()
    sites_dir = Path(os.path.relpath(site_dir.parent, root)).as_posix()
    source = package_source()
    context = {"name": name, "site_path": site_path, "version": __version__, "sites_dir": sites_dir,
               "sites_paths": "**" if sites_dir == "." else f"{sites_dir}/**", "package": source or UNKNOWN_SOURCE,
               "deploy": False}
    written, kept = [], []
    notes = []

    def write(path: Path, text: str) -> None:
        if path.exists():
            kept.append(str(path))
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(str(path))

    for template, rel in SITE_FILES.items():
        target = site_dir / rel
        schemas = Path(os.path.relpath(root / SCHEMAS, target.parent)).as_posix()
        write(target, env.get_template(template).render(context, schemas=schemas))
    for template, rel in REPO_FILES.items():
        target = root / rel
        if target.exists() and rel.startswith(".github/workflows/"):
            notes += _workflow_note(target, sites_dir)
        write(target, env.get_template(template).render(context, deploy=template == "workflow-deploy.yml.j2"))
    for kind in (*KINDS, "defs"):
        write(root / SCHEMAS / f"{kind}.schema.json", schema_text(kind))
    lines = [f"created site '{name}' in {site_dir} and {len(written)} files in all"]
    lines += [f"kept existing {k}" for k in kept]
    lines += notes
    wrote_workflows = any(rel.startswith(".github/workflows/") and str(root / rel) in written
                          for rel in REPO_FILES.values())
    if wrote_workflows:
        lines.append(f"the workflows build, check and diff every site under {sites_dir}/ (a later `vpcgen init "
                     f"{sites_dir}/<name>` needs no workflow change)")
    if not wrote_workflows:
        pass
    elif source is None:
        lines.append("warning: where this vpcgen comes from is not known (neither installed from a git URL nor run "
                     "from a clone with an https or ssh remote 'origin'): set VPCGEN_PACKAGE in "
                     ".github/workflows/vpcgen-*.yml to \"vpcgen @ git+https://<host>/<owner>/vpcgen@<commit>\" "
                     "(the workflows stop with an error until then)")
    elif written:
        lines.append(f"the workflows install {source}")
    lines.append(f"next: vpcgen build {site_dir}; pin the routers' host keys in {site_dir / 'known_hosts'}")
    return lines
