"""Training runs against the real engine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from python_on_whales import docker

from ml_env_tasks import spec
from ml_env_tasks.build import build
from ml_env_tasks.runs import RunOptions, train
from ml_env_tasks.spec.hashing import env_hash

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parents[2]

PLAIN = 'name = "pyplain"\n[base]\nimage = "{base}"\n[env]\nPLAIN = "1"\n'


def leftover_containers() -> list[str]:
    """Run containers of this test's runs (the workspace is the working directory; other sessions
    sharing the engine have runs of their own, which are not this test's business)."""
    mine = {p.name for p in Path.cwd().glob("runs/*")} | {p.name for p in Path.cwd().glob("*/runs/*")}
    found = docker.container.list(all=True, filters=[("label", "ml-env.run")])
    return [c.name for c in found if c.config.labels.get("ml-env.run") in mine]


@pytest.fixture
def env_file(ws) -> Path:
    return ws.spec(PLAIN.format(base=ws.lab["base_image_python"]), name="plain.toml")


@pytest.fixture
def src(ws) -> Path:
    d = ws.dir / "src"
    d.mkdir()
    return d


def opts(ws, env_file: Path, src: Path, script: str, **kw) -> RunOptions:
    return RunOptions(
        environment=str(env_file), source=src, script=script, runs_dir=ws.dir / "runs", build=ws.opts(), **kw
    )


def quiet(*_a) -> None:
    pass


def train_cmd(ws, env_file: Path, src: Path, script: str) -> list[str]:
    """The `ml-env train` command line for a script in this workspace."""
    return [sys.executable, "-m", "ml_env_tasks", "train", "--env", str(env_file), "--source", str(src),
            "--script", script, "--runs-dir", str(ws.dir / "runs"), *ws.cli_args()]  # fmt: skip


def test_run_with_outputs_inputs_metrics(ws, env_file: Path, src: Path) -> None:
    (src / "job.py").write_text(
        "import json, os, sys, pathlib\n"
        "data = pathlib.Path(os.environ['ML_ENV_INPUT_DATA'])\n"
        "rows = (data / 'rows.csv').read_text().splitlines()\n"
        "out = pathlib.Path(os.environ['ML_ENV_OUTPUT_DIR'])\n"
        "(out / 'model.txt').write_text('rows=%d args=%s' % (len(rows), sys.argv[1:]))\n"
        "(out / 'metrics.json').write_text(json.dumps({'loss': 0.25}))\n"
        "print('ML_ENV_METRIC accuracy=0.75')\n"
        "print('PLAIN', os.environ['PLAIN'], 'MODE', os.environ['MODE'])\n"
    )
    (src / "notes.tmp").write_text("ignored")
    (src / ".gitignore").write_text("*.tmp\n")
    data = ws.dir / "data"
    data.mkdir()
    (data / "rows.csv").write_text("a,b\n1,2\n3,4\n")
    lines: list[str] = []
    r = train(
        opts(ws, env_file, src, "job.py", args=("--alpha", "0.5"), inputs={"data": data}, env_vars={"MODE": "fast"}),
        on_line=lines.append,
        info=quiet,
    )
    assert r.status == "completed" and r.exit_code == 0 and r.cli_exit_code == 0
    assert (r.outputs / "model.txt").read_text() == "rows=3 args=['--alpha', '0.5']"
    rec = json.loads((r.run_dir / "run.json").read_text())
    assert rec == r.record.to_dict()
    assert rec["metrics"] == {"loss": 0.25, "accuracy": 0.75}
    assert rec["env_vars"] == {"MODE": "fast"}
    assert rec["inputs"]["data"]["sha256"] and rec["inputs"]["data"]["mount"] == "/mnt/inputs/data"
    assert {o["path"] for o in rec["outputs"]} == {"model.txt", "metrics.json"}
    assert rec["environment"]["hash"] == env_hash(spec.load(env_file))
    assert rec["environment"]["digest"].startswith("sha256:")
    assert rec["source"]["files"] == 2 and rec["source"]["ignore_file"] == ".gitignore"  # job.py, .gitignore
    assert rec["started"] < rec["ended"]
    assert "PLAIN 1 MODE fast" in lines
    assert "PLAIN 1 MODE fast" in (r.run_dir / "log.txt").read_text()
    assert leftover_containers() == []


def test_failing_script_exit_code_and_log_tail(ws, env_file: Path, src: Path) -> None:
    (src / "boom.py").write_text("print('working...')\nraise SystemExit(7)\n")
    r = train(opts(ws, env_file, src, "boom.py"), on_line=quiet, info=quiet)
    assert r.status == "failed" and r.exit_code == 7 and r.cli_exit_code == 7
    assert "working..." in (r.run_dir / "log.txt").read_text()
    p = subprocess.run(train_cmd(ws, env_file, src, "boom.py"), capture_output=True, text=True, timeout=300)
    assert p.returncode == 7 and "working..." in p.stdout and "Traceback" not in p.stderr
    assert leftover_containers() == []


def test_timeout_stops_and_removes(ws, env_file: Path, src: Path) -> None:
    (src / "slow.py").write_text("import time\nprint('start', flush=True)\ntime.sleep(300)\n")
    t0 = time.monotonic()
    r = train(opts(ws, env_file, src, "slow.py", timeout=2), on_line=quiet, info=quiet)
    assert time.monotonic() - t0 < 60
    assert r.status == "timed_out" and r.cli_exit_code == 124
    assert json.loads((r.run_dir / "run.json").read_text())["status"] == "timed_out"
    assert leftover_containers() == []


def test_sigint_cancels_and_leaves_no_container(ws, env_file: Path, src: Path) -> None:
    (src / "slow.py").write_text("import time\nprint('started', flush=True)\ntime.sleep(300)\n")
    cmd = train_cmd(ws, env_file, src, "slow.py")
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None
    for line in p.stdout:
        if "started" in line:
            break
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    run = json.loads(next((ws.dir / "runs").glob("*/run.json")).read_text())
    assert run["status"] == "canceled"
    assert leftover_containers() == []


def test_inputs_are_read_only(ws, env_file: Path, src: Path) -> None:
    (src / "write.py").write_text(
        "import os\ntry:\n    open(os.environ['ML_ENV_INPUT_DATA'] + '/x', 'w')\nexcept OSError as e:\n    print('denied', e.errno)\n    raise SystemExit(3)\n"
    )
    data = ws.dir / "ro"
    data.mkdir()
    r = train(opts(ws, env_file, src, "write.py", inputs={"data": data}), on_line=quiet, info=quiet)
    assert r.exit_code == 3
    assert "denied 30" in (r.run_dir / "log.txt").read_text()  # EROFS
    assert list(data.iterdir()) == []


def test_secret_is_passed_but_never_recorded(ws, env_file: Path, src: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    value = "tok-" + ws.repo.split("/")[1] + "-secret"
    monkeypatch.setenv("API_TOKEN", value)
    (src / "use.py").write_text(
        "import os, pathlib\n"
        "v = os.environ['API_TOKEN']\n"
        "print('token length', len(v))\n"
        "print('leaked:', v)\n"
        "pathlib.Path(os.environ['ML_ENV_OUTPUT_DIR'], 'ok').write_text(str(len(v)))\n"
    )
    lines: list[str] = []
    r = train(opts(ws, env_file, src, "use.py", secrets=("API_TOKEN",)), on_line=lines.append, info=quiet)
    assert r.status == "completed"
    assert (r.outputs / "ok").read_text() == str(len(value))
    everything = (r.run_dir / "run.json").read_text() + (r.run_dir / "log.txt").read_text() + "\n".join(lines)
    assert value not in everything
    assert "leaked: ***" in everything
    assert json.loads((r.run_dir / "run.json").read_text())["secrets"] == ["API_TOKEN"]
    assert leftover_containers() == []  # nothing left to docker-inspect


def test_outputs_owned_by_the_invoking_user(ws, env_file: Path, src: Path) -> None:
    (src / "w.py").write_text("import os\nopen(os.environ['ML_ENV_OUTPUT_DIR'] + '/f', 'w').write('x')\n")
    r = train(opts(ws, env_file, src, "w.py"), on_line=quiet, info=quiet)
    st = (r.outputs / "f").stat()
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
    # another uid in the container gets an outputs directory it can write
    o2 = RunOptions(
        environment=str(env_file),
        source=src,
        script="w.py",
        runs_dir=ws.dir / "runs",
        build=ws.opts(),
        user="1234:1234",
    )
    r2 = train(o2, on_line=quiet, info=quiet)
    assert r2.status == "completed", (r2.run_dir / "log.txt").read_text()
    assert (r2.outputs / "f").stat().st_uid == 1234


def test_run_against_an_image_digest_without_spec(ws, env_file: Path, src: Path) -> None:
    b = build(env_file, ws.opts())
    (src / "hi.py").write_text("print('hello from', __import__('os').environ.get('PLAIN'))\n")
    ref = f"{b.image.rsplit(':', 1)[0]}@{b.digest}"
    lines: list[str] = []
    r = train(
        RunOptions(environment=ref, source=src, script="hi.py", runs_dir=ws.dir / "runs"),
        on_line=lines.append,
        info=quiet,
    )
    assert r.status == "completed" and "hello from 1" in lines
    assert r.record.environment.spec is None and r.record.environment.digest == b.digest


def test_editing_code_never_rebuilds(ws, env_file: Path, src: Path) -> None:
    (src / "a.py").write_text("print(1)\n")
    r1 = train(opts(ws, env_file, src, "a.py"), on_line=quiet, info=quiet)
    (src / "a.py").write_text("print(2)\n")
    msgs: list[str] = []
    r2 = train(opts(ws, env_file, src, "a.py"), on_line=quiet, info=msgs.append)
    assert r1.record.environment == r2.record.environment
    assert r1.record.source.snapshot_hash != r2.record.source.snapshot_hash
    assert any("reused" in m for m in msgs)


def test_example_training_script(ws) -> None:
    """The project's example trains a real scikit-learn model in envs/sklearn.toml."""
    lines: list[str] = []
    o = RunOptions(
        environment=str(ROOT / "envs/sklearn.toml"),
        source=ROOT / "examples/train",
        script="train.py",
        args=("--alpha", "0.5"),
        runs_dir=ws.dir / "runs",
        build=ws.opts(repository=None),
    )
    r = train(o, on_line=lines.append, info=quiet)
    assert r.status == "completed", "\n".join(lines)
    assert (r.outputs / "model" / "model.joblib").stat().st_size > 1000
    assert r.record.metrics["accuracy"] > 0.8


def test_dot_outputs_is_collected_and_a_stale_source_outputs_is_left_out(ws, env_file: Path, src: Path) -> None:
    (src / "job.py").write_text(
        "import os, pathlib\n"
        "print('CWD', os.getcwd())\n"
        "print('STALE', os.path.exists('outputs/stale.txt'), os.path.exists('outputs/old'))\n"
        "os.makedirs('outputs/model', exist_ok=True)\n"
        "pathlib.Path('outputs/model/weights.txt').write_text('w')\n"
        "pathlib.Path(os.environ['ML_ENV_OUTPUT_DIR'], 'env.txt').write_text('e')\n"
        "print('SAME', sorted(os.listdir('outputs')) == sorted(os.listdir(os.environ['ML_ENV_OUTPUT_DIR'])))\n"
    )
    # an earlier local run left files in the source's outputs/: never shipped, never reported
    (src / "outputs" / "old").mkdir(parents=True)
    (src / "outputs" / "stale.txt").write_text("stale")
    (src / "outputs" / "old" / "x.txt").write_text("x")
    lines: list[str] = []
    said: list[str] = []
    r = train(opts(ws, env_file, src, "job.py"), on_line=lines.append, info=said.append)
    assert r.status == "completed", (lines, said)
    assert "CWD /mnt/code" in lines and "STALE False False" in lines and "SAME True" in lines
    assert (r.outputs / "model" / "weights.txt").read_text() == "w"
    assert (r.outputs / "env.txt").read_text() == "e"
    assert not (r.outputs / "stale.txt").exists()
    rec = json.loads((r.run_dir / "run.json").read_text())
    assert {o["path"] for o in rec["outputs"]} == {"model/weights.txt", "env.txt"}
    assert rec["source"]["files"] == 1  # job.py alone
    assert any("2 file(s) under outputs/" in m and "left out of the snapshot" in m for m in said)
    # the source folder is untouched: the run wrote to its own outputs, not to src/outputs
    assert sorted(p.name for p in (src / "outputs").iterdir()) == ["old", "stale.txt"]
    assert leftover_containers() == []


def test_inputs_and_outputs_placeholders_in_arguments(ws, env_file: Path, src: Path) -> None:
    (src / "job.py").write_text(
        "import argparse, pathlib\n"
        "p = argparse.ArgumentParser()\n"
        "p.add_argument('--data'); p.add_argument('--model'); p.add_argument('--note')\n"
        "a = p.parse_args()\n"
        "rows = (pathlib.Path(a.data) / 'rows.csv').read_text().splitlines()\n"
        "(pathlib.Path(a.model) / 'model.txt').write_text('rows=%d note=%s' % (len(rows), a.note))\n"
    )
    data = ws.dir / "data"
    data.mkdir()
    (data / "rows.csv").write_text("a\n1\n2\n")
    given = ("--data", "${{inputs.data}}", "--model", "${{outputs.model}}", "--note", "$(touch /tmp/x);${HOME}")
    r = train(opts(ws, env_file, src, "job.py", args=given, inputs={"data": data}), on_line=quiet, info=quiet)
    assert r.status == "completed"
    # the folder existed before the script ran (as Azure mounts it); the note reached it untouched
    assert (r.outputs / "model" / "model.txt").read_text() == "rows=3 note=$(touch /tmp/x);${HOME}"
    rec = json.loads((r.run_dir / "run.json").read_text())
    assert rec["arguments"] == list(given)
    assert rec["command"][2:] == ["--data", "/mnt/inputs/data", "--model", "/mnt/outputs/model", *given[4:]]
    assert [o["path"] for o in rec["outputs"]] == ["model/model.txt"]
    # an unknown name: one usage line, exit 2, before anything is built or run
    p = subprocess.run(
        [*train_cmd(ws, env_file, src, "job.py"), "--input", f"data={data}", "--", "--data", "${{inputs.dataset}}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "${{inputs.dataset}}: no input named 'dataset' (inputs: data)" in p.stderr
    assert len([ln for ln in p.stderr.splitlines() if ln.strip()]) == 1, p.stderr
    assert sorted(p.name for p in (ws.dir / "runs").iterdir()) == [r.run_id]  # no second run started
    assert leftover_containers() == []


def test_an_azure_command_job_imported_and_run(ws) -> None:
    """The Azure walkthrough's job YAML → `ml-env import` → the printed `ml-env train`, as is."""
    import shutil

    import yaml

    d = ws.dir / "job"
    shutil.copytree(ROOT / "tests/fixtures/azure/v2-command-job", d)
    doc = yaml.safe_load((d / "job.yml").read_text())
    doc["environment"] = {"image": ws.lab["base_image_python"]}  # no conda solve in a test
    (d / "job.yml").write_text(yaml.safe_dump(doc))
    cli = [sys.executable, "-m", "ml_env_tasks"]
    p = subprocess.run([*cli, "import", "job.yml", "-o", "job-env.toml", "--json"], cwd=d, capture_output=True,
                       text=True, timeout=60)  # fmt: skip
    assert p.returncode == 0, p.stderr
    argv = json.loads(p.stdout)["argv"][1:]
    i = argv.index("--")
    argv[i:i] = ["--runs-dir", str(ws.dir / "runs"), *ws.cli_args(), "--json"]
    p = subprocess.run([*cli, *argv], cwd=d, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    rec = json.loads(p.stdout)
    out = ws.dir / "runs" / rec["run_id"] / "outputs"
    assert (out / "model" / "model.txt").read_text() == "rows=3 alpha=0.5 note=two words"
    assert (out / "done.txt").read_text() == "ok"  # ./outputs, collected
    assert rec["experiment"] == "digits" and rec["env_vars"] == {"MODE": "ci"} and rec["resources"]["timeout_s"] == 600
    assert leftover_containers() == []
