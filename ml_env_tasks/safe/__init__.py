"""The trust boundary's tools, used by every room: whole-string grammars (``grammar``), containment
of paths (``paths``), reads bounded by what they read and atomic writes (``fsutil``), JSON and TOML
nested no deeper than a bound (``untrusted``), bounded YAML (``yamlsafe``), extraction of tars from
anyone (``tars``), masking of secrets (``redact``), digests and their cache (``digests``), and the
append-only TOML logs the ledger and the versions file are (``tomllog``)."""
