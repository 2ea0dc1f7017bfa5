"""What ml-env itself puts into images, pinned: it enters the content hash of every environment
that uses it (the inference server and its packages, the uv version)."""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = [
    "UV_VERSION", "INFERENCE_PACKAGES", "AZUREML_PACKAGES", "SERVER_SOURCE", "SPLIT_SOURCE", "inference_stack", "split_stack",
]  # fmt: skip

UV_VERSION = "0.13.9"  # python.installer = "uv" (pinned: it enters the hash)
# the scoring server's own dependencies, pinned: the inference layer is reproducible
INFERENCE_PACKAGES = ("starlette==1.10.0", "uvicorn==0.54.0")
SERVER_SOURCE = Path(__file__).resolve().parents[1] / "serve" / "server.py"
# python.layers = "split": the script that resolves and installs a layer per declared package
SPLIT_SOURCE = Path(__file__).resolve().parent / "split.py"
# inference.server = "azureml": Microsoft's server, pinned (it brings inference-schema ~= 1.8)
AZUREML_PACKAGES = ("azureml-inference-server-http==1.5.1",)


def inference_stack(server: str = "builtin") -> dict[str, object]:
    """What the inference layer is made of, for the hash: its packages and the server's source.
    The built-in server's entry keeps its old shape, so existing environments keep their hashes."""
    if server == "azureml":
        return {"server": "azureml", "packages": list(AZUREML_PACKAGES)}
    return {
        "packages": list(INFERENCE_PACKAGES),
        "server_sha256": hashlib.sha256(SERVER_SOURCE.read_bytes()).hexdigest(),
    }


def split_stack() -> dict[str, str]:
    """What ``python.layers = "split"`` adds to the hash: the script that lays the layers out."""
    return {"split_sha256": hashlib.sha256(SPLIT_SOURCE.read_bytes()).hexdigest()}
