"""build-push-action style extras: every value checked whole before a build, nothing in the hash."""

from __future__ import annotations

import csv

import pytest

from ml_env_tasks.build import BuildOptions
from ml_env_tasks.build.extras import cache_entry, check_platforms, key_values, native_platform, output_spec, tag_refs
from ml_env_tasks.errors import EngineError, UsageError
from ml_env_tasks.settings.groups import BUILD_ONLY
from ml_env_tasks.settings.options import from_inputs


def test_labels_and_annotations_are_checked_whole() -> None:
    assert key_values(["org.opencontainers.image.source=https://x.invalid/a,b", "team=ml"], "label") == {
        "org.opencontainers.image.source": "https://x.invalid/a,b",
        "team": "ml",
    }
    for bad in ("novalue", "Bad Key=1", "ml-env.hash=0", "ml-env=1", "k=a\nRUN rm -rf /", "k=" + "x" * 5000):
        with pytest.raises(UsageError) as e:
            key_values([bad], "label")
        assert "RUN" not in str(e.value) and "xxxxxxxxxx" not in str(e.value)
    with pytest.raises(UsageError, match="at most 64"):
        key_values([f"k{i}=v" for i in range(65)], "label")


def test_cache_entries_follow_buildx_syntax() -> None:
    assert cache_entry("type=registry,ref=127.0.0.1:5000/c/cache:main,mode=max", "cache-to") == {
        "type": "registry",
        "ref": "127.0.0.1:5000/c/cache:main",
        "mode": "max",
    }
    assert cache_entry("127.0.0.1:5000/c/cache:main", "cache-from") == {
        "type": "registry",
        "ref": "127.0.0.1:5000/c/cache:main",
    }
    assert cache_entry('type=local,"src=/tmp/a,b"', "cache-from") == {"type": "local", "src": "/tmp/a,b"}
    for bad in ("type=ftp,ref=x", "ref=a/b:c", "type=registry", "type=registry,ref=x/UP:y", "type=local,\nx=1",
                "type=registry,type=local"):  # fmt: skip
        with pytest.raises(UsageError):
            cache_entry(bad, "cache-from")


def test_tags_are_tags_or_full_references() -> None:
    image = "127.0.0.1:5000/ml-envs/x:abc"
    assert tag_refs(image, ["latest", "127.0.0.1:5000/other/x:v1", "abc"], registry="127.0.0.1:5000") == [
        "127.0.0.1:5000/ml-envs/x:latest",
        "127.0.0.1:5000/other/x:v1",
    ]
    assert tag_refs("ml-envs/x:abc", ["mine/x:dev", "v2"], registry=None) == ["mine/x:dev", "ml-envs/x:v2"]
    for bad in ("a/b@sha256:" + "0" * 64, "host/repo", "lat\nest", "-x", "a//b:c"):
        with pytest.raises(UsageError):
            tag_refs(image, [bad], registry="127.0.0.1:5000")


def test_platforms_only_the_engines_own() -> None:
    native = native_platform("linux", "x86_64")
    assert native == "linux/amd64"
    assert check_platforms([], native, "default", "docker") == []
    assert check_platforms(["linux/amd64"], native, "default", "docker") == ["linux/amd64"]
    with pytest.raises(EngineError, match=r"builder 'default' \(driver docker\)"):
        check_platforms(["linux/amd64", "linux/arm64"], native, "default", "docker")
    with pytest.raises(EngineError, match="one platform per image"):
        check_platforms(["linux/amd64,linux/arm64"], native, "default", "docker")  # --platform a,b
    with pytest.raises(EngineError, match="not the engine's own"):
        check_platforms(["linux/arm64"], native, "default", "docker")


def test_output_spec_quotes_fields_the_way_buildx_reads_them() -> None:
    spec = output_spec(["r/x:a", "r/x:b"], push=True, annotations={"org.example.k": 'a,b "c"', "plain": "v"})
    # python-on-whales joins the dict as k=v,k=v; buildx reads that as CSV
    joined = ",".join(f"{k}={v}" for k, v in spec.items())
    fields = dict(f.split("=", 1) for f in next(csv.reader([joined])))
    assert fields == {
        "type": "image",
        "name": "r/x:a,r/x:b",
        "push": "true",
        "annotation-manifest.org.example.k": 'a,b "c"',
        "annotation-manifest.plain": "v",
    }


def test_action_inputs_keep_commas_where_values_hold_them() -> None:
    env = {
        "INPUT_TAGS": "latest, v1\nv2",
        "INPUT_LABELS": "a=1,2\nb=3",
        "INPUT_CACHE_FROM": "type=registry,ref=h/c:1\ntype=registry,ref=h/c:2",
        "INPUT_PLATFORMS": "linux/amd64",
    }
    v = from_inputs(BUILD_ONLY, env).values
    assert v["tags"] == ["latest", "v1", "v2"]
    assert v["labels"] == ["a=1,2", "b=3"]
    assert v["cache_from"] == ["type=registry,ref=h/c:1", "type=registry,ref=h/c:2"]
    opts = BuildOptions.from_values(v)
    assert opts.tags == ("latest", "v1", "v2") and opts.platforms == ("linux/amd64",)


def test_plan_names_the_build_arguments_another_builder_needs(tmp_path) -> None:
    import json
    import subprocess
    import sys

    f = tmp_path / "e.toml"
    f.write_text(
        'name = "p"\n[base]\nimage = "127.0.0.1:5000/base/debian-python:bookworm"\n[python]\npackages = ["six==1.16.0"]\n'
    )
    text = subprocess.run([sys.executable, "-m", "ml_env_tasks", "plan", str(f)], capture_output=True, text=True)
    assert text.returncode == 0, text.stderr
    assert "# build argument: SOURCE_DATE_EPOCH=0" in text.stdout and "ARG SOURCE_DATE_EPOCH" in text.stdout
    js = subprocess.run(
        [sys.executable, "-m", "ml_env_tasks", "plan", str(f), "--json"], capture_output=True, text=True
    )
    assert json.loads(js.stdout)["build_args"] == {"SOURCE_DATE_EPOCH": "0"}
    env_only = tmp_path / "v.toml"
    env_only.write_text('name = "v"\n[base]\nimage = "127.0.0.1:5000/base/busybox:1"\n[env]\nA = "1"\n')
    js = subprocess.run(
        [sys.executable, "-m", "ml_env_tasks", "plan", str(env_only), "--json"], capture_output=True, text=True
    )
    assert json.loads(js.stdout)["build_args"] == {}  # ml-env runs nothing there: nothing to date


def test_an_output_that_loads_carries_annotations_without_a_push_field() -> None:
    """A builder that keeps its results (not the docker driver) loads through type=docker."""
    from ml_env_tasks.build.extras import output_spec

    got = output_spec(["r/x:1"], push=False, annotations={"a": "b"}, load=True)
    assert got == {"type": "docker", "name": "r/x:1", "annotation-manifest.a": "b"}
    assert output_spec(["r/x:1"], push=True, annotations={}, load=False)["type"] == "image"
