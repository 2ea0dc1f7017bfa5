"""Smoke-test cases: parsing errors name the line; checks say expected vs got."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ml_env_tasks.errors import SpecError
from ml_env_tasks.serve.smoke import check, load_cases


def cases(tmp_path: Path, *lines: str) -> Path:
    f = tmp_path / "cases.jsonl"
    f.write_text("\n".join(lines) + "\n")
    return f


@pytest.mark.parametrize(
    "line,msg",
    [
        ("not json", "not a JSON object"),
        ("[1, 2]", "must be a JSON object"),
        ('{"expect_status": 200}', "exactly one of request, request_text"),
        ('{"request": {}, "request_text": "x"}', "exactly one of request, request_text"),
        ('{"request": {}, "expect_json": 1, "expect_subset": {}}', "at most one of"),
        ('{"request": {}, "expect_status": "200"}', "expect_status must be an integer"),
        ('{"request": {}, "tolerance": -1}', "tolerance"),
        ('{"request": {}, "expect_schema": {"type": 12}}', "not a valid JSON Schema"),
        ('{"request": {}, "colour": "red"}', "unknown keys"),
        ('{"request_text": 5}', "request_text must be a string"),
    ],
)
def test_bad_case_names_the_line(tmp_path: Path, line: str, msg: str) -> None:
    f = cases(tmp_path, '{"request": {"a": 1}}', line)
    with pytest.raises(SpecError, match=msg) as exc:
        load_cases(f)
    assert exc.value.line == 2 and exc.value.file == str(f)


def test_empty_and_missing(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no cases"):
        load_cases(cases(tmp_path, "# only a comment", ""))
    with pytest.raises(SpecError, match="not found"):
        load_cases(tmp_path / "nope.jsonl")


def test_defaults_and_bodies(tmp_path: Path) -> None:
    got = load_cases(
        cases(tmp_path, '{"request": {"x": [1]}}', '{"name": "raw", "request_text": "abc", "expect_status": 400}')
    )
    assert got[0].name == "case 1 (line 1)" and got[0].expect_status == 200 and json.loads(got[0].body) == {"x": [1]}
    assert got[1].name == "raw" and got[1].body == b"abc" and got[1].expect_status == 400


def one(tmp_path: Path, obj: dict):
    return load_cases(cases(tmp_path, json.dumps(obj)))[0]


def test_exact_with_tolerance(tmp_path: Path) -> None:
    c = one(tmp_path, {"request": {}, "expect_json": {"p": [0.5, 2]}, "tolerance": 0.01})
    assert check(c, 200, '{"p": [0.505, 2]}') is None
    assert check(c, 200, '{"p": [0.52, 2]}') == "$.p[0]: expected 0.5, got 0.52 (tolerance 0.01)"
    exact = one(tmp_path, {"request": {}, "expect_json": {"p": [1, 2]}})
    assert check(exact, 200, '{"p": [1, 3]}') == "$.p[1]: expected 2, got 3"
    assert check(exact, 200, '{"p": [1]}') == "$.p: expected 2 items, got 1"
    assert check(exact, 500, '{"message": "boom"}').startswith("expected status 200, got 500")
    assert check(exact, 200, "not json").startswith("the response is not JSON")


def test_subset_and_schema(tmp_path: Path) -> None:
    sub = one(tmp_path, {"request": {}, "expect_subset": {"a": {"b": 1}}})
    assert check(sub, 200, '{"a": {"b": 1, "c": 2}, "d": 3}') is None
    assert check(sub, 200, '{"a": {"c": 2}}') == "$.a: missing key 'b'"
    sch = one(
        tmp_path,
        {
            "request": {},
            "expect_schema": {"type": "object", "properties": {"p": {"type": "array", "items": {"type": "integer"}}}},
        },
    )
    assert check(sch, 200, '{"p": [1, 2]}') is None
    assert check(sch, 200, '{"p": [1, "x"]}') == "$['p'][1]: 'x' is not of type 'integer'"
