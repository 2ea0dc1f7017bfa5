"""Static checks of the workflows: every local action exists and is called with inputs it
declares (required ones given); every steps/jobs/inputs reference resolves; the reusable workflow
runs its own repository's actions, never the caller's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
REF = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
SELF = "./.ml-env-tasks/"  # where the reusable workflow checks out its own repository


def action(uses: str) -> dict:
    rel = uses.removeprefix(SELF) if uses.startswith(SELF) else uses.removeprefix("./")
    return yaml.safe_load((ROOT / rel / "action.yml").read_text())


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


def test_the_reusable_workflow_runs_its_own_actions_at_its_own_commit() -> None:
    """Called from another repository, `./ci/github/...` would be the caller's checkout: every job
    checks out this workflow's repository at the commit the caller's uses: line resolved to (the
    job context's workflow_repository/workflow_sha; on hosts without them, the caller's inputs)
    into .ml-env-tasks/ before it runs an action from there, and nothing runs the caller's files."""
    doc = yaml.safe_load((ROOT / ".github/workflows/ml-env-pipeline.yml").read_text())
    text = (ROOT / ".github/workflows/ml-env-pipeline.yml").read_text()
    assert "./ci/github" not in text and " ci/github/" not in text  # the caller's files, by path
    for job_id, job in doc["jobs"].items():
        steps = job["steps"]
        local = [i for i, s in enumerate(steps) if str(s.get("uses", "")).startswith("./")]
        assert local and all(steps[i]["uses"].startswith(SELF) for i in local), job_id
        [own] = [i for i, s in enumerate(steps) if (s.get("with") or {}).get("path") == ".ml-env-tasks"]
        assert own < min(local), f"{job_id}: an action runs before its checkout"
        w = steps[own]["with"]
        assert steps[own]["uses"].startswith("actions/checkout@")
        assert w["repository"] == "${{ job.workflow_repository || inputs.ml-env-repository || github.repository }}"
        assert w["ref"] == "${{ job.workflow_sha || inputs.ml-env-ref || github.sha }}"
        assert w["persist-credentials"] is False  # no token left in a folder a run could snapshot


def test_the_readme_calls_the_reusable_workflow_with_inputs_it_declares() -> None:
    text = (ROOT / "README.md").read_text()
    [block] = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "ml-env-pipeline.yml@" in b]
    [job] = yaml.safe_load(block)["jobs"].values()
    assert job["uses"].startswith("<owner>/ml_env_tasks/.github/workflows/ml-env-pipeline.yml@")
    doc = yaml.safe_load((ROOT / ".github/workflows/ml-env-pipeline.yml").read_text())
    declared = doc[True]["workflow_call"]["inputs"]
    assert set(job["with"]) <= set(declared), set(job["with"]) - set(declared)
