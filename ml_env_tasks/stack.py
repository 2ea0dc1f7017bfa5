"""What ml-env itself puts into images, pinned: it enters the content hash of every environment
that uses it (the inference server and its packages, the uv version)."""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["UV_VERSION", "INFERENCE_PACKAGES", "SERVER_SOURCE", "inference_stack"]

UV_VERSION = "0.13.9"  # python.installer = "uv" (pinned: it enters the hash)
# the scoring server's own dependencies, pinned: the inference layer is reproducible
INFERENCE_PACKAGES = ("starlette==1.10.0", "uvicorn==0.54.0")
SERVER_SOURCE = Path(__file__).parent / "serve" / "server.py"


def inference_stack() -> dict[str, object]:
    """What the inference layer is made of, for the hash: its packages and the server's source."""
    return {
        "packages": list(INFERENCE_PACKAGES),
        "server_sha256": hashlib.sha256(SERVER_SOURCE.read_bytes()).hexdigest(),
    }
