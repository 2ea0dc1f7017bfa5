"""inference.server: the setting, its place in the hash, the layer and CMD it renders."""

from __future__ import annotations

import json
from pathlib import Path

from ml_env_tasks import spec
from ml_env_tasks.build.dockerfile import render
from ml_env_tasks.build.stack import AZUREML_PACKAGES
from ml_env_tasks.spec.hashing import canonical, dependency_key, env_hash

BASE = '[base]\nimage = "127.0.0.1:5000/base/debian-python:bookworm"\n[python]\npackages = ["numpy==2.1.3"]\n'


def load(tmp_path: Path, head: str, name: str = "env.toml") -> spec.Environment:
    f = tmp_path / name
    f.write_text('name = "scoring"\n' + head + BASE)
    return spec.load(f)


def test_inference_true_and_a_table_without_server_are_the_built_in_server(tmp_path: Path) -> None:
    a = load(tmp_path, "inference = true\n", "a.toml")
    b = load(tmp_path, "[inference]\n", "b.toml")
    c = load(tmp_path, '[inference]\nserver = "builtin"\n', "c.toml")
    assert a.inference and a.inference_server == "builtin"
    assert env_hash(a) == env_hash(b) == env_hash(c)
    assert "server" not in canonical(a)["inference"]  # the built-in entry keeps its shape: old hashes stay


def test_azureml_server_enters_the_hash_only_when_set(tmp_path: Path) -> None:
    plain = load(tmp_path, "", "plain.toml")
    builtin = load(tmp_path, "inference = true\n", "builtin.toml")
    azure = load(tmp_path, '[inference]\nserver = "azureml"\n', "azure.toml")
    assert azure.inference and azure.inference_server == "azureml"
    assert "inference" not in canonical(plain)
    assert canonical(azure)["inference"] == {"server": "azureml", "packages": list(AZUREML_PACKAGES)}
    assert len({env_hash(plain), env_hash(builtin), env_hash(azure)}) == 3
    # the inference layer comes after every dependency: all three share the dependency layers' cache
    assert dependency_key(plain) == dependency_key(builtin) == dependency_key(azure)
    off = load(tmp_path, "inference = false\n", "off.toml")
    assert env_hash(off) == env_hash(plain)


def test_azureml_layer_installs_the_pinned_server_and_runs_azmlinfsrv(tmp_path: Path) -> None:
    plan = render(load(tmp_path, '[inference]\nserver = "azureml"\n'))
    assert plan.files["ml-env/inference/requirements.txt"] == b"azureml-inference-server-http==1.5.1\n"
    assert "ml-env/inference/server.py" not in plan.files  # ml-env's own server is not in this image
    df = plan.dockerfile
    assert "AZUREML_ENTRY_SCRIPT=score.py" in df and "AZUREML_MODEL_DIR=" in df and "WORKER_COUNT=1" in df
    assert "SCORING_TIMEOUT_MS=" in df and "AML_APP_ROOT=/var/azureml-app" in df and "EXPOSE 5001" in df
    cmd = json.loads(df.split("\nCMD ", 1)[1].splitlines()[0])
    assert cmd[:2] == ["/bin/sh", "-c"]
    assert cmd[2] == 'exec /opt/ml-env/bin/azmlinfsrv --entry_script "$AML_APP_ROOT/$AZUREML_ENTRY_SCRIPT" --port 5001'
    # the built-in server's image is unchanged
    builtin = render(load(tmp_path, "inference = true\n", "b.toml"))
    assert 'CMD ["/opt/ml-env/bin/python", "/opt/ml-env-serve/server.py"]' in builtin.dockerfile


def test_user_managed_interpreter_runs_the_server_by_module(tmp_path: Path) -> None:
    f = tmp_path / "um.toml"
    f.write_text(
        'name = "um"\n[inference]\nserver = "azureml"\n[base]\nimage = "127.0.0.1:5000/base/debian-python:bookworm"\n'
        '[python]\nuser_managed_dependencies = true\ninterpreter = "/usr/bin/python3"\npackages = ["numpy"]\n'
    )
    df = render(spec.load(f)).dockerfile
    assert "exec /usr/bin/python3 -m azureml_inference_server_http --entry_script" in df
