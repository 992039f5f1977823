"""The package a user installs: extras, bounds, licence files, ``--version``, help on every argument."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

from otu import registry
from otu.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
LLM_STACK = ("deepspeed", "transformers", "accelerate", "tokenizers", "datasets", "rouge-score", "peft")


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~ ]", requirement, maxsplit=1)[0].lower()


def test_llm_stack_is_an_extra_and_every_requirement_has_an_upper_bound():
    core = {_name(r) for r in PYPROJECT["dependencies"]}
    extras = PYPROJECT["optional-dependencies"]
    assert not core & set(LLM_STACK) and "tqdm" not in core
    assert {_name(r) for r in extras["llm"]} == set(LLM_STACK)
    assert set(extras["all"]) == {"otu[llm,cluster]"}
    for req in [*PYPROJECT["dependencies"], *extras["llm"], *extras["cluster"], *extras["dev"]]:
        assert "<" in req or "==" in req, f"{req}: no upper bound"
    assert '-e ".[all,dev]"' in (REPO / "Makefile").read_text()


def test_licence_and_citation_files():
    assert "Apache License" in (REPO / "LICENSE").read_text() and PYPROJECT["license"] == "Apache-2.0"
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    ids = {i["value"] for ref in cff["references"] for i in ref.get("identifiers", [])}
    assert ids == {"arXiv:2406.12329", "arXiv:2409.14747", "arXiv:2502.05684", "arXiv:2603.16489"}


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and re.fullmatch(r"otu \S+\n", capsys.readouterr().out)


def _actions(parser: argparse.ArgumentParser, path: str = "otu"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction | argparse._VersionAction):
            yield path, action


def test_every_argument_has_help():
    missing = [f"{path} {a.option_strings or a.dest}" for path, a in _actions(build_parser()) if not a.help]
    assert not missing


def test_report_refuses_flags_it_would_ignore(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["report", str(tmp_path), "--set", "seed=1"])
    assert exit_.value.code == 2 and "--set" in capsys.readouterr().err


def test_cli_imports_without_the_llm_stack():
    code = (
        "import sys, otu.cli; print(sorted(m for m in ('deepspeed', 'transformers', 'datasets') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_llm_run_without_the_extra_names_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(registry.EXTRAS, "llm", ("transformers", "otu_no_such_module"))
    out = tmp_path / "run"
    code = main(
        [
            "run",
            str(REPO / "sweeps/experiments/optout_tiny.yaml"),
            "--out",
            str(out),
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert "otu: error: the llm family needs the 'llm' extra: pip install 'otu[llm]'" in err
