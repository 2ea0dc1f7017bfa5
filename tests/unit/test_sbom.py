"""The SBOM a build attaches: deterministic, CycloneDX and SPDX saying the same thing."""

from __future__ import annotations


def test_the_sbom_is_deterministic_and_lists_what_is_installed() -> None:
    from ml_env_tasks.release.sbom import Contents, cyclonedx_json, spdx_json

    c = Contents("h/r", "a" * 64, {"numpy": "2.1.3", "pip": "23.0.1"}, [("libc6", "2.36-9", "amd64")], "python:3.11")
    one, two = cyclonedx_json(c), cyclonedx_json(c)
    assert one == two  # deterministic: the same image gives the same SBOM
    assert {x["purl"] for x in one["components"] if "purl" in x} >= {
        "pkg:pypi/numpy@2.1.3",
        "pkg:deb/debian/libc6@2.36-9?arch=amd64",
    }
    s = spdx_json(c)
    assert s == spdx_json(c) and s["spdxVersion"] == "SPDX-2.3"
    assert {p["name"] for p in s["packages"]} >= {"numpy", "libc6", "python:3.11"}
