"""The lab's cosign key pair, for the tests that sign and verify releases: made once by the real
``cosign generate-key-pair`` in the lab's private state (folder 0700, files 0600), its password
random and kept beside it; ``env.json`` names the files and the password, as it does the auth
registry's (that file is 0600 too)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path

from lab_proc import STATE
from lab_registries import _write_private

KEYS = "cosign"  # a folder of the state: cosign.key, cosign.pub, password.json


def cosign_keys(state: Path | None = None) -> dict[str, str]:
    """{cosign_key, cosign_pub, cosign_password}: the pair, made on first use (or when a part is missing)."""
    d = (state or STATE) / KEYS
    if d.is_symlink():
        raise SystemExit(f"[lab] {d} is a symbolic link: remove it and run `lab.py up` again")
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    d.chmod(0o700)
    key, pub, pw = d / "cosign.key", d / "cosign.pub", d / "password.json"
    if not (key.is_file() and pub.is_file() and pw.is_file()):
        for f in (key, pub, pw):
            f.unlink(missing_ok=True)
        password = secrets.token_urlsafe(18)
        p = subprocess.run(["cosign", "generate-key-pair"], cwd=d, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "COSIGN_PASSWORD": password})  # fmt: skip
        if p.returncode != 0:
            raise SystemExit(f"[lab] cosign generate-key-pair failed: {p.stderr.strip()[-300:]}")
        _write_private(pw, json.dumps({"password": password}))
    for f in (key, pw):
        f.chmod(0o600)
    return {
        "cosign_key": str(key),
        "cosign_pub": str(pub),
        "cosign_password": json.loads(pw.read_text())["password"],
    }
