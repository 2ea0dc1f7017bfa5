"""Static checks of the workflows: every local action exists and is called with inputs it
declares (required ones given); every steps/jobs/inputs reference resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
REF = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def action(uses: str) -> dict:
    return yaml.safe_load((ROOT / uses.removeprefix("./") / "action.yml").read_text())


def test_there_are_workflows() -> None:
    names = {p.name for p in WORKFLOWS}
    assert {"ci.yml", "ml-env-pipeline.yml"} <= names


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_workflow_references_resolve(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    on = doc.get(True) or doc.get("on")  # YAML reads the key `on` as True
    call = (on or {}).get("workflow_call") if isinstance(on, dict) else None
    declared_inputs = set((call or {}).get("inputs") or {})
    for job_id, job in doc["jobs"].items():
        if "uses" in job:
            continue
        seen: dict[str, set[str] | None] = {}
        for step in job["steps"]:
            text = yaml.safe_dump(step)
            for expr in REF.findall(text):
                for m in re.finditer(r"steps\.([\w-]+)\.outputs\.([\w-]+)", expr):
                    sid, out = m.groups()
                    assert sid in seen, f"{path.name}:{job_id}: steps.{sid} used before it runs"
                    if seen[sid] is not None:
                        assert out in seen[sid], f"{path.name}:{job_id}: steps.{sid} has no output {out}"
                for m in re.finditer(r"\binputs\.([\w-]+)", expr):
                    assert m.group(1) in declared_inputs, f"{path.name}: unknown input {m.group(1)}"
            uses = step.get("uses", "")
            if uses.startswith("./"):
                a = action(uses)
                given = set(step.get("with") or {})
                assert given <= set(a["inputs"]), (
                    f"{path.name}:{job_id}: {uses} has no inputs {given - set(a['inputs'])}"
                )
                required = {k for k, v in a["inputs"].items() if v.get("required") and "default" not in v}
                assert required <= given, f"{path.name}:{job_id}: {uses} needs {required - given}"
                outputs: set[str] | None = set(a.get("outputs") or {})
            else:
                outputs = None  # a step of its own or a marketplace action: outputs not checked
            if "id" in step:
                seen[step["id"]] = outputs
        for name, value in (job.get("outputs") or {}).items():
            for m in re.finditer(r"steps\.([\w-]+)\.outputs\.([\w-]+)", value):
                assert m.group(1) in seen, f"{path.name}:{job_id}: output {name} names no step"
    if call:
        for name, out in (call.get("outputs") or {}).items():
            m = re.search(r"jobs\.([\w-]+)\.outputs\.([\w-]+)", out["value"])
            assert m and m.group(2) in (doc["jobs"][m.group(1)].get("outputs") or {}), f"workflow output {name}"
