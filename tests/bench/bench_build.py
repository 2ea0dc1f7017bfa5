"""Build benchmarks, each against its baseline in the same run (``nox -s bench -- build``).

1. No-op build of an unchanged environment whose image is in the registry, wall time of the CLI
   process including interpreter start: with the spec summary remembered (a developer's second
   build) and without it (a fresh CI checkout: empty user cache). Baseline: ``docker buildx build``
   of the same Dockerfile and context in the state of a fresh CI runner (build cache pruned, no
   local image holding any of the environment's layers, the base image included), importing the
   same two registry caches ml-env writes (the exact dependency key and the environment's moving
   ref), pushing to the same registry. Checked: ml-env built nothing and answered the registry's
   digest; every step of the baseline came from the imported cache; no local image held a layer.
   Goals: <= 0.12 s, and >= 20x faster than the baseline.

Run it alone: it prunes the build cache and removes the local images that share the
environment's layers (all of them are in the registry and come back on the next pull).
2. Rebuild after adding one package, pruned daemon, registry cache, vs a cold build of the same
   changed environment (no cache, pruned). Each round adds a package no earlier round added, so
   its exact cache cannot exist. Checked: the rebuild imported the moving ref and took the layers
   before the change from it; the cold build took none. Goal: <= 0.3x.
3. Cold build with ``installer = "uv"`` vs the same environment with pip, both pruned and
   without cache. Checked: both images hold the same packages at the same versions. Goal: <= 0.8x.

Writes .bench/build.json. Exit 3 when a run did not do what its figure claims.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import (  # noqa: E402
    ROOT,
    figure,
    invalid,
    lab,
    manifest_digest,
    mlenv,
    prune_builder,
    remove_image,
    rounds,
    run,
    write,
)

# small pure-Python packages, one per round of the rebuild figure: never added before in this run
ADDED = ["tomli-w==1.0.0", "colorama==0.4.6", "idna==3.7", "attrs==23.2.0", "pyparsing==3.1.2", "six==1.16.0"]
_STEP = re.compile(r"^(#\d+) \[[^\]]*\d+/\d+\] (RUN|COPY|ADD)\b")
_FROM_CACHE = re.compile(r"^(#\d+) (CACHED$|sha256:[0-9a-f]{64} )")


def steps_from_cache(log: str) -> tuple[int, int]:
    """(steps, steps taken from a cache) in BuildKit plain progress: a step from the local cache
    says CACHED; one from an imported cache lists the blobs it pulled; a step that ran does neither."""
    steps: set[str] = set()
    cached: set[str] = set()
    for line in log.splitlines():
        if m := _STEP.match(line):
            steps.add(m.group(1))
        elif (m := _FROM_CACHE.match(line)) and m.group(1) in steps:
            cached.add(m.group(1))
    return len(steps), len(cached & steps)


def diff_ids(ref: str) -> set[str]:
    """The layers (uncompressed digests) of an image in the registry, from its config."""
    host, rest = ref.split("/", 1)
    repo, tag = rest.rsplit(":", 1)
    accept = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json"

    def get(path: str, accept: str = accept) -> dict:
        req = urllib.request.Request(f"http://{host}/v2/{repo}/{path}", headers={"Accept": accept})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    doc = get(f"manifests/{tag}")
    if "manifests" in doc:  # an index: the linux/amd64 (or first real) image
        real = [m for m in doc["manifests"] if m.get("platform", {}).get("os") != "unknown"]
        doc = get(f"manifests/{real[0]['digest']}")
    return set(get(f"blobs/{doc['config']['digest']}", "*/*")["rootfs"]["diff_ids"])


def forget_layers(layers: set[str]) -> None:
    """Remove every local image holding one of ``layers`` (the base image included), so the engine
    is what a fresh CI runner has for this build: nothing. Checked afterwards."""
    for _ in range(2):
        ids = run(["docker", "image", "ls", "-q", "--no-trunc"]).stdout.split()
        holding = []
        for i in dict.fromkeys(ids):
            got = run(["docker", "image", "inspect", "-f", "{{json .RootFS.Layers}}", i], check=False)
            if got.code == 0 and layers & set(json.loads(got.stdout or "[]") or []):
                holding.append(i)
        if not holding:
            return
        run(["docker", "image", "rm", "-f", *holding], check=False)
    invalid(f"images holding the environment's layers are still in the engine: {holding}")


def old(*paths: Path) -> None:
    t = time.time() - 120
    for p in paths:
        os.utime(p, (t, t))


def main() -> int:
    lb = lab()
    cli = mlenv()
    work = Path(tempfile.mkdtemp(prefix="ml-env-bench-build-"))
    try:
        envs = work / "envs"
        shutil.copytree(ROOT / "envs", envs, ignore=shutil.ignore_patterns("*.lock", "curated"))
        original = envs / "sklearn.toml"
        (work / "pyproject.toml").write_text("[project]\nname = 'bench'\n")
        repo = f"bench/sklearn-{os.getpid()}"
        where = ["--registry", lb["registry"], "--repository", repo]
        common = [*where, "--log-dir", str(work / "logs")]
        common += ["--network", lb["build_network"]] + (["--ca-bundle", lb["ca_bundle"]] if lb.get("ca_bundle") else [])
        figures, lines = {}, []

        # --- 1. no-op ----------------------------------------------------------------------
        print("bench: building the environment once (registry cache)")
        first = run([*cli, "build", str(original), *common, "--cache", "registry", "--json", "--quiet"]).json()
        image, digest = first["image"], first["digest"]
        if manifest_digest(image) != digest:
            invalid(f"{image} is not in the registry as {digest}")
        old(*envs.rglob("*"))
        warm_cache = work / "user-cache"
        noop = [*cli, "build", str(original), *common, "--json"]
        run(noop, env={"XDG_CACHE_HOME": str(warm_cache)})  # parses once, remembers the summary

        def noop_round(cache_home: Path) -> float:
            r = run(noop, env={"XDG_CACHE_HOME": str(cache_home)})
            out = r.json()
            if out["built"] or out["digest"] != digest:
                invalid(f"a no-op build built or answered another digest: {out}")
            return r.seconds

        n = rounds(15)
        print(f"bench: no-op, ml-env, {n} rounds with the summary remembered and {n} from an empty user cache")
        warm = [noop_round(warm_cache) for _ in range(n)]
        cold_cache = []
        for i in range(n):
            home = work / f"empty-cache-{i}"
            cold_cache.append(noop_round(home))
            shutil.rmtree(home, ignore_errors=True)

        ctx = work / "ctx"
        planned = run([*cli, "plan", str(original), *where, "--json"]).json()
        exact, moving = planned["cache"]["exact"], planned["cache"]["moving"]
        for ref in (exact, moving):
            if manifest_digest(ref) is None:
                invalid(f"the cache ref {ref} ml-env writes is not in the registry")
        # the Dockerfile ml-env built: its layers' pins resolved as the build resolved them
        how = ["--network", lb["build_network"]] + (["--ca-bundle", lb["ca_bundle"]] if lb.get("ca_bundle") else [])
        run([*cli, "plan", str(original), *where, *how, "--resolve", "--write-context", str(ctx)])
        baseline_tag = f"{lb['registry']}/{repo}:buildx-baseline"
        baseline = ["docker", "buildx", "build", "--progress", "plain", "--network", lb["build_network"]]
        if lb.get("ca_bundle"):
            baseline += ["--secret", f"id=ml-env-ca,src={lb['ca_bundle']}"]
        for k, v in (planned.get("build_args") or {}).items():  # the same build as ml-env's
            baseline += ["--build-arg", f"{k}={v}"]
        baseline += ["--cache-from", f"type=registry,ref={exact}", "--cache-from", f"type=registry,ref={moving}"]
        baseline += ["--push", "-t", baseline_tag, str(ctx)]
        nb = rounds(5)
        print(f"bench: no-op, docker buildx build --cache-from (the same two refs), {nb} rounds on a pruned daemon")
        base = []
        layers = diff_ids(image)
        for _ in range(nb):
            prune_builder()
            forget_layers(layers)
            r = run(baseline)
            steps, cached = steps_from_cache(r.stderr + r.stdout)
            if steps == 0 or cached != steps or f"importing cache manifest from {exact}" not in r.stderr:
                invalid(f"the buildx baseline was not a cache hit ({cached} of {steps} steps from the cache)")
            base.append(r.seconds)
        w, c, b = statistics.median(warm), statistics.median(cold_cache), statistics.median(base)
        figures["noop"] = figure(
            warm, base, baseline_name="docker buildx build --cache-from type=registry (exact + moving ref), pruned",
            goal="<= 0.12 s and >= 20x faster than the baseline", met=w <= 0.12 and b / w >= 20,
            speedup=b / w, fresh_checkout_s=figure(cold_cache, None, goal="(reported)", met=True)["ml_env_s"],
        )  # fmt: skip
        lines.append(f"no-op build:        ml-env {w:.3f}s (fresh checkout {c:.3f}s) vs buildx cache-from {b:.2f}s "
                     f"-> {b / w:.0f}x faster (goal <= 0.12 s, >= 20x)")  # fmt: skip

        # --- 2. add one package ------------------------------------------------------------
        nr = min(rounds(3), len(ADDED))
        print(f"bench: add one package, {nr} rounds: registry cache vs cold, both on a pruned daemon")
        incr, cold = [], []
        for i in range(nr):
            variant = envs / f"sklearn-plus{i}.toml"
            variant.write_text(
                original.read_text().replace(
                    'packages = ["tomli==2.0.2"]', f'packages = ["tomli==2.0.2", "{ADDED[i]}"]'
                )
            )
            if variant.read_text() == original.read_text():
                invalid("the variant did not change the environment")
            # the variant is built under the original's name, so its moving ref is the original's
            prune_builder()
            r = run([*cli, "build", str(variant), *common, "--cache", "registry", "--json", "--quiet"])
            out = r.json()
            if not out["built"] or moving not in out["cache_from"] or out["cached_steps"] < 3:
                invalid(f"the rebuild did not take the unchanged layers from the moving cache: {out}")
            incr.append(r.seconds)
            prune_builder()
            remove_image(out["image"])
            r = run([*cli, "build", str(variant), *common, "--cache", "none", "--force", "--json", "--quiet"])
            out = r.json()
            if not out["built"] or out["cached_steps"] != 0 or out["steps"] < 4:
                invalid(f"the cold build took layers from a cache: {out}")
            cold.append(r.seconds)
            # the moving ref goes back to the original, as if the variant had never been built
            run([*cli, "build", str(original), *common, "--cache", "registry", "--force", "--json", "--quiet"])
        i_, c_ = statistics.median(incr), statistics.median(cold)
        figures["add_one_package"] = figure(incr, cold, baseline_name="cold build of the same environment (no cache, pruned)",
                                            goal="<= 0.3x cold", met=i_ / c_ <= 0.3)  # fmt: skip
        lines.append(f"add one package:    {i_:.1f}s vs cold {c_:.1f}s -> {i_ / c_:.2f}x (goal <= 0.3x)")

        # --- 3. uv vs pip ------------------------------------------------------------------
        uv_spec = envs / "sklearn-uv.toml"
        uv_spec.write_text(original.read_text().replace("[python]\n", '[python]\ninstaller = "uv"\n'))
        nu = rounds(2)
        print(f"bench: cold build with uv vs pip, {nu} rounds each, pruned, no cache")
        uv_t, pip_t, locks = [], [], {}
        for _ in range(nu):
            for which, f in (("pip", original), ("uv", uv_spec)):
                prune_builder()
                r = run([*cli, "build", str(f), *common, "--cache", "none", "--force", "--json", "--quiet"])
                out = r.json()
                if out["cached_steps"] != 0:
                    invalid(f"the {which} cold build took layers from a cache")
                (uv_t if which == "uv" else pip_t).append(r.seconds)
                locks[which] = packages(Path(out["lock_path"]).read_text())
        if locks["uv"] != locks["pip"]:
            diff = set(locks["uv"].items()) ^ set(locks["pip"].items())
            invalid(f"uv and pip installed different packages: {sorted(diff)}")
        u, p = statistics.median(uv_t), statistics.median(pip_t)
        figures["uv_cold"] = figure(uv_t, pip_t, baseline_name="the same environment installed with pip", goal="<= 0.8x",
                                    met=u / p <= 0.8, packages=len(locks["uv"]))  # fmt: skip
        lines.append(
            f"cold build, uv:     {u:.1f}s vs pip {p:.1f}s -> {u / p:.2f}x, same {len(locks['uv'])} packages (goal <= 0.8x)"
        )

        write("build", figures, lines)
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def packages(lock: str) -> dict[str, str]:
    """name -> version of a lock, the installers' own tools left out."""
    out = {}
    for line in lock.splitlines():
        if "==" in line and not line.startswith("#"):
            name, _, ver = line.partition("==")
            if name.lower() not in ("pip", "setuptools", "wheel", "uv"):
                out[name.lower()] = ver.strip()
    return out


if __name__ == "__main__":
    sys.exit(main())
