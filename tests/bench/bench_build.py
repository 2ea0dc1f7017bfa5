"""Build benchmarks: ratios against plain `docker buildx build`, measured in the same run.

1. No-op: an unchanged environment on a pruned daemon. ml-env (manifest HEAD, including
   Python start-up) vs `docker buildx build --cache-from type=registry --push` of the same
   Dockerfile. Goal: >= 10x faster and < 0.6 s wall.
2. Incremental: add one pip package, pruned daemon, registry cache, vs a cold build of the
   original environment. Goal: <= 0.5x.

Writes .bench/build.json. Not a test: nothing here asserts; it reports.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from _common import lab as bench_lab  # noqa: E402
from _common import write_result  # noqa: E402

from ml_env_tasks import spec  # noqa: E402
from ml_env_tasks.dockerfile import SECRET_CA, render  # noqa: E402

REPEAT = int(os.environ.get("ML_ENV_BENCH_REPEAT", "3"))


def sh(*cmd: str, quiet: bool = True) -> float:
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=quiet, text=True)
    dt = time.monotonic() - t0
    if p.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd)} failed:\n{(p.stderr or '')[-2000:]}")
    return dt


def prune(image: str | None = None) -> None:
    sh("docker", "buildx", "prune", "-af")
    if image:
        subprocess.run(["docker", "image", "rm", "-f", image], capture_output=True)


def main() -> int:
    lab = bench_lab()
    work = Path(tempfile.mkdtemp(prefix="ml-env-bench-"))
    try:
        envs = work / "envs"
        shutil.copytree(ROOT / "envs", envs, ignore=shutil.ignore_patterns("*.lock"))
        original = envs / "sklearn.toml"
        variant = envs / "sklearn-plus.toml"
        variant.write_text(
            original.read_text().replace('packages = ["tomli==2.0.2"]', 'packages = ["tomli==2.0.2", "tomli-w==1.0.0"]')
        )
        assert variant.read_text() != original.read_text()
        repo = f"bench/sklearn-{os.getpid()}"
        common = ["--registry", lab["registry"], "--repository", repo, "--network", lab["build_network"], "--quiet"]
        if lab.get("ca_bundle"):
            common += ["--ca-bundle", lab["ca_bundle"]]
        mlenv = [sys.executable, "-m", "ml_env_tasks.cli", "build"]
        env = spec.load(original)
        plan = render(env)
        image = f"{lab['registry']}/{repo}:{plan.hash}"

        print("bench: cold build of the original environment (pruned daemon, no cache)")
        prune()
        t_cold = sh(*mlenv, str(original), *common, "--cache", "none", "--force")
        print("bench: populate the registry cache")
        sh(*mlenv, str(original), *common, "--cache", "registry", "--force")

        print(f"bench: no-op, ml-env, {REPEAT}x on a pruned daemon")
        ours = []
        for _ in range(REPEAT):
            prune(image)
            ours.append(sh(*mlenv, str(original), *common))

        ctx = work / "ctx"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(plan.dockerfile)
        for rel, data in plan.files.items():
            (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
            (ctx / rel).write_bytes(data)
        baseline_cmd = [
            "docker",
            "buildx",
            "build",
            "--progress",
            "plain",
            "--network",
            lab["build_network"],
            "--cache-from",
            f"type=registry,ref={lab['registry']}/{repo}:buildcache",
            "--push",
            "-t",
            image,
            str(ctx),
        ]
        if lab.get("ca_bundle"):
            baseline_cmd[3:3] = ["--secret", f"id={SECRET_CA},src={lab['ca_bundle']}"]
        print(f"bench: no-op, docker buildx build --cache-from type=registry, {REPEAT}x on a pruned daemon")
        base = []
        for _ in range(REPEAT):
            prune(image)
            base.append(sh(*baseline_cmd))

        print("bench: add one package, pruned daemon, registry cache")
        prune(image)
        t_incr = sh(*mlenv, str(variant), *common, "--cache", "registry")

        noop_ours, noop_base = statistics.median(ours), statistics.median(base)
        result = {
            "noop": {
                "ml_env_s": noop_ours,
                "baseline_buildx_cache_from_registry_s": noop_base,
                "speedup": noop_base / noop_ours,
                "goal": ">= 10x and < 0.6 s",
                "runs": {"ml_env": ours, "baseline": base},
            },
            "add_one_package": {
                "incremental_s": t_incr,
                "cold_s": t_cold,
                "ratio": t_incr / t_cold,
                "goal": "<= 0.5",
            },
        }
        write_result(
            "build",
            result,
            f"no-op build:      ml-env {noop_ours:.3f}s vs buildx --cache-from registry {noop_base:.3f}s -> {noop_base / noop_ours:.1f}x faster",
            f"add one package:  {t_incr:.1f}s vs cold {t_cold:.1f}s -> ratio {t_incr / t_cold:.2f}",
        )
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
