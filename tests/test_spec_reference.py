"""The spec reference: read from the pydantic models, printed by ``otu spec``, kept in docs."""

from __future__ import annotations

from pathlib import Path

from otu.cli import main
from otu.registry import family_spec, known_families
from otu.spec_reference import DOC_PATH, family_blocks, markdown

REPO = Path(__file__).resolve().parents[1]


def test_docs_spec_reference_is_generated_from_the_models():
    assert (REPO / DOC_PATH).read_text() == markdown(), (
        "docs/spec-reference.md drifted: run `python -m otu.spec_reference > docs/spec-reference.md`"
    )


def test_every_method_and_field_is_listed_with_default_and_bounds():
    for family in known_families():
        blocks = {b.title: b for b in family_blocks(family)}
        for name, row in family_spec(family).methods.items():
            model = row.spec
            listed = {k.key for k in blocks[f"method: {name}"].keys}
            assert {f"method.{f}" for f in model.model_fields} <= listed
    dlfd = {k.key: k for k in family_blocks("vision", "dlfd")[-1].keys}
    alpha = dlfd["method.alpha"]
    assert (alpha.type, alpha.default, alpha.bounds) == ("float", "0.4", "> 0")
    assert "perturbation step size" in alpha.description
    momentum = dlfd["method.momentum"]
    assert momentum.bounds == "≥ 0, < 1"
    # attribute docstrings reach the same place as Field(description=...)
    data = {k.key: k for k in family_blocks("vision")[0].keys}
    assert "digits" in data["task.data.source"].description


def test_otu_spec_prints_keys_and_names_a_bad_method(capsys):
    assert main(["spec", "tabular", "barycenter"]) == 0
    out = capsys.readouterr().out
    assert "method.t" in out and "compute.workers" in out and "marginal" not in out.split("method: barycenter")[1]
    assert main(["spec", "vision", "dlfx"]) == 2
    err = capsys.readouterr().err
    assert "method" in err and "'dlfx'" in err and "dlfd" in err


def test_otu_spec_piped_to_grep_finds_every_key_whole():
    """Piped (not a terminal), ``otu spec`` prints one Markdown row per key, so ``| grep KEY`` finds it."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "otu.cli", "spec", "llm", "optout"], capture_output=True, text=True, check=True
    ).stdout
    keys = [k.key for block in family_blocks("llm", "optout") for k in block.keys]
    assert "method.reg_weight" in keys
    rows = out.splitlines()
    for key in keys:
        assert any(row.startswith(f"| `{key}` |") for row in rows), key
