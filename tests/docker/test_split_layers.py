"""Layers that follow the resolution, built for real: one line added to a requirements file
re-installs and ships one new layer, and every other layer keeps its digest."""

from __future__ import annotations

import pytest

from ml_env_tasks.build import build
from ml_env_tasks.engine import Engine
from ml_env_tasks.registry import RegistryClient

pytestmark = pytest.mark.docker

ENV = """
name = "split"
[base]
image = "{base}"
[python]
layers = "split"
requirements = ["requirements.txt"]
packages = ["tomli==2.0.2"]
"""


def layers(ws, tag: str) -> list[str]:
    return RegistryClient(ws.lab["registry"]).image_config(ws.repo, tag)["rootfs"]["diff_ids"]


def test_one_more_line_ships_one_new_layer_and_keeps_the_others(ws) -> None:
    f = ws.spec(ENV.format(base=ws.lab["base_image_python"]), files={"requirements.txt": b"six==1.16.0\n"})
    first = build(f, ws.opts())
    (f.parent / "requirements.txt").write_text("six==1.16.0\nidna==3.7\n")
    second = build(f, ws.opts())
    assert first.built and second.built and second.hash != first.hash
    a, b = layers(ws, first.hash), layers(ws, second.hash)
    new = [d for d in b if d not in a]
    assert len(new) == 1, (a, b)  # idna's layer; six's, tomli's, the rest and the steps after them stay
    assert len(b) == len(a) + 1
    out = Engine().run_capture(
        second.image, ["python", "-c", "import six, tomli, idna, sys; print(idna.__file__, sys.prefix)"]
    )
    assert out.strip() == "/opt/ml-env/lib/python3.11/site-packages/idna/__init__.py /opt/ml-env"
    # installed as one install would have: metadata whole, nothing broken, nothing left of the stages
    check = Engine().run_capture(second.image, ["sh", "-c", "pip check && ls / | grep -c ml-env || true"])
    assert check.splitlines() == ["No broken requirements found.", "0"]
    lock = (f.parent / "env.lock").read_text()
    assert "idna==3.7" in lock and "six==1.16.0" in lock and "tomli==2.0.2" in lock


def test_plan_resolve_shows_the_dockerfile_the_build_builds(ws) -> None:
    """Another builder (build-push-action) given ``plan --resolve --write-context`` builds the
    image ml-env built, every step from the cache ml-env wrote."""
    import json
    import subprocess

    f = ws.spec(ENV.format(base=ws.lab["base_image_python"]), files={"requirements.txt": b"six==1.16.0\n"})
    built = build(f, ws.opts(cache="registry"))
    ctx = ws.dir / "ctx"
    p = subprocess.run(
        ["ml-env", "plan", str(f), *ws.cli_args(), "--resolve", "--write-context", str(ctx), "--json"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    planned = json.loads(p.stdout)
    assert planned["hash"] == built.hash
    df = (ctx / "Dockerfile").read_text()
    assert "--no-deps six==1.16.0" in df and "--no-deps tomli==2.0.2" in df and "ml-env-resolve" not in df
    unresolved = subprocess.run(["ml-env", "plan", str(f), *ws.cli_args(), "--json"], capture_output=True, text=True)
    assert "ml-env-resolve" in json.loads(unresolved.stdout)["dockerfile"]


def test_compression_zstd_pushes_zstd_layers_that_an_engine_runs(ws) -> None:
    import json
    import urllib.request

    f = ws.spec(ENV.format(base=ws.lab["base_image_python"]), files={"requirements.txt": b"six==1.16.0\n"})
    built = build(f, ws.opts(compression="zstd"))
    accept = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json"

    def get(ref: str) -> dict:
        req = urllib.request.Request(
            f"http://{ws.lab['registry']}/v2/{ws.repo}/manifests/{ref}", headers={"Accept": accept}
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    doc = get(built.hash)
    if "manifests" in doc:
        doc = get(next(m["digest"] for m in doc["manifests"] if m.get("platform", {}).get("os") != "unknown"))
    kinds = {layer["mediaType"] for layer in doc["layers"]}
    assert kinds == {"application/vnd.oci.image.layer.v1.tar+zstd"}, kinds  # the base's layers too
    Engine().remove_image(built.image)
    out = Engine().run_capture(built.image, ["python", "-c", "import six; print(six.__version__)"])
    assert out.strip() == "1.16.0"
