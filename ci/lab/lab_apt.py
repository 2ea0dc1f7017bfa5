"""The machine's Debian mirror, read from its own apt configuration (one-line and deb822
sources), and the packages the lab installs from it (the engine from trixie, the tools from
the machine's own release)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from lab_proc import run

APT_PACKAGES_TRIXIE = ["docker.io/trixie", "docker-cli/trixie", "containerd/trixie", "docker-buildx/trixie"]
COSIGN = "cosign/trixie"  # signing (bookworm has no cosign); the engine's packages come from trixie too
APT_PACKAGES = ["docker-registry", "skopeo", "debootstrap", "apache2-utils", "busybox-static", "iproute2"]


# --- the machine's Debian mirror ----------------------------------------------------------


def codename() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "bookworm"


def apt_sources(root: Path = Path("/etc/apt")) -> list[tuple[str, list[str], list[str]]]:
    """(URI, suites, components) of every `deb` source this machine's apt uses (one-line and deb822)."""
    out: list[tuple[str, list[str], list[str]]] = []
    files = [root / "sources.list"] + sorted((root / "sources.list.d").glob("*"))
    for f in files:
        if not f.is_file() or f.name.startswith("ml-env-lab"):
            continue
        try:
            text = f.read_text()
        except OSError:
            continue
        if f.suffix == ".list" or f.name == "sources.list":
            for raw in text.splitlines():
                words = re.sub(r"\[[^\]]*\]", "", raw.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb":
                    out.append((words[1], [words[2]], words[3:]))
        elif f.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line:
                        continue
                    k, v = line.split(":", 1)
                    fields[k.strip().lower()] = v.strip()
                if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
                    continue
                for uri in fields.get("uris", "").split():
                    out.append((uri, fields.get("suites", "").split(), fields.get("components", "").split()))
    return out


def debian_mirror(root: Path = Path("/etc/apt")) -> str:
    """The mirror this machine's apt gets its release's `main` from (not the security archive)."""
    if os.environ.get("ML_ENV_LAB_MIRROR"):
        return os.environ["ML_ENV_LAB_MIRROR"].rstrip("/")
    name = codename()
    for uri, suites, components in apt_sources(root):
        if name in suites and "main" in components and uri.startswith(("http://", "https://")):
            return uri.rstrip("/")
    raise SystemExit(
        f"[lab] no apt source for {name} main found in /etc/apt (sources.list, sources.list.d); "
        "set ML_ENV_LAB_MIRROR to a Debian mirror URL"
    )


def install_packages() -> None:
    need_engine = not (shutil.which("dockerd") and Path("/usr/libexec/docker/cli-plugins/docker-buildx").exists())
    need_tools = [p for p in ["docker-registry", "skopeo", "debootstrap", "htpasswd", "busybox"] if not shutil.which(p)]
    need_cosign = not shutil.which("cosign")
    if not need_engine and not need_tools and not need_cosign:
        return
    trixie = Path("/etc/apt/sources.list.d/ml-env-lab-trixie.list")
    if (need_engine or need_cosign) and not trixie.exists():
        trixie.write_text(
            f"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {debian_mirror()} trixie main\n"
        )
        Path("/etc/apt/preferences.d/ml-env-lab-trixie-low").write_text(
            "Package: *\nPin: release n=trixie\nPin-Priority: 100\n"
        )
    pkgs = (APT_PACKAGES_TRIXIE if need_engine else []) + ([COSIGN] if need_cosign else []) + APT_PACKAGES
    apt_install(pkgs)


def apt_install(pkgs: list[str]) -> None:
    """``apt-get update`` and install ``pkgs``, no package's init script started meanwhile."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL)
    # policy-rc.d keeps the packages' init scripts from starting a daemon we did not start
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = not policy.exists()
    if made_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *pkgs], env=env, stdout=subprocess.DEVNULL)
    finally:
        if made_policy:
            policy.unlink()
