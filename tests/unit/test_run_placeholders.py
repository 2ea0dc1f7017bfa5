"""${{inputs.NAME}} / ${{outputs.NAME}} in training arguments (no Docker needed)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ml_env_tasks.errors import UsageError
from ml_env_tasks.runs.placeholders import expand


def test_inputs_and_outputs_become_their_container_paths() -> None:
    args, outs = expand(
        ["--data", "${{inputs.data}}", "--model=${{ outputs.model }}", "--x", "${{outputs.model}}/best", "plain"],
        ["data", "other"],
    )
    assert args == [
        "--data",
        "/mnt/inputs/data",
        "--model=/mnt/outputs/model",
        "--x",
        "/mnt/outputs/model/best",
        "plain",
    ]
    assert outs == ["model"]


@pytest.mark.parametrize(
    "arg,msg",
    [
        ("${{inputs.dta}}", r"\$\{\{inputs.dta\}\}: no input named 'dta' \(inputs: data\)"),
        ("${{parent.inputs.data}}", r"placeholder \$\{\{parent.inputs.data\}\} is not"),
        ("${{inputs.1x}}", "is not"),
        ("${{inputs.a b}}", "is not"),
        ("${{}}", "is not"),
        ("--data=${{inputs.data", "without its closing"),
        ("${{inputs.data}}${{", "without its closing"),
    ],
)
def test_anything_else_is_one_usage_error_naming_it(arg: str, msg: str) -> None:
    with pytest.raises(UsageError, match=msg) as e:
        expand(["--a", arg], ["data"])
    assert e.value.exit_code == 2


def test_no_input_at_all_says_so() -> None:
    with pytest.raises(UsageError, match=r"\(inputs: none\)") as e:
        expand(["${{inputs.data}}"], [])
    assert "--input data=PATH" in (e.value.hint or "")


@given(st.lists(st.text(max_size=30).filter(lambda t: "${{" not in t), max_size=5))
def test_arguments_without_placeholders_pass_unchanged(args: list[str]) -> None:
    assert expand(args, ["data"]) == (args, [])


@given(st.text(max_size=40))
def test_a_value_is_never_expanded_again(tail: str) -> None:
    """One pass, fixed values: what follows a placeholder is kept as it is, or refused whole."""
    arg = "${{inputs.data}}" + tail
    try:
        (out,), _ = expand([arg], ["data"])
    except UsageError:
        assert "${{" in tail
        return
    assert "${{" not in out
    if "${{" not in tail:
        assert out == "/mnt/inputs/data" + tail
