"""Append-only TOML logs (the release ledger, the environment versions): one ``[[table]]`` per
entry, appended under a lock through a temporary file and a rename, read strictly.

The lock file lives in the user cache folder (keyed by the log's real path), never beside the
log in the working tree. ``with log.locked():`` holds it across a longer operation (a whole
promotion); appends inside it do not lock again. A file that is not such a log is one error
naming the file, and it is never overwritten.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ..errors import LogError
from .digests import cache_dir
from .fsutil import locked, read_text_bounded, write_atomic
from .grammar import toml_error
from .untrusted import check_depth, toml_loads

__all__ = ["TomlLog", "MAX_LOG_BYTES", "is_log_file"]

MAX_LOG_BYTES = 64 * 2**20
T = TypeVar("T")


def is_log_file(path: Path) -> bool:
    """Whether ``path`` holds such a log (every top-level key an array of tables), so a folder of
    environment files can skip the versions file (or a ledger) kept beside them. An environment
    file never has a top-level array of tables; a file that cannot be read or parsed is not a
    log, so the environment loader reports what is wrong with it."""
    import tomllib

    try:
        doc = toml_loads(read_text_bounded(path, MAX_LOG_BYTES, error=LogError), error=LogError, file=str(path))
    except (OSError, LogError, tomllib.TOMLDecodeError):
        return False
    return bool(doc) and all(isinstance(v, list) and all(isinstance(e, dict) for e in v) for v in doc.values())


class TomlLog:
    table: ClassVar[str] = "entry"
    header: ClassVar[tuple[str, ...]] = ()

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.where = str(path)  # how errors name the log (a registry-kept one names its location)
        self._held = 0

    def lock_file(self) -> Path:
        key = hashlib.sha256(self.lock_key().encode()).hexdigest()[:32]
        return cache_dir() / "locks" / f"{self.table}-{key}.lock"

    def lock_key(self) -> str:
        return str(self.path.resolve())

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        if self._held:
            self._held += 1
            try:
                yield
            finally:
                self._held -= 1
            return
        with locked(self.lock_file()):
            self._held = 1
            try:
                yield
            finally:
                self._held = 0

    def _document(self) -> Any:
        import tomlkit

        if not self.path.exists():
            doc = tomlkit.document()
            for line in self.header:
                doc.add(tomlkit.comment(line))
            return doc
        text = self._text()
        if text and not text.endswith("\n"):
            # a log whose last line has no newline (an editor, a merge, another tool): tomlkit would
            # glue the next [[table]] header to that line and write a log nobody can read again
            text += "\n"
        check_depth(text, toml=True, error=LogError, file=self.where)
        try:
            return tomlkit.parse(text)
        except RecursionError:
            raise LogError("nested too deep to parse: refused", file=self.where) from None
        except Exception as e:  # tomlkit's parse errors carry a line; they never quote the file
            at = getattr(e, "line", None)
            raise LogError(f"not valid TOML{f' at line {at}' if at else ''}", file=self.where) from None

    def _text(self) -> str:
        try:
            return read_text_bounded(
                self.path, MAX_LOG_BYTES, error=LogError, what=f"{self.table} log", shown=self.where
            )
        except OSError as e:
            raise LogError(f"cannot be read: {e.strerror}", file=self.where) from None

    def raw_entries(self) -> list[dict[str, Any]]:
        """The entries as plain tables; anything else at the top is a LogError.

        Read with ``tomllib`` (strict, and a tenth of tomlkit's import time); tomlkit is loaded
        only to append, where it keeps the file's comments and layout."""
        import tomllib

        if not self.path.exists():
            return []
        try:
            doc = toml_loads(self._text(), error=LogError, file=self.where)
        except tomllib.TOMLDecodeError as e:
            what, line = toml_error(e)
            raise LogError(f"not valid TOML {what}" if line else "not valid TOML", file=self.where, line=line) from None
        unknown = [k for k in doc if k != self.table]
        if unknown:
            raise LogError(f"unexpected top-level key(s) {', '.join(sorted(unknown))[:100]}", file=self.where)
        out = doc.get(self.table) or []
        if not isinstance(out, list) or not all(isinstance(e, dict) for e in out):
            raise LogError(f"[[{self.table}]] must be an array of tables", file=self.where)
        return out

    def typed_entries(self, parse: Callable[[dict[str, Any]], T]) -> list[T]:
        """Every entry through ``parse``; one that does not parse is a LogError naming its place."""
        out = []
        for i, raw in enumerate(self.raw_entries()):
            try:
                out.append(parse(raw))
            except ValueError as e:
                raise LogError(f"[[{self.table}]] number {i + 1}: {e}", file=self.where) from None
        return out

    def append_raw(self, entry: dict[str, Any]) -> None:
        import tomlkit

        with self.locked():
            doc = self._document()
            if self.table not in doc:
                doc.add(self.table, tomlkit.aot())
            table = tomlkit.table()
            for k, v in entry.items():
                if v is None:
                    continue
                table.add(k, tomlkit.string(v, multiline=True) if isinstance(v, str) and "\n" in v else v)
            doc[self.table].append(table)
            text = tomlkit.dumps(doc)
            self._check_written(text)
            write_atomic(self.path, text)

    def _check_written(self, text: str) -> None:
        """What an append is about to write must read back as this log: never replace a log with
        one the strict reader refuses (the old one stays as it was)."""
        import tomllib

        try:
            tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            raise LogError("appending to it would not give valid TOML; it is left as it is", file=self.where) from None
