"""Job summaries and annotations with hostile text in them: a run's metrics.json, a cases file
and a server's answers are untrusted, and nothing of theirs may become markup, a line break, a
workflow command or an escape sequence."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ml_env_tasks.commands import common
from ml_env_tasks.fronts import gha

HOSTILE = [
    "loss\r### Injected heading",
    "acc\n## Another\n",
    "x\r\n![pixel](https://evil.example/p.png)",
    "<img src=https://evil.example/p.png>",
    "<script>alert(1)</script>",
    "[click](https://evil.example)",
    "`code` | ``more`` | ```",
    "**bold** _em_ ~~s~~ @someone #1",
    "line\u2028sep\u2029para\x85nel",
    "bidi\u202eevil\u2066",
    "esc\x1b[2Kgone\x00nul\x7fdel",
    "https://evil.example/autolink www.evil.example",
]


def rendered_lines(markdown: str) -> list[str]:
    """The lines a markdown renderer sees (CR, LF, CRLF and the Unicode line breaks)."""
    return re.split(r"\r\n|[\r\n\u2028\u2029\x85\x0b\x0c]", markdown)


def assert_plain(markdown: str, rows: int) -> None:
    lines = [x for x in rendered_lines(markdown) if x.strip()]
    headings = [x for x in lines if x.lstrip().startswith("#")]
    assert len(headings) == 1, headings  # the summary's own
    table = [x for x in lines if x.startswith("|")]
    prose = [x for x in lines if not x.startswith("|") and x not in headings]
    assert len(prose) == 1, prose  # the summary's own line under its heading; every other line is the tables'
    for x in lines:
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e\u2066]", x), x
        assert "<img" not in x.lower() and "<script" not in x.lower() and "](" not in x, x
        assert not re.search(r"(?<!\\)!\[", x), x
    assert sum(1 for x in table if x.startswith("| ") and not x.startswith("|---")) >= rows


def unescaped_pipes(line: str) -> int:
    return len(re.findall(r"(?<!\\)\|", line))


@pytest.fixture
def summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    f = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(f))
    monkeypatch.setenv("GITHUB_OUTPUT", str(tmp_path / "output"))
    return f


def fake_train(monkeypatch: pytest.MonkeyPatch, metrics: dict[str, Any], command: list[str]) -> None:
    """The train action with its inputs set and the run itself replaced by a result that carries
    hostile metrics (what the summary renders is all this test is about)."""
    import ml_env_tasks.runs as runs

    for k, v in {"INPUT_ENV": "e.toml", "INPUT_SOURCE": ".", "INPUT_SCRIPT": "train.py"}.items():
        monkeypatch.setenv(k, v)
    record = SimpleNamespace(
        metrics=metrics, command=command, reason="boom\r::warning::fake%0A", environment=SimpleNamespace(image="r/e:1"),
        source=SimpleNamespace(snapshot_hash="0" * 64, files=3),
        to_dict=lambda: {},
    )  # fmt: skip
    result = SimpleNamespace(run_id="run-1", status="failed", exit_code=1, outputs=Path("runs/run-1/outputs"),
                             cli_exit_code=1, record=record)  # fmt: skip
    monkeypatch.setattr(runs, "train", lambda opts, on_line, info, runner=None, detach=False: result)


def test_metric_names_and_values_cannot_inject_markdown(
    summary: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics: dict[str, Any] = {name: value for name, value in zip(HOSTILE, reversed(HOSTILE), strict=True)}
    fake_train(monkeypatch, metrics, ["python", "train.py", "--tag", "`x`\r# H"])
    assert gha.run_action("train") == 1
    md = summary.read_text(encoding="utf-8")
    assert_plain(md, rows=len(HOSTILE))
    rows = [x for x in rendered_lines(md) if x.startswith("| ") and x.count("|") and "metric" not in x]
    metric_rows = rows[-len(HOSTILE) :]
    assert all(unescaped_pipes(x) == 3 for x in metric_rows), metric_rows  # two cells each, as many rows
    # the error annotation: one line, the run's reason cannot start a command of its own
    out = capsys.readouterr().out
    errors = [x for x in out.splitlines() if x.startswith("::error")]
    assert len(errors) == 1 and "%0D::warning::fake%250A" in errors[0]
    assert not [x for x in out.splitlines() if x.startswith("::warning")]


def test_a_metrics_table_is_bounded(summary: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_train(monkeypatch, {f"m{i}": i for i in range(common.MAX_ROWS + 50)}, ["python", "train.py"])
    gha.run_action("train")
    md = summary.read_text(encoding="utf-8")
    assert len(re.findall(r"\n\| m\d+ \|", md)) == common.MAX_ROWS and "50 more" in md


@pytest.mark.parametrize("text", HOSTILE)
def test_cell_is_plain_text_on_one_line(text: str) -> None:
    cell = common.cell(text)
    assert len(rendered_lines(cell)) == 1
    assert unescaped_pipes(cell) == 0
    assert "<" not in cell and ">" not in cell and not re.search(r"(?<!\\)[\[\]`*_#!]", cell)


@pytest.mark.parametrize("text", HOSTILE)
def test_code_span_cannot_be_closed_early(text: str) -> None:
    span = common.code(text)
    assert len(rendered_lines(span)) == 1 and unescaped_pipes(span) == 0
    fence = re.match("`+", span)
    assert fence and fence.group() not in span[len(fence.group()) : -len(fence.group())]


def test_annotation_message_and_properties_escape_like_the_toolkit(capsys: pytest.CaptureFixture[str]) -> None:
    gha.command("error", "50%\r\nx\x1b[2K::y", file="a:b,c%\r\n.toml", title="t\x1bz")
    out = capsys.readouterr().out
    assert out == "::error file=a%3Ab%2Cc%25%0D%0A.toml,title=t\\x1bz::50%25%0D%0Ax\\x1b[2K::y\n"
    gha.mask("se\x1bcret")  # a secret is masked as it is, its bytes unchanged
    assert capsys.readouterr().out == "::add-mask::se\x1bcret\n"


def test_smoke_summary_rows_are_plain(summary: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import ml_env_tasks.serve.smoke as smoke

    cases = [
        SimpleNamespace(passed=False, name=name, status=500, latencies_ms=[1.0], message=msg, line=i + 1)
        for i, (name, msg) in enumerate(zip(HOSTILE, reversed(HOSTILE), strict=True))
    ]
    report = SimpleNamespace(cases=cases, passed=0, failed=len(cases), image="img`|x", ready_s=0.1, p50_ms=1.0,
                             p95_ms=1.0, max_ms=1.0, logs_tail="", to_json=lambda: {})  # fmt: skip
    for k, v in {"INPUT_ENV": "e", "INPUT_CASES": str(tmp_path / "c.jsonl"), "INPUT_REPORT_DIR": str(tmp_path),
                 "INPUT_NO_RECORD": "true"}.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(smoke, "run_smoke_test", lambda *a, **k: report)
    monkeypatch.setattr(smoke, "write_reports", lambda *a: (tmp_path / "r.json", tmp_path / "r.xml"))
    assert gha.run_action("smoke-test") == 1
    md = summary.read_text(encoding="utf-8")
    assert_plain(md, rows=len(HOSTILE))
    rows = [x for x in rendered_lines(md) if x.startswith("| ❌")]
    assert len(rows) == len(HOSTILE) and all(unescaped_pipes(x) == 6 for x in rows), rows
