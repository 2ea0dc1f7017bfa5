"""Layers that follow the resolution: run inside the build, standard library only.

This file is copied into the build context as it is (``ml-env/split/split.py``) and run by the
environment's own interpreter in two kinds of build stage (``build.dockerfile`` writes them):

``resolve``
    runs the installer's resolution (``pip install --dry-run --report``, or
    ``uv pip compile``) over everything the environment declares and writes one file per layer
    under ``--out``: ``NAME.txt`` for each declared top-level name, ``_rest.txt`` for what they
    pull in. Each holds ``name==version`` lines, sorted. Left out, for the ordinary install
    steps after the layers: packages the base already has (an upgrade there would delete files
    a layer cannot delete) and anything from a URL or a local file.
``install``
    installs one such file with ``--no-deps`` and moves what the installer created into
    ``--into``, keeping its path; the build copies that folder into the image with
    ``COPY --link``. A layer's bytes then depend on its own packages only, so a change to one
    line re-installs and ships the layers it touches and no other.

Nothing secret is written: the report (which can hold index URLs) goes to a tmpfs mount, the
layer files hold names and versions only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import stat
import subprocess
import sys

REST = "_rest"
ROOTS = ("/opt", "/usr", "/etc", "/var", "/root", "/home")  # where installers write (as the dating step)
_NAME = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
_PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9][A-Za-z0-9.+!_-]*)")


def canonical(name: str) -> str:
    """PEP 503's normal form: what a layer file is named after."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> set[str]:
    """The distributions this interpreter already has (the base's pip, setuptools, ...)."""
    from importlib import metadata

    return {canonical(d.metadata["Name"]) for d in metadata.distributions() if d.metadata["Name"]}


def from_report(path: str) -> list[tuple[str, str]]:
    """``(name, version)`` of what pip would install from an index (never a URL or a file)."""
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    out = []
    for item in doc.get("install", []):
        if item.get("is_direct"):
            continue
        meta = item.get("metadata", {})
        out.append((canonical(meta["name"]), meta["version"]))
    return out


def from_pins(path: str) -> list[tuple[str, str]]:
    """``(name, version)`` of ``uv pip compile``'s output; ``name @ url`` lines are left out."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if m := _PIN.fullmatch(line):
                out.append((canonical(m.group(1)), m.group(2)))
    return out


def assign(resolved: list[tuple[str, str]], named: list[str], have: set[str]) -> dict[str, list[str]]:
    """Each layer's pins: a declared name's own layer, the rest together. Every layer appears,
    empty or not, so the build's ``COPY`` of it always has a source."""
    layers: dict[str, list[str]] = {n: [] for n in named}
    layers[REST] = []
    for name, version in sorted(set(resolved)):
        if name in have:
            continue
        layers[name if name in layers else REST].append(f"{name}=={version}")
    return layers


def write_layers(layers: dict[str, list[str]], out: str) -> None:
    os.makedirs(out, exist_ok=True)
    for name, pins in layers.items():
        with open(os.path.join(out, f"{name}.txt"), "w", encoding="utf-8") as f:
            f.write("".join(p + "\n" for p in pins))


def pip_has_report(python: str) -> bool:
    """``--report`` came with pip 22.2: an older pip resolves nothing here, and every package
    is left to the ordinary install steps (one layer, as before)."""
    got = subprocess.run([python, "-m", "pip", "--version"], capture_output=True, text=True, check=False)
    m = re.match(r"pip (\d+)\.(\d+)", got.stdout)
    return m is not None and (int(m.group(1)), int(m.group(2))) >= (22, 2)


def resolve(args: argparse.Namespace) -> int:
    with open(args.named, encoding="utf-8") as f:
        named = [n for n in f.read().split() if _NAME.fullmatch(n)]
    if args.report and not pip_has_report(args.python):
        print("ml-env: this pip has no --report (pip >= 22.2): the dependencies go in one layer", file=sys.stderr)
        write_layers(assign([], named, set()), args.out)
        return 0
    code = subprocess.run(args.command, check=False).returncode
    if code != 0:
        return code
    resolved = from_report(args.report) if args.report else from_pins(args.pins)
    write_layers(assign(resolved, named, installed()), args.out)
    return 0


def _walk(root: str, dev: int) -> tuple[dict[str, int], list[str]]:
    """Every path under ``root`` on its filesystem: files and links with their ctime, and folders."""
    files: dict[str, int] = {}
    dirs: list[str] = []
    for top, subdirs, names in os.walk(root):
        keep = []
        for d in subdirs:
            p = os.path.join(top, d)
            st = os.lstat(p)
            if stat.S_ISDIR(st.st_mode) and st.st_dev == dev:
                keep.append(d)
                dirs.append(p)
            else:
                files[p] = st.st_ctime_ns  # a link to a folder, or a mount point's own entry
        subdirs[:] = keep
        for n in names:
            p = os.path.join(top, n)
            files[p] = os.lstat(p).st_ctime_ns
    return files, dirs


def snapshot() -> tuple[dict[str, int], set[str]]:
    files: dict[str, int] = {}
    dirs: set[str] = set()
    for root in ROOTS:
        if os.path.isdir(root) and not os.path.islink(root):
            f, d = _walk(root, os.lstat(root).st_dev)
            files.update(f)
            dirs.update(d)
            dirs.add(root)
    return files, dirs


def _parent_like(path: str, into: str) -> None:
    """The folders above ``path`` inside ``into``, with the image's own owners and modes."""
    parts = os.path.dirname(path).strip("/").split("/")
    cur, target = "", into
    for part in parts:
        if not part:
            continue
        cur += "/" + part
        target = os.path.join(target, part)
        if not os.path.isdir(target):
            st = os.lstat(cur)
            os.mkdir(target)
            os.chown(target, st.st_uid, st.st_gid)
            os.chmod(target, stat.S_IMODE(st.st_mode))


def _move(src: str, into: str) -> None:
    _parent_like(src, into)
    dst = os.path.join(into, src.lstrip("/"))
    try:
        os.rename(src, dst)
    except OSError:
        shutil.move(src, dst)


def collect(before: tuple[dict[str, int], set[str]], into: str) -> int:
    """Move what the install created (and copy what it changed) under ``into``; returns how many
    paths. A new folder moves whole; an old one is only the way to what is new inside it."""
    old_files, old_dirs = before
    moved = 0
    for root in ROOTS:
        if not os.path.isdir(root) or os.path.islink(root):
            continue
        dev = os.lstat(root).st_dev
        for top, subdirs, names in os.walk(root):
            keep = []
            for d in sorted(subdirs):
                p = os.path.join(top, d)
                st = os.lstat(p)
                if not stat.S_ISDIR(st.st_mode):
                    names.append(d)
                elif st.st_dev != dev:
                    continue
                elif p not in old_dirs:
                    _move(p, into)
                    moved += 1
                else:
                    keep.append(d)
            subdirs[:] = keep
            for n in sorted(names):
                p = os.path.join(top, n)
                was = old_files.get(p)
                if was is None:
                    _move(p, into)
                    moved += 1
                elif os.lstat(p).st_ctime_ns != was:
                    _parent_like(p, into)
                    shutil.copy2(p, os.path.join(into, p.lstrip("/")), follow_symlinks=False)
                    moved += 1
    return moved


def date(into: str) -> None:
    """Every path in the layer dated SOURCE_DATE_EPOCH: the same packages give the same bytes."""
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH") or 0)
    for top, subdirs, names in os.walk(into, topdown=False):
        for n in names + subdirs:
            os.utime(os.path.join(top, n), (epoch, epoch), follow_symlinks=False)
    os.utime(into, (epoch, epoch))


def install(args: argparse.Namespace) -> int:
    os.makedirs(args.into, mode=0o755, exist_ok=True)
    if args.layer is None or os.path.getsize(args.layer) > 0:
        before = snapshot()
        code = subprocess.run(args.command, check=False).returncode
        if code != 0:
            return code
        collect(before, args.into)
    date(args.into)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="split.py")
    sub = p.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("resolve")
    r.add_argument("--python", required=True)
    r.add_argument("--named", required=True)
    r.add_argument("--out", required=True)
    g = r.add_mutually_exclusive_group(required=True)
    g.add_argument("--report")
    g.add_argument("--pins")
    r.add_argument("command", nargs=argparse.REMAINDER)
    i = sub.add_parser("install")
    i.add_argument("--layer")  # a file of pins (or a wheel): an empty one installs nothing
    i.add_argument("--into", required=True)
    i.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    return resolve(args) if args.mode == "resolve" else install(args)


if __name__ == "__main__":
    sys.exit(main())
