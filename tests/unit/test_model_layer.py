"""A model folder as a layer: its files under /var/azureml-models, or under a subfolder named as
``serve --model NAME=DIR`` mounts it (Azure's layout for a model registered from a folder)."""

from __future__ import annotations

import tarfile
from pathlib import Path

from ml_env_tasks.models import model_layer


def names(tar: Path) -> list[str]:
    with tarfile.open(tar) as t:
        return [m.name for m in t.getmembers() if m.isfile()]


def test_a_named_model_sits_under_its_name(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "factor.txt").write_text("2")
    model_layer(tmp_path / "m", tmp_path / "plain.tar", warn=lambda _m: None)
    model_layer(tmp_path / "m", tmp_path / "named.tar", warn=lambda _m: None, under="model")
    assert names(tmp_path / "plain.tar") == ["var/azureml-models/factor.txt"]
    assert names(tmp_path / "named.tar") == ["var/azureml-models/model/factor.txt"]
