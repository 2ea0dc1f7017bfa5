"""Serving: time from container start to the first 200 from POST /score, and requests/s on one
worker, for the example model in envs/sklearn-inference.toml. Goal: first 200 in < 3 s.

Writes .bench/serve.json. Not a test: it reports. Load goes to 127.0.0.1 only, bounded in time.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(Path(__file__).parent))

from _common import lab as bench_lab  # noqa: E402

from ml_env_tasks.build import BuildOptions  # noqa: E402
from ml_env_tasks.runs import RunOptions, train  # noqa: E402
from ml_env_tasks.serve import local  # noqa: E402

STARTS = int(os.environ.get("ML_ENV_BENCH_REPEAT", "3"))
LOAD_SECONDS = 5.0
CLIENTS = 4


def main() -> int:
    lab = bench_lab()
    opts = BuildOptions(
        registry=lab["registry"],
        network=lab["build_network"],
        ca_bundle=Path(lab["ca_bundle"]) if lab.get("ca_bundle") else None,
    )
    with tempfile.TemporaryDirectory(prefix="ml-env-bench-serve-") as td:
        run = train(
            RunOptions(
                env=str(ROOT / "envs/sklearn.toml"),
                source=ROOT / "examples/train",
                script="train.py",
                runs_dir=Path(td),
                build=opts,
            ),
            on_line=lambda _l: None,
            info=lambda _m: None,
        )
        body = json.loads((ROOT / "examples/serve/cases.jsonl").read_text().splitlines()[0])["request"]
        serve_opts = local.ServeOptions(
            env=str(ROOT / "envs/sklearn-inference.toml"),
            entry=ROOT / "examples/serve/score.py",
            models={"": run.outputs / "model"},
            port=0,
            name="bench-serve",
            build=opts,
        )
        local.resolve_image(serve_opts.env, opts)  # build or reuse before timing
        firsts = []
        for _ in range(STARTS):
            t0 = time.monotonic()
            svc = local.start(serve_opts)
            try:
                while True:
                    try:
                        if requests.post(svc.url + "/score", json=body, timeout=5).status_code == 200:
                            break
                    except requests.RequestException:
                        pass
                    if time.monotonic() - t0 > 60:
                        raise SystemExit("bench: no 200 within 60 s")
                    time.sleep(0.02)
                firsts.append(time.monotonic() - t0)
                if len(firsts) == STARTS:
                    rps = load(svc.url, body)
            finally:
                local.remove(svc)
    first = statistics.median(firsts)
    result = {
        "stack": "ml-env (starlette + uvicorn)",
        "first_200_s": first,
        "first_200_runs": firsts,
        "goal": "< 3 s",
        "requests_per_s_one_worker": rps,
        "clients": CLIENTS,
        "load_seconds": LOAD_SECONDS,
    }
    out = ROOT / ".bench" / "serve.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(
        f"serve: first 200 from POST /score {first:.2f}s after container start (goal < 3 s); {rps:.0f} requests/s on one worker"
    )
    print(f"written to {out}")
    return 0


def load(url: str, body: dict) -> float:
    stop = time.monotonic() + LOAD_SECONDS
    counts = [0] * CLIENTS

    def client(i: int) -> None:
        s = requests.Session()
        while time.monotonic() < stop:
            if s.post(url + "/score", json=body, timeout=10).status_code == 200:
                counts[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - t0)


if __name__ == "__main__":
    sys.exit(main())
