"""One error root for everything a user can get wrong or the world can break.

Fronts (CLI, nox, GitHub Actions) turn these into one clear line, an exit code and, where a
file is at fault, an annotation. No traceback is shown for an ``MlEnvError``.
"""

from __future__ import annotations

__all__ = [
    "MlEnvError",
    "UsageError",
    "SpecError",
    "EngineError",
    "BuildError",
    "RegistryError",
    "RegistryAuthError",
    "RegistryTransient",
    "RegistryUnreachable",
    "BlobIntegrityError",
    "TagConflict",
    "GateRefused",
    "ServiceFailed",
    "RecordError",
    "LogError",
    "EXIT_INTERNAL",
    "EXIT_CODES",
    "exit_meaning",
]

EXIT_INTERNAL = 70  # EX_SOFTWARE: an error nobody raised on purpose (a bug); the CLI prints one line

# every exit code a front can end with, and what it means (the CLI's --help, the nox sessions)
EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "a build or a run failed",
    2: "bad input: an environment file, an imported file, a record, an argument or a setting",
    3: "the Docker engine or buildx is missing, or the builder cannot do what was asked",
    4: "registry error: unreachable, refused credentials, 5xx after retries",
    5: "refused: a tag points elsewhere, another promotion won, or a gate did not pass",
    EXIT_INTERNAL: "internal error (a bug): ML_ENV_DEBUG=1 shows the traceback",
    124: "a run timed out",
    130: "interrupted",
}


def exit_meaning(code: int) -> str:
    """What an exit code of ml-env means, in a few words (a run's own code is the script's)."""
    return EXIT_CODES.get(code, "the training script's own exit code")


class MlEnvError(Exception):
    """Base of every error the library raises on purpose. ``exit_code`` is what fronts exit with."""

    exit_code = 1

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        key: str | None = None,
        line: int | None = None,
        hint: str | None = None,
        details: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.key = key
        self.line = line
        self.hint = hint
        self.details = details

    @property
    def where(self) -> str:
        parts = []
        if self.file:
            parts.append(self.file if self.line is None else f"{self.file}:{self.line}")
        if self.key:
            parts.append(self.key)
        return ": ".join(parts)

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f" ({self.hint})"
        return text


class UsageError(MlEnvError):
    """A command line, input or option the user gave is wrong (argparse's exit code)."""

    exit_code = 2


class SpecError(UsageError):
    """The environment file (or a file it references) is malformed or inconsistent."""


class RecordError(UsageError):
    """A run record that is not valid (hand-edited, truncated, from elsewhere)."""


class LogError(UsageError):
    """A ledger or versions file that cannot be read as one (it is left as it is)."""


class EngineError(MlEnvError):
    """The Docker engine or buildx is missing, unreachable or lacks a needed capability."""

    exit_code = 3


class BuildError(MlEnvError):
    """A build step failed; ``details`` carries the tail of the build log."""

    exit_code = 1


class RegistryError(MlEnvError):
    """A registry answered with an error that is not "not found"."""

    exit_code = 4


class RegistryAuthError(RegistryError):
    """Credentials are missing or were refused."""


class RegistryTransient(RegistryError):
    """The registry kept answering 5xx or 429 after bounded retries: worth trying again later."""


class RegistryUnreachable(RegistryError):
    """The registry could not be reached after bounded retries."""


class BlobIntegrityError(RegistryError):
    """A blob's bytes did not hash to its digest (truncated or corrupted in transit)."""


class TagConflict(MlEnvError):
    """A destination tag points at another digest: not allowed to move it, or another promotion won."""

    exit_code = 5


class GateRefused(MlEnvError):
    """A promotion gate refused the digest (no passing smoke test recorded for it)."""

    exit_code = 5


class ServiceFailed(MlEnvError):
    """A scoring container exited or never became ready; ``details`` has its log tail."""
