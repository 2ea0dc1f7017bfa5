"""Layers that follow the resolution (``python.layers = "split"``): what the renderer writes and
what ``build/split.py`` does inside the build, tested here without an engine (the build itself:
tests/docker/test_split_layers.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ml_env_tasks import spec
from ml_env_tasks.build import split
from ml_env_tasks.build.dockerfile import render
from ml_env_tasks.build.layering import MAX_NAMED, declared_names, read_layers

ENV = """
name = "s"
[base]
image = "127.0.0.1:5000/base/debian-python:bookworm"
[python]
layers = "split"
packages = ["six==1.16.0", "Tomli_W>=1"]
requirements = ["req.txt"]
index_url_env = "IDX"
[docker]
build_args = { MODE = "fast" }
"""


def load(tmp_path: Path, text: str = ENV, req: str = "numpy==2.1.3\nscikit-learn  # the model\n"):
    (tmp_path / "req.txt").write_text(req)
    (tmp_path / "Dockerfile").write_text("FROM 127.0.0.1:5000/base/debian-python:bookworm\n")
    f = tmp_path / "env.toml"
    f.write_text(text)
    return spec.load(f)


def test_a_layer_per_declared_name_then_the_rest_copied_in_with_link(tmp_path: Path) -> None:
    env = load(tmp_path)
    assert declared_names(env) == ["numpy", "scikit-learn", "six", "tomli-w"]
    df = render(env).dockerfile
    assert df.startswith("FROM 127.0.0.1:5000/base/debian-python:bookworm AS ml-env-base\n")
    stages = [line.split()[-1] for line in df.splitlines() if line.startswith("FROM ml-env-base AS ")]
    assert stages == ["ml-env-resolve", *(f"ml-env-layer-{n}" for n in declared_names(env)), "ml-env-rest"]
    copies = [line for line in df.splitlines() if line.startswith("COPY")]
    assert copies == [f"COPY --link --from={s} /ml-env-layer/ /" for s in stages[1:]]
    # each stage has the build's arguments; the final stage copies, then the ordinary steps run
    assert df.count("ARG MODE=") == len(stages) + 2
    final = df.rindex("\nFROM ml-env-base\n")
    assert final < df.index("COPY --link") < df.index("-r /tmp/ml-env/requirements/", df.index("COPY --link"))
    # a layer's RUN names its own file only: adding a package changes no other layer's step
    assert "source=/ml-env-layers/numpy.txt,target=/tmp/ml-env/layer.txt" in df
    assert "--mount=type=bind,source=ml-env/split/split.py,target=/tmp/ml-env/split/split.py" in df
    # the report (it can name the private index) is written to a tmpfs, never to a layer
    assert "--mount=type=tmpfs,target=/tmp/ml-env-work" in df and "--report /tmp/ml-env-work/report.json" in df
    assert "--no-deps -r /tmp/ml-env/layer.txt" in df


def test_a_resolved_build_writes_each_layers_pins_into_its_command(tmp_path: Path) -> None:
    env = load(tmp_path)
    plan = render(env)
    # unresolved (``ml-env plan``): the resolve stage is in the build; the build resolves first
    assert "AS ml-env-resolve" in plan.dockerfile and plan.resolve_dockerfile is not None
    assert plan.resolve_dockerfile.endswith(
        "FROM scratch AS ml-env-pins\nCOPY --from=ml-env-resolve /ml-env-layers/ /\n"
    )
    # the resolve build starts from the base image alone (a throwaway venv made as the image's)
    assert plan.resolve_dockerfile.startswith("FROM 127.0.0.1:5000/base/debian-python:bookworm AS ml-env-resolve\n")
    assert "python3 -m venv /tmp/ml-env-work/venv;" in plan.resolve_dockerfile
    layers = {"numpy": ["numpy==2.1.3"], "scikit-learn": ["scikit-learn==1.5.2"], "six": [], "tomli-w": ["tomli-w==1.0.0"],
              "_rest": ["joblib==1.4.2", "scipy==1.14.1"]}  # fmt: skip
    df = render(env, layers=layers).dockerfile
    assert "ml-env-resolve" not in df and "/ml-env-layers/" not in df
    assert "--no-deps numpy==2.1.3\n" in df and "--no-deps joblib==1.4.2 scipy==1.14.1\n" in df
    assert "ml-env-layer-six" not in df  # an empty layer is no layer
    copies = [line.split()[2] for line in df.splitlines() if line.startswith("COPY")]
    assert copies == ["--from=ml-env-layer-numpy", "--from=ml-env-layer-scikit-learn", "--from=ml-env-layer-tomli-w",
                      "--from=ml-env-rest"]  # fmt: skip
    assert render(env, layers=layers).hash == plan.hash  # the hash is the declaration's


def test_the_resolution_sent_back_is_checked_before_it_reaches_a_dockerfile(tmp_path: Path) -> None:
    out = tmp_path / "layers"
    out.mkdir()
    (out / "numpy.txt").write_text("numpy==2.1.3\n")
    (out / "_rest.txt").write_text("")
    (out / "provenance.json").write_text("{}")  # buildx's own record beside the pins
    assert read_layers(out) == {"numpy": ["numpy==2.1.3"], "_rest": []}
    # what an sdist's setup.py can leave there: a link to a host file is refused, never read
    secret = tmp_path / "host-secret"
    secret.write_text("numpy==2.1.3 s3cr3t-token\n")
    (out / "scipy.txt").symlink_to(secret)
    with pytest.raises(Exception, match="not a layer file") as e:
        read_layers(out)
    assert "s3cr3t" not in str(e.value)
    (out / "scipy.txt").unlink()
    for name, text in [("numpy.txt", "numpy==2.1.3; rm -rf /\n"), ("Bad Name.txt", ""), ("x.txt", "x==1 $(id)\n")]:
        (out / name).write_text(text)
        with pytest.raises(Exception, match="resolution"):
            read_layers(out)
        (out / name).unlink()


def test_a_layer_step_does_not_change_when_another_package_is_added(tmp_path: Path) -> None:
    def layer_steps(req: str) -> dict[str, str]:
        df = render(load(tmp_path, req=req)).dockerfile
        parts = df.split("\nFROM ml-env-base AS ")[1:]
        return {p.split("\n", 1)[0]: p for p in parts}

    before = layer_steps("numpy==2.1.3\n")
    after = layer_steps("numpy==2.1.3\nsix==1.16.0\npandas\n")
    assert before["ml-env-layer-numpy"] == after["ml-env-layer-numpy"]
    assert "ml-env-layer-pandas" in after and "ml-env-layer-pandas" not in before


@pytest.mark.parametrize(
    "req",
    [
        "--index-url https://example.com/simple\nnumpy\n",
        "numpy==2.1.3 \\\n    --hash=sha256:" + "0" * 64 + "\n",
        "--no-binary :all:\nnumpy\n",
    ],
)
def test_a_requirements_file_with_options_of_its_own_is_installed_as_written(tmp_path: Path, req: str) -> None:
    env = load(tmp_path, req=req)
    assert not env.splits_layers
    assert "ml-env-resolve" not in render(env).dockerfile


def test_one_layer_and_a_base_dockerfile_render_no_stages(tmp_path: Path) -> None:
    one = load(tmp_path, ENV.replace('layers = "split"\n', ""))  # the default
    assert "COPY" not in render(one).dockerfile and " AS " not in render(one).dockerfile
    dockerfile = ENV.replace('image = "127.0.0.1:5000/base/debian-python:bookworm"', 'dockerfile = "Dockerfile"')
    assert "COPY" not in render(load(tmp_path, dockerfile)).dockerfile


def test_a_user_managed_interpreter_gets_its_variables_before_the_script(tmp_path: Path) -> None:
    text = ENV.replace("[python]\n", "[python]\nuser_managed_dependencies = true\n")
    df = render(load(tmp_path, text)).dockerfile
    assert "PIP_BREAK_SYSTEM_PACKAGES=1 python3 -B /tmp/ml-env/split/split.py resolve" in df
    assert "PIP_BREAK_SYSTEM_PACKAGES=1 python3 -B /tmp/ml-env/split/split.py install" in df
    assert "-- PIP_BREAK" not in df


def test_a_wrong_layers_value_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="python.layers"):
        load(tmp_path, ENV.replace('layers = "split"', 'layers = "many"'))


def test_past_the_cap_declared_names_share_the_rest(tmp_path: Path) -> None:
    req = "".join(f"pkg{i:03d}==1\n" for i in range(MAX_NAMED + 5))
    env = load(tmp_path, req=req)
    assert len(declared_names(env)) == MAX_NAMED


def test_uv_resolves_with_compile_and_wheels_through_a_file(tmp_path: Path) -> None:
    (tmp_path / "w-1-py3-none-any.whl").write_bytes(b"PK\x03\x04")
    text = ENV.replace("[python]\n", '[python]\ninstaller = "uv"\nwheels = ["w-1-py3-none-any.whl"]\n')
    df = render(load(tmp_path, text)).dockerfile
    assert "uv pip compile --quiet --python /opt/ml-env/bin/python" in df
    resolve = df.split("AS ml-env-resolve", 1)[1].split("\nFROM ", 1)[0]
    # uv pip compile takes requirement files as arguments, the wheels through a file of their paths
    assert " -r " not in resolve and "-o /tmp/ml-env-work/pins.txt /tmp/ml-env/requirements/" in resolve
    assert resolve.rstrip().endswith("/tmp/ml-env/packages/requirements.txt /tmp/ml-env-work/wheels.txt")
    assert "--pins /tmp/ml-env-work/pins.txt" in resolve
    # a private wheel is a layer of its own, named by its content, copied in before the rest
    wheel = "ml-env-wheel-" + spec.load(tmp_path / "env.toml").wheels[0].sha256[:16]
    assert f"FROM ml-env-base AS {wheel}\n" in df
    assert "--no-deps /tmp/ml-env/wheels/w-1-py3-none-any.whl" in df
    copies = [line for line in df.splitlines() if line.startswith("COPY")]
    assert copies[-2:] == [
        f"COPY --link --from={wheel} /ml-env-layer/ /",
        "COPY --link --from=ml-env-rest /ml-env-layer/ /",
    ]
    # the installer's variables are set for the script, which runs the installer
    assert "UV_LINK_MODE=copy /opt/ml-env/bin/python -B /tmp/ml-env/split/split.py install" in df
    assert "-- /tmp/ml-env-uv/bin/uv pip install" in df


# --- split.py, the part that runs inside the build ---------------------------------------


def test_assign_gives_declared_names_their_layer_and_leaves_the_base_alone() -> None:
    resolved = [("numpy", "2.1.3"), ("scipy", "1.14.1"), ("pip", "24.0"), ("joblib", "1.4.2")]
    layers = split.assign(resolved, ["numpy", "six"], have={"pip"})
    assert layers == {"numpy": ["numpy==2.1.3"], "six": [], split.REST: ["joblib==1.4.2", "scipy==1.14.1"]}


def test_a_report_never_puts_a_url_or_a_file_in_a_layer(tmp_path: Path) -> None:
    report = {
        "install": [
            {"is_direct": False, "metadata": {"name": "Scikit_Learn", "version": "1.5.2"}},
            {"is_direct": True, "metadata": {"name": "mylib", "version": "0.1"}},
        ]
    }
    (tmp_path / "r.json").write_text(json.dumps(report))
    assert split.from_report(str(tmp_path / "r.json")) == [("scikit-learn", "1.5.2")]
    (tmp_path / "pins.txt").write_text("# header\nnumpy==2.1.3\n    # via x\nmylib @ file:///tmp/w.whl\n")
    assert split.from_pins(str(tmp_path / "pins.txt")) == [("numpy", "2.1.3")]


def test_collect_moves_what_was_created_and_keeps_owners_and_modes_of_the_folders_above(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "opt"
    site = root / "env" / "site-packages"
    site.mkdir(parents=True)
    os.chmod(root / "env", 0o750)
    (site / "old.py").write_text("old")
    (site / "changed.pth").write_text("a")
    monkeypatch.setattr(split, "ROOTS", (str(root),))
    before = split.snapshot()
    (site / "pkg" / "sub").mkdir(parents=True)
    (site / "pkg" / "sub" / "m.py").write_text("new")
    (site / "pkg-1.0.dist-info").mkdir()
    (site / "tool.py").write_text("new")
    os.symlink("tool.py", site / "link")
    (site / "changed.pth").write_text("b")
    into = tmp_path / "layer"
    into.mkdir()
    assert split.collect(before, str(into)) == 5
    got = into / str(site).lstrip("/")
    assert (got / "pkg" / "sub" / "m.py").read_text() == "new" and not (site / "pkg").exists()
    assert (got / "tool.py").exists() and os.readlink(got / "link") == "tool.py"
    assert (got / "changed.pth").read_text() == "b" and (site / "changed.pth").exists()  # copied, not moved
    assert not (got / "old.py").exists() and (site / "old.py").exists()
    assert oct((into / str(root / "env").lstrip("/")).stat().st_mode & 0o777) == oct(0o750)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "7")
    split.date(str(into))
    assert {p.lstat().st_mtime for p in into.rglob("*")} == {7}


def test_install_of_an_empty_layer_runs_nothing_and_leaves_an_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "layer.txt").write_text("")
    into = tmp_path / "out"
    code = split.main(["install", "--layer", str(tmp_path / "layer.txt"), "--into", str(into), "--", "false"])
    assert code == 0 and into.is_dir() and not any(into.iterdir())
