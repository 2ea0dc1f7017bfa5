"""The lab's state folder: the auth registry's storage and its password files are root's alone,
when made and when an older lab's world-readable state is found (``up`` heals it). Run against
a temporary state folder, never the machine's lab."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import stat
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The lab's registries module (state, credentials, registries), its state in ``tmp_path``.
    Loaded as the tests load the lab, through ``lab.py`` (which puts its folder on sys.path)."""
    spec = importlib.util.spec_from_file_location("lab_state_under_test", ROOT / "ci/lab/lab.py")
    assert spec and spec.loader
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    state = tmp_path / "state"
    # each module holds its own binding of STATE and RUN: every one that has them is patched
    for name in ("lab_proc", "lab_registries"):
        module = importlib.import_module(name)
        monkeypatch.setattr(module, "STATE", state)
        monkeypatch.setattr(module, "RUN", state / "run")
    return importlib.import_module("lab_registries")


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_a_new_state_is_private(lab, monkeypatch: pytest.MonkeyPatch) -> None:
    old = os.umask(0)  # the worst umask: nothing may depend on it
    try:
        user, password = lab.auth_credentials()
    finally:
        os.umask(old)
    state = lab.STATE
    assert mode(state / "auth.json") == 0o600
    assert json.loads((state / "auth.json").read_text()) == {"user": user, "password": password}
    assert mode(state / "registry-auth") == 0o700


def test_an_older_world_readable_state_is_healed(lab) -> None:
    state = lab.STATE
    (state / "registry-auth" / "docker" / "registry").mkdir(parents=True)
    (state / "registry-auth").chmod(0o755)
    (state / "auth.json").write_text(json.dumps({"user": "mlenv", "password": "kept"}))
    (state / "htpasswd").write_text("mlenv:$2y$05$hash\n")
    for name in ("auth.json", "htpasswd"):
        (state / name).chmod(0o644)
    assert lab.auth_credentials() == ("mlenv", "kept")  # what `up` calls first: the same password
    assert mode(state / "registry-auth") == 0o700
    assert mode(state / "auth.json") == 0o600 and mode(state / "htpasswd") == 0o600
    assert (state / "htpasswd").read_text() == "mlenv:$2y$05$hash\n"


def test_the_auth_registry_storage_is_made_private_when_it_starts(lab, monkeypatch: pytest.MonkeyPatch) -> None:
    started = []
    monkeypatch.setattr(lab, "registry_answers", lambda port: bool(started))
    monkeypatch.setattr(lab, "port_in_use", lambda port: False)
    monkeypatch.setattr(lab, "start", lambda name, cmd: started.append(name) or 1)
    monkeypatch.setattr(lab, "wait_for", lambda what, probe, timeout=60.0: None)
    lab.RUN.mkdir(parents=True)
    (lab.STATE / "registry-auth").mkdir(mode=0o755)
    (lab.STATE / "registry-auth").chmod(0o755)
    lab.start_registry("auth", 5999, lab.STATE / "htpasswd")
    assert started == ["registry-auth"] and mode(lab.STATE / "registry-auth") == 0o700


def test_a_password_file_is_never_world_readable(lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """htpasswd as `up` writes it: 0600 from its creation, whatever the umask."""
    lab.STATE.mkdir(parents=True)
    target = lab.STATE / "htpasswd"
    old = os.umask(0)
    try:
        lab._write_private(target, "u:hash\n")
    finally:
        os.umask(old)
    assert mode(target) == 0o600 and target.read_text() == "u:hash\n"


def test_the_cosign_key_pair_is_private_made_once_and_remade_when_broken(lab, tmp_path: Path, lab_unavailable) -> None:
    """The lab's signing keys: the real ``cosign generate-key-pair``, folder 0700, key and password
    0600, the same pair on every ``up``, a new one when a part is missing; the password opens the key."""
    import shutil
    import subprocess

    if not shutil.which("cosign"):
        lab_unavailable("cosign is not installed (lab.py up installs it)")
    signing = importlib.import_module("lab_signing")
    state = tmp_path / "state"
    old = os.umask(0)
    try:
        first = signing.cosign_keys(state)
    finally:
        os.umask(old)
    d = state / "cosign"
    assert mode(d) == 0o700 and mode(d / "cosign.key") == 0o600 and mode(d / "password.json") == 0o600
    assert signing.cosign_keys(state) == first  # kept
    opened = subprocess.run(["cosign", "public-key", "--key", first["cosign_key"]], capture_output=True, text=True,
                            env={**os.environ, "COSIGN_PASSWORD": first["cosign_password"]})  # fmt: skip
    assert opened.returncode == 0 and opened.stdout.strip() == Path(first["cosign_pub"]).read_text().strip()
    (d / "cosign.pub").unlink()
    again = signing.cosign_keys(state)
    assert again["cosign_password"] != first["cosign_password"] and Path(again["cosign_pub"]).is_file()
