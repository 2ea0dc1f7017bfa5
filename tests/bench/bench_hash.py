"""Hashing a 1 GiB private wheel (``nox -s bench -- hash``), against ``sha256sum`` of the same
file in the same run.

First: the digest with an empty user cache, in fixed memory — the digest's own time (for the
throughput) and the peak RSS of a whole ``ml-env hash`` process of an environment naming the
wheel. Cached: the digest again, found by (path, size, mtime, inode) in the user cache.
Checked: the digest equals sha256sum's; the cached answer is that same digest; the file is in
the page cache for both tools (written just before, read once by sha256sum first).
Goals: >= 500 MB/s and RSS < 64 MB; cached <= 0.05 s. Writes .bench/hash.json.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import figure, invalid, mlenv, rounds, run, write  # noqa: E402

SIZE = int(os.environ.get("ML_ENV_BENCH_WHEEL_MB", "1024")) * 2**20
DIGEST = """
import json, sys, time
from pathlib import Path
from ml_env_tasks.safe.digests import file_sha256
t = time.perf_counter()
d = file_sha256(Path(sys.argv[1]))
print(json.dumps({"s": time.perf_counter() - t, "digest": d}))
"""


def peak_rss(cmd: list[str], env: dict[str, str], work: Path) -> tuple[float, int]:
    """(seconds, peak RSS in bytes) of one process, as GNU time reports it: measured on a child of
    ``time`` itself, so none of this (larger) benchmark process's pages are counted."""
    report = work / "time.out"
    r = run(["/usr/bin/time", "-f", "%M", "-o", str(report), *cmd], env=env)
    return r.seconds, int(report.read_text().split()[-1]) * 1024


def main() -> int:
    cli = mlenv()
    work = Path(tempfile.mkdtemp(prefix="ml-env-bench-hash-"))
    try:
        (work / "pyproject.toml").write_text("[project]\nname = 'bench'\n")
        wheel = work / "big-0.1-py3-none-any.whl"
        print(f"bench: writing a {SIZE / 2**30:.1f} GiB wheel")
        with open(wheel, "wb") as f:
            f.write(b"PK\x03\x04")
            left = SIZE - 4
            block = os.urandom(16 * 2**20)
            while left > 0:
                f.write(block[: min(left, len(block))])
                left -= min(left, len(block))
        t = time.time() - 120
        os.utime(wheel, (t, t))
        spec = work / "big.toml"
        spec.write_text(f'name = "big"\n[base]\nimage = "127.0.0.1:5000/base/debian-python:bookworm"\n'
                        f'[python]\nwheels = ["{wheel.name}"]\n')  # fmt: skip
        os.utime(spec, (t, t))

        n = rounds(3)
        print(f"bench: first hash, {n} rounds each (sha256sum, ml-env with an empty user cache)")
        base, first, rss, want = [], [], [], None
        for i in range(n):
            r = run(["sha256sum", str(wheel)])
            want = r.stdout.split()[0]
            base.append(r.seconds)
            empty = {"XDG_CACHE_HOME": str(work / f"empty-{i}")}
            out = json.loads(run([sys.executable, "-c", DIGEST, str(wheel)], env=empty).stdout)
            if out["digest"] != want:
                invalid(f"ml-env's digest {out['digest']} is not sha256sum's {want}")
            first.append(out["s"])
            _, peak = peak_rss([*cli, "hash", str(spec)], {"XDG_CACHE_HOME": str(work / f"empty-cli-{i}")}, work)
            rss.append(peak)
        warm = {"XDG_CACHE_HOME": str(work / "empty-0")}
        nc = rounds(10)
        cached = []
        for _ in range(nc):
            out = json.loads(run([sys.executable, "-c", DIGEST, str(wheel)], env=warm).stdout)
            if out["digest"] != want:
                invalid("the cached digest is not the file's")
            cached.append(out["s"])
        cli_warm = [
            peak_rss([*cli, "hash", str(spec)], {"XDG_CACHE_HOME": str(work / "empty-cli-0")}, work)[0]
            for _ in range(nc)
        ]
        f_, b_, c_ = statistics.median(first), statistics.median(base), statistics.median(cached)
        mbps = SIZE / f_ / 1e6
        peak = max(rss)
        write(
            "hash",
            {
                "first": figure(
                    first,
                    base,
                    baseline_name="sha256sum",
                    goal=">= 500 MB/s, peak RSS < 64 MB",
                    met=mbps >= 500 and peak < 64e6,
                    mb_per_s=mbps,
                    peak_rss_bytes=peak,
                    size_bytes=SIZE,
                ),  # fmt: skip
                "cached": figure(
                    cached,
                    None,
                    goal="<= 0.05 s",
                    met=c_ <= 0.05,
                    cli_process_s=figure(cli_warm, None, goal="(reported)", met=True)["ml_env_s"],
                ),  # fmt: skip
            },
            [
                f"hash 1 GiB wheel:   {mbps:.0f} MB/s ({f_:.2f}s vs sha256sum {b_:.2f}s), peak RSS of `ml-env hash` "
                f"{peak / 1e6:.0f} MB (goal >= 500 MB/s, < 64 MB)",
                f"hash, cached:       {c_ * 1000:.1f} ms (goal <= 50 ms); `ml-env hash` process {statistics.median(cli_warm):.2f}s",
            ],
        )
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
