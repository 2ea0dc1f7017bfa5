"""The options several commands share, declared once each (see ``settings.options`` for what a
declaration holds and how a value is resolved): where an image lives, how it is built, a run's
limits, a service's, a smoke test's, a promotion's, signing and whom a gate trusts, and the
environments commands run in by default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .options import CACHE_BACKENDS, Option

__all__ = [
    "BUILD_WHERE",
    "BUILD_HOW",
    "BUILD_ONLY",
    "RUN",
    "SERVE",
    "SMOKE",
    "PROMOTE",
    "TESTED",
    "SIGN",
    "TRUST",
    "DEFAULT_TRAIN_ENV",
    "TRAIN_ENV",
    "INFERENCE_ENV",
    "VERSIONS",
    "REBUILD",
    "SPEC_ENV",
    "MODEL_REPOSITORY",
    "MODEL_SOURCE_REPOSITORY",
    "PACKAGE_REPOSITORY",
    "COMPUTE",
]


def O(name: str, *flags: str, **kw: Any) -> Option:  # noqa: E743, N802 - a short constructor for the tables below
    return Option(name, flags, **kw)


# where an environment's image lives (every command that names an environment)
BUILD_WHERE = (
    O("registry", "--registry", env="ML_ENV_REGISTRY", config="registry",
      help="registry host[:port] the image lives in (without it the image stays in the engine)"),
    O("repository", "--repository", env="ML_ENV_REPOSITORY", config="repository",
      help="repository in the registry; {name} is the environment's name (default ml-envs/{name})"),
    O("pin_base", "--pin-base", kind="flag", default=False, help="hash the base tag's digest (a moved tag means a new hash)"),
    O("locked", "--locked", kind="flag", default=False, help="install exactly the lock file beside the spec"),
    O("insecure", "--insecure", kind="flag", default=False, config="insecure",
      help="allow plain HTTP to a registry that is not on loopback"),
)  # fmt: skip

# how it is built
BUILD_HOW = (
    O("cache", "--cache", kind="choice", choices=CACHE_BACKENDS, default="auto", env="ML_ENV_CACHE", config="cache",
      help="BuildKit cache backend (auto: registry, else local, else inline)"),
    O("cache_ref", "--cache-ref", help="registry cache reference (default <namespace>/buildcache:<dependency key>)"),
    O("cache_dir", "--cache-dir", kind="path", help="directory for --cache local"),
    O("ca_bundle", "--ca-bundle", kind="path", env="ML_ENV_CA_BUNDLE", config="ca_bundle",
      help="extra CA bundle for pip during the build (a build secret, never stored in the image)"),
    O("network", "--network", env="ML_ENV_BUILD_NETWORK", config="network", help="build network, e.g. host"),
    O("build_on_check_error", "--build-on-check-error", kind="flag", default=False,
      help="build when the 'already built?' check fails instead of stopping"),
    O("log_dir", "--log-dir", kind="path", default=lambda: Path(".ml-env/logs"), config="log_dir",
      help="where build logs are saved"),
    O("builder", "--builder", env="ML_ENV_BUILDER", config="builder",
      help="buildx builder to build with, any driver; none given: the current one"),
    O("compression", "--compression", kind="choice", choices=("gzip", "zstd"), default="gzip",
      env="ML_ENV_COMPRESSION", config="compression",
      help="how a pushed image's layers are compressed: gzip (every engine pulls it) or zstd (OCI media types; "
           "engines with containerd's image store); an image already in the registry is reused as it is"),
)  # fmt: skip

BUILD_ONLY = (
    O("force", "--force", kind="flag", default=False, help="rebuild even if the image exists"),
    O("upgrade", "--upgrade", kind="flag", default=False,
      help="re-resolve unpinned packages (no cache for the build) and rewrite the lock"),
    O("check_reproducible", "--check-reproducible", kind="flag", default=False,
      help="build a second time with no cache and compare: name the files that differ (exit 1 if any)"),
    O("tags", "--tag", kind="list", gha="tags", metavar="TAG", words=True,
      help="extra tag, TAG or host/repository:TAG (several allowed); applied to a reused image too"),
    O("labels", "--label", kind="list", commas=False, gha="labels", metavar="KEY=VALUE",
      help="extra image label (one per line in an input), not part of the content hash: written when the image is "
           "built; for a reused image it must be on it already (else refused)"),
    O("annotations", "--annotation", kind="list", commas=False, gha="annotations", metavar="KEY=VALUE",
      help="manifest annotation (one per line in an input), not part of the content hash: written when the image is "
           "built; for a reused image it must be on it already (else refused)"),
    O("cache_from", "--cache-from", kind="list", commas=False, gha="cache-from", metavar="SPEC",
      help="extra cache to import, buildx syntax: type=registry,ref=host/repo:tag (several: one per line)"),
    O("cache_to", "--cache-to", metavar="SPEC",
      help="export the cache here instead of ml-env's choice, buildx syntax: type=registry,ref=...,mode=max"),
    O("platforms", "--platform", kind="list", gha="platforms", metavar="OS/ARCH",
      help="target platform: the engine's own only (the content hash names no platform)"),
    # the build action's input is build-push-action's `push: false` (commands.build: an alias)
    O("no_push", "--no-push", kind="flag", default=False, gha=None,
      help="build and check, push nothing (image, cache, tags): the image stays in the engine under its hash tag; "
           "one the registry already has is reused, not built"),
)  # fmt: skip

RUN = (
    O("experiment", "--experiment", help="experiment name (default: the script's name)"),
    O("inputs", "--input", kind="list", gha="inputs", metavar="NAME=PATH",
      help="read-only input at /mnt/inputs/NAME ($ML_ENV_INPUT_NAME); NAME=volume:VOLUME mounts a volume the engine has"),
    O("env_vars", "--env-var", kind="list", gha="env-vars", metavar="NAME=VALUE",
      help="environment variable for the run (recorded)"),
    O("secrets", "--secret", kind="list", gha="secrets", metavar="NAME",
      help="pass $NAME from this environment (never recorded or printed)"),
    O("cpus", "--cpus", help="CPU limit of the run's container"),
    O("memory", "--memory", help="memory limit, e.g. 4g"),
    O("shm_size", "--shm-size", help="shared memory (default: the environment's docker.shm_size)"),
    O("gpus", "--gpus", help="all, a count, or device=ID[,ID]; an error when the engine has no GPUs"),
    O("timeout", "--timeout", kind="float", help="wall-clock limit in seconds"),
    O("runs_dir", "--runs-dir", kind="path", default=lambda: Path("runs"), env="ML_ENV_RUNS_DIR", config="runs_dir",
      help="where run records go"),
    O("user", "--user", help="uid:gid in the container (default: yours, so outputs are yours)"),
    O("max_snapshot_mb", "--max-snapshot-mb", kind="float", default=2000.0, help="largest source snapshot"),
)  # fmt: skip

SERVE = (
    O("entry", "--entry", kind="path", help="entry script: init() and run(raw_data) (not for a packaged image)"),
    O("model", "--model", kind="list", metavar="[NAME=]DIR|MODEL",
      help="a model folder or a registered model (NAME, NAME:VERSION, REPOSITORY/NAME:VERSION), at AZUREML_MODEL_DIR "
           "(several: NAME=DIR or NAME=MODEL each, at AZUREML_MODEL_DIR/NAME)"),
    O("scoring_timeout_ms", "--scoring-timeout-ms", kind="int", help="SCORING_TIMEOUT_MS for run()"),
    O("workers", "--workers", kind="int", help="WORKER_COUNT"),
    O("cpus", "--cpus", help="CPU limit of the scoring container"),
    O("memory", "--memory", help="memory limit of the scoring container, e.g. 2g"),
    O("max_body", "--max-body", help="largest request body the server accepts, e.g. 16m (413 beyond; default 16 MiB)"),
    O("read_timeout", "--read-timeout", kind="float",
      help="seconds a client has to send a request's head, and again its body (default 10 and 30)"),
)  # fmt: skip

SMOKE = (
    O("cases", "--cases", kind="path", help="JSON lines: request/request_text, expect_status, expect_json|expect_subset|expect_schema"),
    O("repeat", "--repeat", kind="int", default=1, help="send each case N times (latency p50/p95/max)"),
    O("ready_timeout", "--ready-timeout", kind="float", default=120.0, help="seconds to wait for readiness"),
    O("report_dir", "--report-dir", kind="path", default=lambda: Path(".ml-env/smoke"),
      help="where the JSON and JUnit XML reports go"),
    O("no_record", "--no-record", kind="flag", default=False,
      help="do not attach the result to the tested digest in its registry (promote --require smoke-test reads it)"),
)  # fmt: skip

PROMOTE = (
    O("tags", "--tag", kind="list", gha="tags", metavar="TAG", words=True,
      help="destination tag (several allowed; an input takes them separated by spaces, commas or newlines)"),
    O("allow_overwrite", "--allow-overwrite", kind="flag", default=False, help="move a tag that points at another digest"),
    O("dry_run", "--dry-run", kind="flag", default=False, help="print what would happen; write nothing"),
    O("insecure", "--insecure", kind="flag", default=False, config="insecure",
      help="allow plain HTTP to a registry that is not on loopback"),
    O("ledger", "--ledger", default="releases.toml", env="ML_ENV_LEDGER", config="ledger", metavar="FILE|oci://HOST/REPO|registry",
      help="the release ledger: a file, an OCI artifact in a registry (oci://HOST/REPO[:TAG]), or registry (the "
           "destination repository's own, tag ml-env-ledger)"),
    O("no_ledger", "--no-ledger", kind="flag", default=False, help="do not record the promotion"),
    O("no_referrers", "--no-referrers", kind="flag", default=False, help="do not copy signatures/attestations"),
    O("jobs", "--jobs", kind="int", default=4, help="blobs copied at once"),
    O("require", "--require", kind="list", gha="require", metavar="GATE", config="require",
      help="refuse (exit 5) unless the digest passed this gate: smoke-test (a passing smoke test recorded against "
           "it), signed (its signature verifies with --verify-key; with smoke-test, a signed record of the pass)"),
    O("spec", "--spec", kind="path", gha="spec",
      help="with --require smoke-test: the environment file whose lock the tested image must hold"),
)  # fmt: skip
# with the smoke-test gate: what runs on an environment image, as smoke-test took it (hashed the same way)
TESTED = (
    O("entry", "--entry", kind="path",
      help="with --require smoke-test: the entry script that runs with the image; only smoke tests of this entry "
           "(and these --model) count (none given: the newest test of every combination tested must have passed)"),
    O("model", "--model", kind="list", metavar="[NAME=]DIR",
      help="with --entry: a model mounted with it, as smoke-test took it (several: NAME=DIR each)"),
)  # fmt: skip


# signing with cosign (the user's word only: never the project's, see settings.files.USER_ONLY)
SIGN = (
    O("sign_key", "--sign-key", env="ML_ENV_SIGN_KEY", config="sign_key", metavar="KEY",
      help="sign the digest this command puts in a registry, and attest its SBOM, provenance and smoke-test record, "
           "with cosign: a key file, env://NAME (the key in a variable) or a KMS URI; password: $COSIGN_PASSWORD"),
    O("sign_keyless", "--sign-keyless", kind="flag", default=False, env="ML_ENV_SIGN_KEYLESS", config="sign_keyless",
      help="sign keyless (OIDC: GitHub Actions with id-token: write; needs Fulcio and Rekor, so a network)"),
)  # fmt: skip
TRUST = (
    O("verify_key", "--verify-key", env="ML_ENV_VERIFY_KEY", config="verify_key", metavar="KEY",
      help="whose signature counts (--require signed, verify): a public key file, env://NAME or a KMS URI"),
    O("certificate_identity", "--certificate-identity", env="ML_ENV_CERTIFICATE_IDENTITY",
      config="certificate_identity", metavar="ID",
      help="keyless: the signer's identity, e.g. https://github.com/ORG/REPO/.github/workflows/W.yml@refs/heads/main"),
    O("certificate_oidc_issuer", "--certificate-oidc-issuer", env="ML_ENV_CERTIFICATE_OIDC_ISSUER",
      config="certificate_oidc_issuer", metavar="URL",
      help="keyless: the signer's OIDC issuer, e.g. https://token.actions.githubusercontent.com"),
)  # fmt: skip


# --- the environment a command runs in ----------------------------------------------------------

DEFAULT_TRAIN_ENV = "curated/minimal"
TRAIN_ENV = O("env", "--env", default=DEFAULT_TRAIN_ENV, env="ML_ENV_TRAIN_ENV", config="train_env",
              help="environment file, curated/NAME, NAME:VERSION, or an image reference (none given: train_env from the "
                   f"config files, else {DEFAULT_TRAIN_ENV}, as Azure ML gives a run that names none a default environment)")  # fmt: skip
REBUILD = O("rebuild", "--rebuild", kind="flag", default=False,
            help="a registered NAME:VERSION (or curated/NAME registered here): build its recorded environment file "
                 "instead of using its registered image (default: the registered image, by digest)")  # fmt: skip
VERSIONS = O(
    "versions",
    "--versions",
    kind="path",
    default=lambda: Path("envs/versions.toml"),
    env="ML_ENV_VERSIONS",
    config="versions",
    help="versions file, for NAME:VERSION environments (envs/versions.toml)",
)
# where model versions and packaged images go (the model and package commands)
MODEL_REPOSITORY = O("repository", "--repository", env="ML_ENV_MODEL_REPOSITORY", config="model_repository",
                     help="repository of the model; {name} is the model's name (default models/{name})")  # fmt: skip
# where a registered --model NAME[:VERSION] is read from (package, serve, smoke-test)
MODEL_SOURCE_REPOSITORY = O("model_repository", "--model-repository", env="ML_ENV_MODEL_REPOSITORY",
                            config="model_repository",
                            help="repository of a registered --model NAME[:VERSION]; {name} is the model's name "
                                 "(default models/{name})")  # fmt: skip
PACKAGE_REPOSITORY = O("package_repository", "--package-repository", env="ML_ENV_PACKAGE_REPOSITORY",
                       config="package_repository",
                       help="repository of the image; {name} is the environment's name (default ml-packages/{name})")  # fmt: skip
# what environment files may read from this environment (the user's word only: never the project's)
SPEC_ENV = O("spec_env", "--spec-env", kind="list", env="ML_ENV_SPEC_ENV", config="spec_env", gha=None, metavar="NAME[@HOST]",
             help="environment variables an environment file may read: NAME (an index URL) or NAME@HOST (a registry "
                  "password, sent to HOST only)")  # fmt: skip
INFERENCE_ENV = O("env", "--env", env="ML_ENV_INFERENCE_ENV", config="inference_env",
                  help='inference environment (inference = true, or [inference] server = "azureml"), curated/NAME, '
                       "NAME:VERSION or an image")  # fmt: skip
# where a run goes: a compute target ([compute.NAME], settings.compute); none: the command's engine
COMPUTE = (
    O("compute", "--compute", env="ML_ENV_COMPUTE", config="default_compute", metavar="NAME",
      help="the compute target to run on ([compute.NAME] in the config: docker, slurm or kubernetes); "
           "default_compute in the config, else the command's engine"),
    O("nodes", "--nodes", kind="int",
      help="nodes for a run on a Slurm target (default: the target's nodes, else 1); one container per node "
           "with MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK, NODE_RANK, LOCAL_RANK set"),
)  # fmt: skip
