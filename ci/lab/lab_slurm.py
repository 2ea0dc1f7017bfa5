"""A two-node Slurm cluster, for the tests and benchmarks that train on one: real daemons from
Debian's packages (munge, slurmctld, slurmd), started, checked, healed and stopped by PID like
the rest of the lab.

- **node1** is this machine: its slurmd runs here and its jobs use the lab's engine.
- **node2** is the second engine's namespace: its slurmd runs in that network namespace (it
  answers on REMOTE_NS_IP) and a private mount namespace where the checkout, /tmp, /root and
  /home are empty, as on another machine; its jobs use the second engine (a task prolog points
  ``DOCKER_HOST`` there, with a copy of the client certificates it can see).
- The controller listens on REMOTE_HOST_IP, which both nodes reach; munge's key is the lab's
  own (0400 in a 0700 folder); everything lives in ``SLURM`` (beside the lab's state, not in it:
  node2 must see it, and the lab's state is hidden there).
- **The shared folder** ``SLURM/shared`` is what a compute target names as its shared folder
  (``shared =``): both nodes and both engines see it at the same path, as a cluster's shared
  file system.

Clients find the cluster with ``SLURM_CONF`` (``env.json``: ``slurm_conf``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

from lab_apt import apt_install
from lab_proc import PROGRAMS, RUN, STATE, log, ok, output, read_pid, start, stop, wait_for
from lab_remote import REMOTE, REMOTE_HOST_IP, REMOTE_NETNS, REMOTE_NS_IP, REMOTE_PORT

SLURM = Path(f"{STATE}-slurm")
CONF = SLURM / "slurm.conf"
SHARED = SLURM / "shared"
CTLD_PORT, SLURMD_PORT = 16817, 16818
PARTITION = "lab"
NODES = {"node1": REMOTE_HOST_IP, "node2": REMOTE_NS_IP}
DAEMONS = ("munged", "slurmctld", "slurmd-node1", "slurmd-node2")
PROGRAMS.update({"munged": "munged", "slurmctld": "slurmctld", "slurmd-node1": "slurmd", "slurmd-node2": "slurmd"})
HIDDEN_ON_NODE2 = ("/tmp", "/root", "/home", "/work")
APT = ["slurmctld", "slurmd", "slurm-client", "munge", "podman", "crun"]


def installed() -> bool:
    return all(shutil.which(t) for t in ("slurmctld", "slurmd", "sbatch", "munged", "podman"))


def _config() -> str:
    host = socket.gethostname().split(".")[0]
    lines = [
        "ClusterName=mlenvlab",
        f"SlurmctldHost={host}({REMOTE_HOST_IP})",
        f"SlurmctldPort={CTLD_PORT}",
        f"SlurmdPort={SLURMD_PORT}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        f"AuthInfo=socket={SLURM / 'munge' / 'munge.socket'}",
        "CredType=cred/munge",
        f"StateSaveLocation={SLURM / 'ctld'}",
        f"SlurmdSpoolDir={SLURM / 'spool' / '%n'}",
        f"SlurmctldPidFile={SLURM / 'slurmctld.pid'}",
        f"SlurmdPidFile={SLURM / 'slurmd-%n.pid'}",
        f"SlurmctldLogFile={SLURM / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={SLURM / 'log' / 'slurmd-%n.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "SchedulerType=sched/backfill",
        "ReturnToService=2",
        "MpiDefault=none",
        "MailProg=/bin/true",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "MinJobAge=3600",  # a finished job stays in `scontrol show job` for an hour (no accounting here)
        "KillWait=5",
        f"TaskProlog={SLURM / 'task-prolog.sh'}",
        *(f"NodeName={n} NodeAddr={a} CPUs=2 RealMemory=4000 State=UNKNOWN" for n, a in NODES.items()),
        f"PartitionName={PARTITION} Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP",
    ]
    return "\n".join(lines) + "\n"


def _prolog() -> str:
    certs = SLURM / "docker-node2"
    return (
        "#!/bin/sh\n# node2's jobs use the second engine (the lab's stand-in for that node's own)\n"
        'case "$SLURMD_NODENAME" in\n'
        f"node2) echo 'export DOCKER_HOST=tcp://{REMOTE_NS_IP}:{REMOTE_PORT}'; echo 'export DOCKER_TLS_VERIFY=1';"
        f" echo 'export DOCKER_CERT_PATH={certs}' ;;\nesac\n"
    )


def _files() -> None:
    for d in ("ctld", "spool/node1", "spool/node2", "log"):
        (SLURM / d).mkdir(parents=True, exist_ok=True)
    SLURM.chmod(0o755)
    key_dir = SLURM / "munge-key"
    key_dir.mkdir(mode=0o700, exist_ok=True)
    key_dir.chmod(0o700)
    (SLURM / "munge").mkdir(mode=0o755, exist_ok=True)
    key = key_dir / "munge.key"
    if not key.exists():
        with open("/dev/urandom", "rb") as r:
            data = r.read(1024)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT, 0o400)
        with open(fd, "wb") as f:
            f.write(data)
    SHARED.mkdir(exist_ok=True)
    SHARED.chmod(0o1777)  # every user's runs, as /tmp: each run's own folder is its user's
    certs = SLURM / "docker-node2"
    certs.mkdir(mode=0o700, exist_ok=True)
    for name in ("ca.pem", "cert.pem", "key.pem"):
        src = REMOTE / "tls" / "client" / name
        if src.exists() and (not (certs / name).exists() or (certs / name).read_bytes() != src.read_bytes()):
            shutil.copyfile(src, certs / name)
            (certs / name).chmod(0o600)
    for path, text, mode in ((CONF, _config(), 0o644), (SLURM / "task-prolog.sh", _prolog(), 0o755)):
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        path.chmod(mode)


PODMAN_CONF = Path("/etc/containers/containers.conf")
PODMAN_MARK = "# written by the ml-env lab"


def podman_config() -> None:
    """The machine's podman settings, for the podman launcher on both nodes: a process without
    CAP_SYS_RESOURCE (this machine's) cannot raise RLIMIT_NOFILE to podman's default (1048576),
    and crun refuses this machine's hybrid cgroups, so podman runs runc with the hard limit the
    lab itself has. A containers.conf someone else wrote is left alone."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 32768)  # podman's own default, never above ours
    text = (f"{PODMAN_MARK}: podman for the Slurm launcher (lab_slurm.py)\n[containers]\n"
            f'default_ulimits = ["nofile={hard}:{hard}", "nproc={nproc}:{nproc}"]\n\n[engine]\nruntime = "runc"\n')  # fmt: skip
    if PODMAN_CONF.exists() and not PODMAN_CONF.read_text().startswith(PODMAN_MARK):
        log(f"{PODMAN_CONF} is not the lab's: left as it is (the podman launcher may fail here)")
        return
    if not PODMAN_CONF.exists() or PODMAN_CONF.read_text() != text:
        PODMAN_CONF.parent.mkdir(parents=True, exist_ok=True)
        PODMAN_CONF.write_text(text)


def nodes_idle() -> bool:
    code, text = output(["env", f"SLURM_CONF={CONF}", "sinfo", "-h", "-N", "-o", "%N %t"], timeout=10)
    states = dict(line.split() for line in text.splitlines() if len(line.split()) == 2) if code == 0 else {}
    return all(states.get(n) in ("idle", "mix", "alloc") for n in NODES)


def health() -> list[tuple[str, bool, str]]:
    checks: list[tuple[str, bool, str]] = []
    if not installed():
        return [("slurm", False, "slurm-wlm/munge/podman are not installed (lab.py up installs them)")]
    for name in DAEMONS:
        pid = read_pid(name)
        checks.append((f"slurm {name}", pid is not None, f"pid {pid}" if pid else "not running"))
    code, text = output(["env", f"SLURM_CONF={CONF}", "sinfo", "-h", "-N", "-o", "%N %t"], timeout=10)
    checks.append(("slurm nodes", code == 0 and nodes_idle(), " ".join(text.split()) if text else "no answer"))
    return checks


def up() -> None:
    """Install what is missing, write the files, start what is not running, wait for both nodes."""
    if not installed():
        apt_install(APT)  # no package's init script starts a munged or slurmd the lab does not own
    _files()
    podman_config()
    if read_pid("munged") is None:
        sock = SLURM / "munge" / "munge.socket"
        start("munged", ["munged", "-F", "-f", f"--key-file={SLURM / 'munge-key' / 'munge.key'}",
                         f"--socket={sock}", f"--pid-file={SLURM / 'munge' / 'munged.pid'}",
                         f"--log-file={SLURM / 'log' / 'munged.log'}", f"--seed-file={SLURM / 'munge-key' / 'seed'}"])  # fmt: skip
        wait_for("munged", lambda: ok(["munge", "-S", str(sock), "-n"], timeout=5), 30)
    if read_pid("slurmctld") is None:
        start("slurmctld", ["slurmctld", "-D", "-f", str(CONF)])
    if read_pid("slurmd-node1") is None:
        start("slurmd-node1", ["slurmd", "-D", "-N", "node1", "-f", str(CONF)])
    if read_pid("slurmd-node2") is None:
        hide = " ".join(HIDDEN_ON_NODE2)
        script = (f"for d in {hide}; do mount -t tmpfs -o mode=0755,size=4g tmpfs $d; done; chmod 1777 /tmp; "
                  'exec "$@"')  # fmt: skip
        start("slurmd-node2", ["nsenter", f"--net=/var/run/netns/{REMOTE_NETNS}", "unshare", "--mount",
                               "--propagation", "private", "sh", "-c", script, "sh",
                               "slurmd", "-D", "-N", "node2", "-f", str(CONF)])  # fmt: skip
    deadline = time.monotonic() + 60
    while not nodes_idle():
        if time.monotonic() > deadline:
            raise SystemExit(f"[lab] the Slurm nodes did not come up in 60s; see {SLURM / 'log'} and {RUN}")
        # a node that was down (a restart of its slurmd) is taken back
        ok(["env", f"SLURM_CONF={CONF}", "scontrol", "update", "nodename=node[1-2]", "state=resume"], timeout=10)
        time.sleep(0.5)
    log(f"slurm: nodes {', '.join(NODES)} idle (SLURM_CONF={CONF})")


def down() -> None:
    for name in reversed(DAEMONS):
        stop(name)


def env() -> dict[str, object]:
    return {
        "slurm_conf": str(CONF),
        "slurm_shared": str(SHARED),
        "slurm_partition": PARTITION,
        "slurm_nodes": {n: a for n, a in NODES.items()},
    }


if __name__ == "__main__":  # pragma: no cover - for a person: the cluster's state
    print(json.dumps({"checks": health(), **env()}, indent=2))
