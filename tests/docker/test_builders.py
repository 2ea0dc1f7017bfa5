"""Any buildx builder: with a builder of the ``remote`` driver (the lab's, see ``lab.py``) nothing
lands in the engine by itself, so ml-env loads the first pass to read the lock from it, pushes the
final image from the builder, and does not leave the first pass behind under the image's tag."""

from __future__ import annotations

import json

import pytest

from ml_env_tasks.engine import Engine
from ml_env_tasks.registry import RegistryClient

from .helpers import ml_env

pytestmark = pytest.mark.docker

SPEC = 'name = "{name}"\n[base]\nimage = "{base}"\n[python]\npackages = ["six==1.16.0"]\n[env]\nB = "{b}"\n'


def _builder(ws) -> str:
    name = ws.lab.get("remote_builder")
    assert name, "the lab registers a remote-driver builder (lab.py up)"
    return name


def test_a_remote_driver_builder_pushes_what_it_built_with_its_lock(ws) -> None:
    builder = _builder(ws)
    f = ws.spec(SPEC.format(name="viaremote", base=ws.lab["base_image_python"], b="1"))
    p = ml_env("build", str(f), *ws.cli_args(), "--builder", builder, "--json", "--quiet")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["built"] and out["digest"].startswith("sha256:")
    assert "six==1.16.0" in f.with_suffix(".lock").read_text()
    client = RegistryClient(ws.lab["registry"])
    labels = client.image_config(ws.repo, out["hash"])["config"]["Labels"]
    assert "six==1.16.0" in labels["ml-env.lock"] and labels["ml-env.hash"] == out["hash"]
    # the first pass (loaded to read the lock, without the lock label) is not left under the tag
    assert Engine().local_image_id(out["image"]) is None
    again = ml_env("build", str(f), *ws.cli_args(), "--builder", builder, "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["digest"] == out["digest"], again.stderr
    assert not json.loads(again.stdout)["built"]
    # what it built runs: a training run pulls it by digest
    src = ws.dir / "src"
    src.mkdir()
    (src / "t.py").write_text("import six; print('six', six.__version__)\n")
    ran = ml_env("train", "--env", str(f), "--source", str(src), "--script", "t.py", *ws.cli_args(),
                 "--runs-dir", str(ws.dir / "runs"))  # fmt: skip
    assert ran.returncode == 0 and "six 1.16.0" in ran.stderr + ran.stdout, ran.stderr


def test_a_remote_driver_builder_loads_an_image_kept_in_the_engine(ws) -> None:
    """Without a registry the image lives in the engine: the builder's result is loaded there, with
    its lock label (an annotation asked for takes the --output route: type=docker, loaded too)."""
    builder = _builder(ws)
    f = ws.spec(SPEC.format(name="localremote", base=ws.lab["base_image_python"], b="2"))
    args = [a for a in ws.cli_args() if a not in ("--registry", ws.lab["registry"])]
    p = ml_env("build", str(f), *args, "--builder", builder, "--annotation", "org.example.team=vision", "--json",
               "--quiet")  # fmt: skip
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    image = Engine().containers.image(out["image"])
    assert image is not None, f"{out['image']} was not loaded into the engine"
    assert "six==1.16.0" in image["Config"]["Labels"]["ml-env.lock"]
    Engine().remove_image(out["image"])
