"""What every benchmark shares: the lab's facts, the ml-env under test, rounds and their
statistics, checks that a baseline did what it claims, scratch registries, and the result file.

A benchmark is a script (``nox -s bench -- NAME``), not a test: it measures ml-env and the
baseline tool in the same run, several rounds each, and writes medians with min and max to
``.bench/NAME.json``. It asserts nothing about speed. It does assert that every measured run did
what its figure claims (a cache hit was a hit, a no-op built nothing, a copy arrived with the
same digest): when one did not, the figure is worthless, and the benchmark stops with
``bench INVALID: ...`` and exit 3 instead of printing it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / ".bench"


def lab() -> dict[str, Any]:
    default = Path(os.environ.get("ML_ENV_LAB_STATE", "/var/lib/ml-env-lab")) / "run" / "env.json"
    return json.loads(Path(os.environ.get("ML_ENV_LAB", default)).read_text())


def mlenv() -> list[str]:
    """The ml-env under test: the non-editable install nox made for this session (ML_ENV_BIN)."""
    b = os.environ.get("ML_ENV_BIN")
    if b:
        return [b]
    print("bench: ML_ENV_BIN is not set; measuring the source tree (run `nox -s bench` for the installed CLI)")
    return [sys.executable, "-m", "ml_env_tasks"]


def rounds(default: int) -> int:
    return max(1, int(os.environ.get("ML_ENV_BENCH_ROUNDS", default)))


def invalid(message: str) -> NoReturn:
    """The figure cannot be trusted: say why and stop (exit 3)."""
    print(f"bench INVALID: {message}", file=sys.stderr)
    raise SystemExit(3)


@dataclass(frozen=True)
class Run:
    seconds: float
    stdout: str
    stderr: str
    code: int

    def json(self) -> Any:
        try:
            return json.loads(self.stdout)
        except ValueError:
            invalid(f"expected JSON on stdout, got: {self.stdout[-500:]!r}")


def run(
    cmd: Sequence[str],
    *,
    check: bool = True,
    env: dict[str, str] | None = None,
    timeout: float = 3600,
    cwd: Path | None = None,
) -> Run:
    t0 = time.perf_counter()
    p = subprocess.run(
        list(cmd), capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd
    )
    dt = time.perf_counter() - t0
    if check and p.returncode != 0:
        invalid(f"{' '.join(cmd[:6])} exited {p.returncode}:\n{(p.stderr or p.stdout)[-3000:]}")
    return Run(dt, p.stdout, p.stderr, p.returncode)


def stats(values: Sequence[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": [round(v, 4) for v in values],
    }


def figure(
    ours: Sequence[float],
    baseline: Sequence[float] | None,
    *,
    goal: str,
    met: bool,
    baseline_name: str = "",
    **extra: Any,
) -> dict[str, Any]:
    out: dict[str, Any] = {"ml_env_s": stats(ours), "goal": goal, "met": met}
    if baseline is not None:
        out["baseline"] = baseline_name
        out["baseline_s"] = stats(baseline)
        out["ratio"] = statistics.median(ours) / statistics.median(baseline)
    out.update(extra)
    return out


def write(name: str, figures: dict[str, Any], lines: Sequence[str]) -> None:
    OUT.mkdir(exist_ok=True)
    path = OUT / f"{name}.json"
    doc = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpus": os.cpu_count(), "figures": figures}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    for line in lines:
        print(line)
    print(f"written to {path.relative_to(ROOT)}")


def prune_builder() -> None:
    """An empty BuildKit cache (what a fresh CI runner has), cache mounts included."""
    run(["docker", "buildx", "prune", "-af"])


def remove_image(ref: str) -> None:
    subprocess.run(["docker", "image", "rm", "-f", ref], capture_output=True)
    if subprocess.run(["docker", "image", "inspect", ref], capture_output=True).returncode == 0:
        invalid(f"{ref} is still in the engine after removing it")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def scratch_registry() -> Iterator[str]:
    """An empty registry of its own (the lab's docker-registry program, fresh storage, a free
    port on loopback), stopped by its PID and deleted afterwards."""
    d = Path(tempfile.mkdtemp(prefix="ml-env-bench-registry-"))
    port = free_port()
    cfg = d / "config.yml"
    cfg.write_text(
        "version: 0.1\nlog: {level: error}\n"
        f"storage: {{filesystem: {{rootdirectory: {d / 'data'}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n"
    )
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    invalid("a scratch registry did not start")
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(d, ignore_errors=True)


def manifest_digest(ref: str) -> str | None:
    """The digest a registry answers for ``host/repo:tag`` (a HEAD, as any client sees it)."""
    host, rest = ref.split("/", 1)
    repo, tag = rest.split("@", 1) if "@" in rest else rest.rsplit(":", 1)
    accept = ", ".join(
        [
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "application/vnd.docker.distribution.manifest.v2+json",
        ]
    )
    req = urllib.request.Request(f"http://{host}/v2/{repo}/manifests/{tag}", method="HEAD", headers={"Accept": accept})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.headers.get("Docker-Content-Digest")
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise


def bench_project(work: Path, name: str, base: str, *, file: str = "plain.toml", top: str = "") -> Path:
    """A project folder for a bench: its pyproject (so no config of this checkout applies) and an
    environment file ``file`` named ``name`` on ``base`` (``top``: more top-level keys)."""
    (work / "pyproject.toml").write_text("[project]\nname = 'bench'\n")
    spec = work / file
    spec.write_text(f'name = "{name}"\n{top}[base]\nimage = "{base}"\n')
    return spec
