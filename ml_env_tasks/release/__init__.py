"""Releases: promotion by digest (``promote``, blobs and manifests by ``copy``), the release ledger
(``ledger`` on disk, ``ledger_oci`` in a registry), the SBOM and provenance a build or a package
attaches (``sbom``, ``provenance``), smoke-test records and the gates that read them (``attest``),
and ``verify``, which checks an image against all of them."""
