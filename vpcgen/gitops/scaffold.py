"""`vpcgen init`: a new site repository that validates and builds out of the box.

The site goes to SITE_DIR; the repository files (workflows, pre-commit, editor settings,
.gitignore, the JSON Schemas for offline editors) go to the repository root, the folder above
`sites/`. Existing files are never overwritten.
"""

from __future__ import annotations

import os
import re
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
    context = {"name": name, "site_path": site_path, "version": __version__}
    written, kept = [], []

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
        write(root / rel, env.get_template(template).render(context))
    for kind in (*KINDS, "defs"):
        write(root / SCHEMAS / f"{kind}.schema.json", schema_text(kind))
    lines = [f"created site '{name}' in {site_dir} and {len(written)} files in all"]
    lines += [f"kept existing {k}" for k in kept]
    lines.append(f"next: vpcgen build {site_dir}; pin the routers' host keys in {site_dir / 'known_hosts'}")
    return lines
