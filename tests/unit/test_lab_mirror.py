"""The lab reads the Debian mirror from the machine's own apt configuration (both formats)."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _lab_module(name: str):
    """A module of the lab, found as ``lab.py`` finds it (it puts its folder on sys.path)."""
    spec = importlib.util.spec_from_file_location("lab", ROOT / "ci/lab/lab.py")
    assert spec and spec.loader
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def lab():
    """Where the Debian mirror is read (``codename``, ``debian_mirror``)."""
    return _lab_module("lab_apt")


@pytest.fixture(scope="module")
def images():
    """Where the machine's ml-env config is written (``SITE_CONFIG``, ``write_site_config``)."""
    return _lab_module("lab_images")


def test_deb822_sources_skip_security_and_disabled(lab, tmp_path: Path, monkeypatch) -> None:
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "a.sources").write_text(
        "Types: deb\nURIs: http://mirror.invalid/security\nSuites: bookworm-security\nComponents: main\n\n"
        "Types: deb\nURIs: http://off.invalid/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n\n"
        "Types: deb deb-src\n# a comment\nURIs: http://corp.invalid/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main contrib\n"
    )
    monkeypatch.setattr(lab, "codename", lambda: "bookworm")
    monkeypatch.delenv("ML_ENV_LAB_MIRROR", raising=False)
    assert lab.debian_mirror(tmp_path) == "http://corp.invalid/debian"


def test_one_line_sources_with_options(lab, tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.invalid/debian bookworm main\n"
        "deb-src http://src.invalid/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://one.invalid/debian bookworm main\n"
    )
    (tmp_path / "sources.list.d").mkdir()
    # the lab's own trixie source is never taken for the machine's mirror
    (tmp_path / "sources.list.d/ml-env-lab-trixie.list").write_text("deb http://lab.invalid/debian bookworm main\n")
    monkeypatch.setattr(lab, "codename", lambda: "bookworm")
    monkeypatch.delenv("ML_ENV_LAB_MIRROR", raising=False)
    assert lab.debian_mirror(tmp_path) == "http://one.invalid/debian"


def test_no_source_is_one_clear_line(lab, tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "sources.list").write_text("deb http://x.invalid/debian trixie main\n")
    monkeypatch.setattr(lab, "codename", lambda: "bookworm")
    monkeypatch.delenv("ML_ENV_LAB_MIRROR", raising=False)
    with pytest.raises(SystemExit, match="no apt source for bookworm main"):
        lab.debian_mirror(tmp_path)


def test_no_host_name_in_the_lab_code() -> None:
    files = sorted((ROOT / "ci/lab").glob("*.py"))
    assert ROOT / "ci/lab/lab.py" in files and len(files) > 1
    for path in files:
        assert "debian.org" not in path.read_text(), path.name


def test_site_config_keeps_what_others_wrote(images, tmp_path: Path, monkeypatch) -> None:
    """The lab's machine config: its two keys, replaced on each `up`; anyone else's keys kept; the
    result is a config file ml-env reads."""
    site = tmp_path / "xdg" / "ml-env" / "config.toml"
    monkeypatch.setattr(images, "SITE_CONFIG", site)
    images.write_site_config()
    site.write_text(site.read_text().replace('network = "host"', 'network = "bridge"') + 'runs_dir = "/srv/runs"\n')
    images.write_site_config()
    text = site.read_text()
    assert text.count("network") == 1 and 'network = "host"' in text and 'runs_dir = "/srv/runs"' in text
    monkeypatch.setenv("ML_ENV_SITE_CONFIG", str(site))
    monkeypatch.setenv("ML_ENV_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.chdir(tmp_path)
    from ml_env_tasks.settings.files import load_layers

    layers = load_layers(tmp_path)
    assert layers.lookup("network") == ("host", f"site ({site})")
    assert layers.lookup("runs_dir") == ("/srv/runs", f"site ({site})")
