"""A Kubernetes pod played on a Docker engine: what a kubelet does with a pod spec, as far as an
engine can, so that an emitted Job is checked by running it where there is no cluster.

What is played, from the spec and nothing else: every volume becomes a fresh engine volume (an
``emptyDir`` world-writable as kubelet makes it, ``medium: Memory`` a tmpfs; a ``configMap`` or
a ``projected`` set of ConfigMaps filled with their keys in kubelet's layout, ``..data`` links
included; a ``persistentVolumeClaim`` is the volume the caller says holds that claim), the pod's
``fsGroup`` owns what kubelet would give it, a missing ``subPath`` is made as kubelet makes it;
then the init containers in order and the containers, each with its image, ``command`` as the
entrypoint and ``args`` after it (or the image's entrypoint with ``args``), ``$(VAR)`` expanded
as Kubernetes expands it, ``env`` (``secretKeyRef`` from the caller's secrets), ``workingDir``,
``runAsUser``/``runAsGroup`` plus ``fsGroup`` as a supplementary group, the mounts (``subPath``,
``readOnly``), ``allowPrivilegeEscalation: false`` as ``no-new-privileges`` and the dropped
capabilities. Scheduling, pulling, resource limits and the API server are not played.

Everything the replay creates (containers, volumes) carries the label ``ml-env.test-replay`` and
is removed by name when it ends, whatever happened; the claims' volumes are the caller's.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from python_on_whales import docker
from python_on_whales.exceptions import DockerException, NoSuchContainer

LABEL = "ml-env.test-replay"
DEADLINE = 600  # seconds a container may run

# Run as root in the pod's image by the "kubelet": prepares the volumes (kubelet's own work).
_KUBELET = r"""
import json, os, shutil, sys
def own(path, gid, mode):
    os.lchown(path, 0, gid)
    os.chmod(path, mode)
for op in json.loads(sys.argv[1]):
    kind, root, gid = op["kind"], op["root"], op["gid"]
    if kind == "emptyDir":  # world-writable; fsGroup's group, setgid
        own(root, gid, 0o2777 if gid else 0o777)
    elif kind == "claim":  # fsGroup: the group owns it all, group-writable, folders setgid
        for d, dirs, files in os.walk(root):
            os.lchown(d, os.lstat(d).st_uid, gid)
            os.chmod(d, os.lstat(d).st_mode & 0o7777 | 0o2070)
            for f in files:
                p = os.path.join(d, f)
                if os.path.islink(p):
                    continue
                os.lchown(p, os.lstat(p).st_uid, gid)
                os.chmod(p, os.lstat(p).st_mode & 0o7777 | 0o060)
    elif kind == "files":  # a ConfigMap volume as kubelet's atomic writer leaves it
        ts = "..2026_01_01_00_00_00.000000001"
        os.mkdir(os.path.join(root, ts))
        own(os.path.join(root, ts), gid, 0o755)
        for key, src in op["files"].items():
            dst = os.path.join(root, ts, key)
            shutil.copyfile(src, dst)
            own(dst, gid, 0o644)
        os.symlink(ts, os.path.join(root, "..data"))
        for key in op["files"]:
            os.symlink(os.path.join("..data", key), os.path.join(root, key))
        own(root, gid, 0o2777 if gid else 0o777)
    elif kind == "subpath":  # a missing subPath: made by kubelet (root) with the volume's mode
        path = root
        for part in op["sub"].split("/"):
            parent, path = path, os.path.join(path, part)
            if not os.path.lexists(path):
                os.mkdir(path)
                group = os.stat(parent).st_gid if os.stat(parent).st_mode & 0o2000 else 0
                own(path, group, os.stat(root).st_mode & 0o7777)
"""


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion of command, args and env values: ``$$`` is one ``$``, a
    ``$(NAME)`` of a defined variable its value, anything else left as it is."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "$" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
            elif nxt == "(" and (end := text.find(")", i + 2)) >= 0:
                out.append(env.get(text[i + 2 : end], text[i : end + 1]))
                i = end + 1
                continue
            else:
                out.append("$" + nxt)
            i += 2
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


@dataclass
class Cluster:
    """What a pod refers to that a cluster holds: ConfigMap documents, each claim's volume on the
    engine, and Secret values by (Secret, key)."""

    configmaps: dict[str, dict[str, Any]]
    claims: dict[str, str]
    secrets: dict[tuple[str, str], str] = field(default_factory=dict)


@dataclass
class Played:
    exit_codes: dict[str, int] = field(default_factory=dict)  # container name -> exit code
    logs: dict[str, str] = field(default_factory=dict)
    volumes: dict[str, str] = field(default_factory=dict)  # pod volume name -> engine volume

    @property
    def ok(self) -> bool:
        return bool(self.exit_codes) and all(c == 0 for c in self.exit_codes.values())


@contextmanager
def replay(pod: dict[str, Any], cluster: Cluster, *, python: str, stage: Path) -> Iterator[Played]:
    """Play ``pod`` (a pod spec) to its end; yields what happened while its volumes still exist
    (read them with ``copy_out``). ``python``: an interpreter in the pod's image, for the kubelet
    helper; ``stage``: a folder of this machine for the ConfigMaps' files."""
    tag = uuid.uuid4().hex[:10]
    made_volumes: list[str] = []
    made_containers: list[str] = []
    played = Played()
    sc = pod.get("securityContext") or {}
    gid = int(sc.get("fsGroup") or 0)
    containers = [*pod.get("initContainers", []), *pod["containers"]]
    image = containers[0]["image"]
    stage.mkdir(parents=True, exist_ok=True)

    def kubelet(ops: list[dict[str, Any]], mounts: list[list[str]]) -> None:
        name = f"ml-env-replay-{tag}-kubelet-{len(made_containers)}"
        made_containers.append(name)
        docker.run(image, ["-c", _KUBELET, json.dumps(ops)], entrypoint=python, user="0:0", name=name,
                   mounts=[*mounts, ["type=bind", f"source={stage}", "target=/stage", "readonly"]],
                   labels={LABEL: tag}, remove=False)  # fmt: skip

    try:
        ops, mounts = [], []
        for vol in pod.get("volumes", []):
            name, root = vol["name"], f"/k/{vol['name']}"
            if "persistentVolumeClaim" in vol:
                played.volumes[name] = cluster.claims[vol["persistentVolumeClaim"]["claimName"]]
                if not vol["persistentVolumeClaim"].get("readOnly"):
                    ops.append({"kind": "claim", "root": root, "gid": gid})
            else:
                engine_name = f"ml-env-replay-{tag}-{name}"
                options = {}
                if (vol.get("emptyDir") or {}).get("medium") == "Memory":
                    options = {"type": "tmpfs", "device": "tmpfs"}
                docker.volume.create(engine_name, labels={LABEL: tag}, options=options)
                made_volumes.append(engine_name)
                played.volumes[name] = engine_name
                if "emptyDir" in vol:
                    ops.append({"kind": "emptyDir", "root": root, "gid": gid})
                else:
                    assert "configMap" in vol or "projected" in vol, f"volume {name}: not a kind the replay plays"
                    ops.append({"kind": "files", "root": root, "gid": gid, "files": _stage(vol, cluster, stage / name)})
            mounts.append(["type=volume", f"source={played.volumes[name]}", f"target={root}"])
        kubelet(ops, mounts)
        for c in containers:
            code, log = _run(c, pod, played, cluster, kubelet, f"ml-env-replay-{tag}-", made_containers)
            played.exit_codes[c["name"]], played.logs[c["name"]] = code, log
            if code != 0:
                break  # restartPolicy Never: the pod has failed
        yield played
    finally:
        for name in made_containers:
            try:
                docker.container.remove(name, force=True, volumes=False)
            except NoSuchContainer:
                pass  # never created
        failed = []
        for name in made_volumes:
            try:
                docker.volume.remove(name)
            except DockerException as e:
                failed.append(f"{name}: {e}")
        assert not failed, f"replay volumes left behind: {failed}"


def _stage(vol: dict[str, Any], cluster: Cluster, folder: Path) -> dict[str, str]:
    """The files of a ``configMap`` or ``projected`` volume's ConfigMaps, staged on this machine."""
    sources = [vol["configMap"]] if "configMap" in vol else [s["configMap"] for s in vol["projected"]["sources"]]
    folder.mkdir(parents=True)
    files = {}
    for src in sources:
        cm = cluster.configmaps[src["name"]]
        data = {k: v.encode() for k, v in (cm.get("data") or {}).items()}
        data |= {k: base64.b64decode(v) for k, v in (cm.get("binaryData") or {}).items()}
        for key, value in data.items():
            assert key not in files, f"two ConfigMaps give {key}"
            (folder / key).write_bytes(value)
            files[key] = f"/stage/{folder.name}/{key}"
    return files


def _run(c: dict[str, Any], pod: dict[str, Any], played: Played, cluster: Cluster, kubelet: Any, prefix: str,
         made: list[str]) -> tuple[int, str]:  # fmt: skip
    sc = {**(pod.get("securityContext") or {}), **(c.get("securityContext") or {})}
    uid, group = int(sc.get("runAsUser", 0)), int(sc.get("runAsGroup", 0))
    assert not (sc.get("runAsNonRoot") and uid == 0), "runAsNonRoot with uid 0: kubelet refuses to start it"
    env: dict[str, str] = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = expand(e["value"], env)
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = cluster.secrets[(ref["name"], ref["key"])]
    command = [expand(x, env) for x in c.get("command", [])]
    args = [expand(x, env) for x in c.get("args", [])]
    mounts, subpaths = [], []
    for m in c.get("volumeMounts", []):
        spec = ["type=volume", f"source={played.volumes[m['name']]}", f"target={m['mountPath']}", "volume-nocopy"]
        if m.get("subPath"):
            spec.append(f"volume-subpath={m['subPath']}")
            subpaths.append(({"kind": "subpath", "root": f"/k/{m['name']}", "sub": m["subPath"], "gid": 0},
                             ["type=volume", f"source={played.volumes[m['name']]}", f"target=/k/{m['name']}"]))  # fmt: skip
        if m.get("readOnly"):
            spec.append("readonly")
        mounts.append(spec)
    if subpaths:
        seen = {tuple(m) for _op, m in subpaths}
        kubelet([op for op, _m in subpaths], [list(m) for m in seen])
    name = f"{prefix}{c['name']}"
    made.append(name)
    box = docker.container.create(
        c["image"], command[1:] + args if command else args, entrypoint=command[0] if command else None,
        user=f"{uid}:{group}", groups_add=[str(sc["fsGroup"])] if sc.get("fsGroup") is not None else [],
        workdir=c.get("workingDir"), envs=env, mounts=mounts, name=name, labels={LABEL: name},
        cap_drop=(sc.get("capabilities") or {}).get("drop", []),
        security_options=["no-new-privileges"] if sc.get("allowPrivilegeEscalation") is False else [],
    )  # fmt: skip
    docker.container.start(box)
    timer = threading.Timer(DEADLINE, lambda: docker.container.kill(box))  # a hung script fails, never hangs
    timer.start()
    try:
        code = docker.container.wait(box)
    finally:
        timer.cancel()
    return code, docker.container.logs(box)


def copy_out(volume: str, path: str, dest: Path, *, image: str) -> Path:
    """A folder of an engine volume, copied to this machine (through a container never started)."""
    name = f"ml-env-replay-read-{uuid.uuid4().hex[:10]}"
    docker.container.create(image, ["true"], name=name, labels={LABEL: name},
                            mounts=[["type=volume", f"source={volume}", "target=/v", "readonly"]])  # fmt: skip
    try:
        docker.container.copy((name, f"/v/{path}".rstrip("/") + "/."), dest)
    finally:
        docker.container.remove(name, force=True)
    return dest


def copy_in(volume: str, src: Path, *, image: str) -> None:
    """A folder of this machine's into an engine volume (its files owned by root, as a cluster's
    storage would hand them over), through a container never started."""
    name = f"ml-env-replay-fill-{uuid.uuid4().hex[:10]}"
    docker.container.create(image, ["true"], name=name, labels={LABEL: name},
                            mounts=[["type=volume", f"source={volume}", "target=/v"]])  # fmt: skip
    try:
        docker.container.copy(f"{src}/.", (name, "/v"))
    finally:
        docker.container.remove(name, force=True)
