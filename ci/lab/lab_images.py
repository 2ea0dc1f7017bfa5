"""The base images, built locally (debootstrap, busybox; no Docker Hub is reachable) and pushed
to the plain registry, the public Python name the engine resolves through its mirror, the
machine's ml-env config, and the pristine bookworm image of the quick-start test."""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

from lab_apt import debian_mirror
from lab_proc import STATE, log, ok, run
from lab_registries import PLAIN_PORT

BASE_PYTHON = f"127.0.0.1:{PLAIN_PORT}/base/debian-python:bookworm"
BASE_TINY = f"127.0.0.1:{PLAIN_PORT}/base/busybox:1"
# the public name the shipped environments use; the engine pulls Docker Hub names through
# the plain registry (its mirror), where the lab keeps BASE_PYTHON under this name too
PUBLIC_PYTHON = "python:3.11-slim-bookworm"
PUBLIC_PYTHON_MIRRORED = f"127.0.0.1:{PLAIN_PORT}/library/{PUBLIC_PYTHON}"
# the machine's ml-env config (platformdirs' site_config_dir): what builds on this machine need
SITE_CONFIG = Path(os.environ.get("ML_ENV_SITE_CONFIG") or "/etc/xdg/ml-env/config.toml")
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"


# --- base images --------------------------------------------------------------------------


def in_registry(ref: str) -> bool:
    host, rest = ref.split("/", 1)
    repo, tag = rest.rsplit(":", 1)
    req = urllib.request.Request(
        f"http://{host}/v2/{repo}/manifests/{tag}",
        method="HEAD",
        headers={
            "Accept": "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json"
        },
    )
    try:
        urllib.request.urlopen(req, timeout=5)
        return True
    except OSError:
        return False


def import_and_push(rootfs_tar: Path, ref: str, changes: list[str]) -> None:
    cmd = ["docker", "import"]
    for c in changes:
        cmd += ["--change", c]
    run(cmd + [str(rootfs_tar), ref], stdout=subprocess.DEVNULL)
    run(["docker", "push", "-q", ref], stdout=subprocess.DEVNULL)


def debootstrap_tar(cache: Path, include: str, what: str) -> None:
    """A minbase bookworm root file system with ``include``, as a tar cached at ``cache``; apt
    inside it talks plain http to this machine's mirror, and its package caches are emptied."""
    if cache.exists():
        return
    mirror = debian_mirror()
    rootfs = cache.with_suffix(".rootfs")
    shutil.rmtree(rootfs, ignore_errors=True)
    log(f"debootstrap {what} (about a minute)")
    run(["debootstrap", "--variant=minbase", f"--include={include}", "bookworm", str(rootfs), mirror],
        stdout=subprocess.DEVNULL)  # fmt: skip
    (rootfs / "etc/apt/sources.list").write_text(f"deb {mirror} bookworm main\n")
    for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for f in (rootfs / sub).glob("*"):
            if f.is_file():
                f.unlink()
    tmp = cache.with_suffix(".tmp")
    run(["tar", "-C", str(rootfs), "-cf", str(tmp), "."], quiet=True)
    tmp.rename(cache)
    shutil.rmtree(rootfs, ignore_errors=True)


def base_python() -> None:
    if in_registry(BASE_PYTHON):
        return
    cache = STATE / "debian-python-bookworm.tar"
    debootstrap_tar(cache, "python3,python3-venv,python3-pip,ca-certificates", "bookworm with python3")
    import_and_push(
        cache,
        BASE_PYTHON,
        [
            "ENV LANG=C.UTF-8",
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            'CMD ["python3"]',
        ],
    )


def public_python() -> None:
    """BASE_PYTHON under the official image's name, byte for byte (the same digest)."""
    if in_registry(PUBLIC_PYTHON_MIRRORED):
        return
    run(
        ["skopeo", "copy", "-q", "--src-tls-verify=false", "--dest-tls-verify=false",
         f"docker://{BASE_PYTHON}", f"docker://{PUBLIC_PYTHON_MIRRORED}"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


def write_site_config() -> None:
    """The machine's ml-env config: builds here use the host network (the package proxy is on
    it) and the host's CA bundle. Keys someone else wrote are kept; ours are replaced."""
    ours = {"network": "host"}
    if Path(HOST_CA).exists():
        ours["ca_bundle"] = HOST_CA
    kept = []
    if SITE_CONFIG.exists():
        for line in SITE_CONFIG.read_text().splitlines():
            key = line.split("=", 1)[0].strip()
            if line.startswith("#") or key not in ours:
                kept.append(line)
    body = "\n".join(x for x in kept if x.strip() and not x.startswith("# written by"))
    text = "# written by the ml-env lab (ci/lab/lab.py): what builds on this machine need\n"
    text += "".join(f'{k} = "{v}"\n' for k, v in ours.items()) + (body + "\n" if body else "")
    SITE_CONFIG.parent.mkdir(parents=True, exist_ok=True)
    tmp = SITE_CONFIG.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(SITE_CONFIG)


def base_tiny() -> None:
    if in_registry(BASE_TINY):
        return
    busybox = shutil.which("busybox")
    if busybox is None:
        raise SystemExit("[lab] busybox (package busybox-static) is missing")
    rootfs = STATE / "rootfs-busybox"
    shutil.rmtree(rootfs, ignore_errors=True)
    (rootfs / "bin").mkdir(parents=True)
    for d in ("tmp", "etc", "root"):
        (rootfs / d).mkdir()
    (rootfs / "tmp").chmod(0o1777)
    shutil.copy2(busybox, rootfs / "bin/busybox")
    out = run([busybox, "--list"], capture_output=True, quiet=True).stdout.split()
    for applet in out:
        if applet != "busybox":
            (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n")
    (rootfs / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
    tar = STATE / "busybox.tar"
    run(["tar", "-C", str(rootfs), "-cf", str(tar), "."], quiet=True)
    import_and_push(tar, BASE_TINY, ["ENV PATH=/bin", 'CMD ["sh"]'])
    shutil.rmtree(rootfs, ignore_errors=True)
    tar.unlink()


def pristine_image() -> str:
    """A local image of a pristine Debian bookworm as a server has it: python3 and nothing for
    Python packaging (no pip, no venv module). For the test of the README's quick start; built
    on demand (debootstrap, about a minute, cached under STATE), never pushed."""
    ref = "ml-env-lab/pristine-bookworm:python3"
    if ok(["docker", "image", "inspect", ref]):
        return ref
    cache = STATE / "debian-bookworm-pristine.tar"
    debootstrap_tar(cache, "python3", "a pristine bookworm with python3")
    run(["docker", "import", "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
         "--change", "ENV LANG=C.UTF-8", str(cache), ref], stdout=subprocess.DEVNULL)  # fmt: skip
    return ref
