"""Promotion of a ~1 GB image between the lab's two registries, against `docker buildx imagetools
create` and `skopeo copy --all` measured in the same run; and re-promotion of an image that is
already there. Goals: first copy <= 1.2x the faster baseline; re-promotion <= 0.2 s.

Every first copy is of a freshly built image whose layer neither registry has seen (skopeo's
blob-info cache would otherwise mount it from an earlier copy). Writes .bench/promote.json.
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

from ml_env_tasks.promote import PromoteOptions, promote  # noqa: E402

REPEAT = int(os.environ.get("ML_ENV_BENCH_REPEAT", "1"))
SIZE_MB = int(os.environ.get("ML_ENV_BENCH_PROMOTE_MB", "900"))


def timed(cmd: list[str]) -> float:
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd[:4])} failed:\n{p.stderr[-2000:]}")
    return time.monotonic() - t0


def fresh_image(lab: dict, tag: str) -> str:
    """A new image whose big layer no registry has seen: a fair first copy for every tool."""
    ref = f"{lab['registry']}/bench/big:{tag}"
    with tempfile.TemporaryDirectory(prefix="ml-env-bench-promote-") as td:
        (Path(td) / "Dockerfile").write_text(
            f"FROM {lab['base_image_tiny']}\nRUN dd if=/dev/urandom of=/payload bs=1M count={SIZE_MB} 2>/dev/null\n"
        )
        timed(["docker", "buildx", "build", "--no-cache", "--network", "host", "-t", ref, "--push", td])
    subprocess.run(["docker", "image", "rm", "-f", ref], capture_output=True)
    return ref


def main() -> int:
    lab = bench_lab()
    stamp = int(time.time())
    dest = lambda tool, i: f"{lab['auth_registry']}/bench/{tool}-{stamp}-{i}"  # noqa: E731
    ours, imagetools, skopeo = [], [], []
    authfile = str(Path.home() / ".docker" / "config.json")
    for i in range(REPEAT):
        print(f"bench: round {i + 1}/{REPEAT}: three fresh {SIZE_MB} MB images, one per tool")
        src = fresh_image(lab, f"ml-env-{stamp}-{i}")
        t0 = time.monotonic()
        r = promote(PromoteOptions(src, dest("ml-env", i), tags=("1",), ledger=None))
        ours.append(time.monotonic() - t0)
        assert r.copied_bytes > SIZE_MB * 2**20 * 0.9, r
        src_it = fresh_image(lab, f"imagetools-{stamp}-{i}")
        imagetools.append(
            timed(["docker", "buildx", "imagetools", "create", "-t", f"{dest('imagetools', i)}:1", src_it])
        )
        src_sk = fresh_image(lab, f"skopeo-{stamp}-{i}")
        skopeo.append(
            timed(
                [
                    "skopeo",
                    "copy",
                    "--all",
                    "--src-tls-verify=false",
                    "--dest-tls-verify=false",
                    "--authfile",
                    authfile,
                    f"docker://{src_sk}",
                    f"docker://{dest('skopeo', i)}:1",
                ]
            )  # fmt: skip
        )
    src = f"{lab['registry']}/bench/big:ml-env-{stamp}-0"
    t0 = time.monotonic()
    again = [promote(PromoteOptions(src, dest("ml-env", 0), tags=("1",), ledger=None)) for _ in range(5)]
    repromote_inproc = (time.monotonic() - t0) / 5
    assert all(a.no_op for a in again)
    cli = [sys.executable, "-m", "ml_env_tasks.cli", "promote", src, dest("ml-env", 0), "--tag", "1", "--no-ledger"]
    repromote_cli = statistics.median(timed(cli) for _ in range(5))
    o, it, sk = statistics.median(ours), statistics.median(imagetools), statistics.median(skopeo)
    faster = min(it, sk)
    result = {
        "image_mb": SIZE_MB,
        "first_copy_s": {"ml_env": o, "buildx_imagetools_create": it, "skopeo_copy_all": sk},
        "ratio_vs_faster": o / faster,
        "goal_first_copy": "<= 1.2x the faster baseline",
        "repromote_s": {"in_process": repromote_inproc, "cli": repromote_cli},
        "goal_repromote": "<= 0.2 s",
        "runs": {"ml_env": ours, "imagetools": imagetools, "skopeo": skopeo},
    }
    write_result(
        "promote",
        result,
        f"promote {SIZE_MB} MB: ml-env {o:.2f}s, imagetools create {it:.2f}s, skopeo copy --all {sk:.2f}s -> {o / faster:.2f}x the faster",
        f"re-promotion (already there): {repromote_inproc * 1000:.0f} ms in process, {repromote_cli:.2f}s as a CLI process",
    )
    return 0


if __name__ == "__main__":
    shutil.which("skopeo") or sys.exit("bench: skopeo is not installed (the lab installs it)")
    sys.exit(main())
