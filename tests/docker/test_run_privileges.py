"""A run cannot hand the host privileges: its container has no capability and cannot gain any
(``no-new-privileges``), as root or not, and what it leaves in ``runs/<id>/outputs`` (a bind
mount of this machine's folder) carries no setuid/setgid bit, device, FIFO or socket."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from ml_env_tasks.runs import RunOptions, train

from .test_train import PLAIN

pytestmark = pytest.mark.docker

# tries everything a hostile script would to leave a way up on the host
PLANT = r"""
import json, os, shutil, socket, sys
out = os.environ["ML_ENV_OUTPUT_DIR"]
status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\t" in line)
got = {k: status[k].strip() for k in ("CapEff", "CapPrm", "CapBnd", "NoNewPrivs")}
got["uid"] = os.getuid()
try:
    os.mknod(out + "/null", 0o666 | 0o020000, os.makedev(1, 3))
    got["mknod"] = "made"
except OSError as e:
    got["mknod"] = e.errno
shutil.copy(sys.executable, out + "/py")
os.chmod(out + "/py", 0o6755)
got["planted_mode"] = oct(os.stat(out + "/py").st_mode)
os.mkdir(out + "/sub")
os.chmod(out + "/sub", 0o2755)
os.mkfifo(out + "/sub/pipe")
s = socket.socket(socket.AF_UNIX)
s.bind(out + "/sock")
open(out + "/model.bin", "wb").write(b"weights")
json.dump(got, open(out + "/got.json", "w"))
"""


@pytest.mark.parametrize("user", [None, "1234:1234"], ids=["as-the-invoking-user", "as-another-uid"])
def test_a_run_holds_no_privilege_and_leaves_none(ws, tmp_path: Path, user: str | None) -> None:
    env_file = ws.spec(PLAIN.format(base=ws.lab["base_image_python"]), name="plain.toml")
    src = ws.dir / "src"
    src.mkdir()
    (src / "plant.py").write_text(PLANT)
    said: list[str] = []
    o = RunOptions(environment=str(env_file), source=src, script="plant.py", runs_dir=ws.dir / "runs",
                   build=ws.opts(), user=user)  # fmt: skip
    r = train(o, on_line=lambda _l: None, info=said.append)
    assert r.status == "completed", (r.run_dir / "log.txt").read_text()
    got = json.loads((r.outputs / "got.json").read_text())
    assert got["uid"] == (os.getuid() if user is None else 1234)  # as root on the lab's CI
    assert got["CapEff"] == got["CapPrm"] == got["CapBnd"] == "0000000000000000", got
    assert got["NoNewPrivs"] == "1"
    assert got["mknod"] != "made"  # no CAP_MKNOD: no device node, root or not
    assert int(got["planted_mode"], 8) & 0o6000 == 0o6000  # the script did set the bits...
    py = (r.outputs / "py").stat()
    assert py.st_mode & (stat.S_ISUID | stat.S_ISGID) == 0  # ...and they are gone on the host
    assert (r.outputs / "sub").stat().st_mode & stat.S_ISGID == 0
    assert not (r.outputs / "sub" / "pipe").exists() and not (r.outputs / "sock").exists()
    assert not (r.outputs / "null").exists()
    assert (r.outputs / "model.bin").read_bytes() == b"weights"  # the run's real outputs stay
    warnings = [m for m in said if m.startswith("warning: outputs/")]
    assert sorted(warnings) == [
        "warning: outputs/py: setuid/setgid bit left by the run: cleared",
        "warning: outputs/sock: a socket left by the run: removed",
        "warning: outputs/sub/pipe: a FIFO left by the run: removed",
        "warning: outputs/sub: setuid/setgid bit left by the run: cleared",
    ], said
    recorded = {f["path"] for f in json.loads((r.run_dir / "run.json").read_text())["outputs"]}
    assert recorded == {"got.json", "model.bin", "py"}
