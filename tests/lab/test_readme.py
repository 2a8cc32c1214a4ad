"""The README's lab section says what the lab commands take."""

from __future__ import annotations

import re

from conftest import ROOT, run_cli


def test_the_readme_names_the_lab_options_each_command_takes():
    text = (ROOT / "README.md").read_text()
    lab = text[text.index("## Lab"):text.index("## How checks work")]
    assert "--round" in lab and "--results" in lab
    assert not re.search(r"lab (test|down)[^\n|]*--vpc", text)  # test and down take no --vpc
    for command, present, absent in (("test", ["--round", "--results"], ["--vpc"]), ("down", [], ["--vpc"]),
                                     ("up", ["--vpc"], [])):
        code, out, _ = run_cli("lab", command, "--help")
        assert code == 0
        assert all(o in out for o in present) and not any(o in out for o in absent), (command, out)


def test_results_default_next_to_the_tree(tmp_path):
    from vpcgen.lab.run import results_path
    assert results_path(tmp_path / "out/example") == tmp_path / "out/example.lab-results.json"
