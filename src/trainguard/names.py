"""Names: validation of run and checkpoint names, the file-name patterns legacy checkpoints are found by,
and where trainguard keeps its own files inside a store.

Names become directory names under the store and keys in the registry, so anything that could climb out of
the store (``/``, ``..``), hide (a leading dot collides with ``.staging`` and ``.quarantine``), or be cut
short by C APIs (NUL) is refused before it reaches the filesystem.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from trainguard.errors import InvalidArgument, InvalidName

# <store>/.trainguard/: trainguard's own files inside a store - the default registry, the run files, the
# launcher's effective config. Never a checkpoint (a leading dot is refused in names).
META_DIRECTORY = ".trainguard"
DEFAULT_REGISTRY_FILE = "registry.db"
# <store>/.trainguard/store.json: which registry this store belongs to (its id), written when a writer first
# opens the store; the watchdog trusts files under a store only when the store is bound to its registry.
BINDING_FILE = "store.json"

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
MAX_NAME_LENGTH = 128


# s3://, gs://, file:/ - a URL where a store path is expected (Path() would make "s3://b/p" the local
# directory "s3:/b/p").
URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")


def validate_name(value: object, what: str = "run") -> str:
    """Return ``value`` if it is a safe run/checkpoint name, else raise :class:`InvalidName`."""
    if not isinstance(value, str):
        raise InvalidName(what, repr(value), "must be a string")
    if not value:
        raise InvalidName(what, value, "must not be empty")
    if "\x00" in value:
        raise InvalidName(what, value, "must not contain NUL")
    if "/" in value or "\\" in value:
        raise InvalidName(what, value, "must not contain '/' or '\\' (it names one directory)")
    if ".." in value:
        raise InvalidName(what, value, "must not contain '..'")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidName(what, value, f"must be at most {MAX_NAME_LENGTH} characters")
    if not _NAME.fullmatch(value):
        raise InvalidName(
            what, value, "allowed: letters, digits, '-', '_', '.'; must not start with '.' or '-'"
        )
    return value


def meta_directory(store: str | Path) -> Path:
    return Path(store) / META_DIRECTORY


def registry_files(store: str | Path) -> list[Path]:
    """The default SQLite registry's files: every trainguard command holds them open, so holding them proves
    nothing about a process."""
    base = meta_directory(store) / DEFAULT_REGISTRY_FILE
    return [base, *(base.with_name(base.name + suffix) for suffix in ("-wal", "-shm", "-journal"))]


def bucket_url(url: str, parameter: str = "store") -> tuple[str, str]:
    """(bucket, prefix) of an object store's ``s3://BUCKET[/PREFIX]``; :class:`InvalidArgument` otherwise."""
    from urllib.parse import urlparse

    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise InvalidArgument(parameter, url, "an object store is s3://BUCKET[/PREFIX]")
    prefix = parsed.path.strip("/")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise InvalidArgument(parameter, url, "the prefix must not contain empty, '.' or '..' parts")
    return parsed.netloc, prefix


def store_directory(store: str) -> Path:
    """The local directory of a store as the registry records it: the directory itself, or for an
    ``s3://`` store the workdir where its processes keep their pid, heartbeat and descendants files
    (``$XDG_CACHE_HOME/trainguard/s3/<bucket>/<prefix>``, the cache defaulting to ``~/.cache``)."""
    if not URL_SCHEME.match(store):
        return Path(store)
    bucket, prefix = bucket_url(store)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "trainguard" / "s3" / bucket / (prefix or "_")


def default_registry_url(store: str | Path) -> str:
    """The SQLite registry a store has when no other is configured: ``<store>/.trainguard/registry.db``
    (an object store has none: SQLite is never kept on one)."""
    if URL_SCHEME.match(str(store)):
        raise InvalidArgument(
            "registry", None, f"{store} needs a registry URL (PostgreSQL, or sqlite:///PATH on a local disk)"
        )
    return f"sqlite:///{meta_directory(Path(store).resolve()) / DEFAULT_REGISTRY_FILE}"


_BACKENDS = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg"}


def registry_url(url: str, parameter: str = "registry") -> str:
    """The SQLAlchemy URL for a registry given as ``sqlite:///PATH``, ``postgresql://...`` (psycopg 3) or a
    bare path; :class:`InvalidArgument` naming ``parameter`` for anything else (checked in one place, for
    the config, the command line and ``Registry.open``)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    rule = "must be sqlite:///PATH, postgresql://USER@HOST/DB or a file path"
    if not isinstance(url, str) or not url or "\0" in url:
        raise InvalidArgument(parameter, url, rule)
    if "://" not in url:
        return f"sqlite:///{Path(url).resolve()}"
    scheme, rest = url.split("://", 1)
    if scheme.split("+", 1)[0] not in _BACKENDS:
        raise InvalidArgument(parameter, _redacted(url), f"{rule} (backend {scheme!r} is not supported)")
    target = f"{_BACKENDS[scheme]}://{rest}" if scheme in _BACKENDS else url
    try:
        parsed = make_url(target)
        parsed.port  # noqa: B018 - parsing the port is where a malformed host ('[::1') fails
    except (ArgumentError, ValueError) as error:
        raise InvalidArgument(parameter, _redacted(url), f"{rule} ({error})") from None
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() != "psycopg":
        raise InvalidArgument(parameter, _redacted(url), "PostgreSQL registries use the psycopg (3) driver")
    return target


def _redacted(url: str) -> str:
    """A URL for messages: never print a password (``user:secret@`` becomes ``user:***@``)."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


# The one rule for checkpoint-file patterns (`run --watch-pattern`, `ckpt adopt --pattern`): the pattern must
# match the *whole* file name, and its named group says where the count is - episode, or steps (SB3 names
# its files by timesteps: model_(?P<steps>\d+)_steps\.zip).
COUNT_GROUPS = ("episode", "steps")


@dataclass(frozen=True)
class CountPattern:
    """A checkpoint-file pattern: ``count(name)`` is the number in a matching name, else None."""

    regex: re.Pattern[str]
    group: str  # "episode" or "steps": where the number is
    counts: str  # "episodes" or "steps": what the number counts

    def count(self, name: str) -> int | None:
        match = self.regex.fullmatch(name)
        return int(match.group(self.group)) if match else None


def count_pattern(parameter: str, pattern: str, counts: str | None = None) -> CountPattern:
    """Compile a checkpoint-file pattern (``checkpoint_ep(?P<episode>\\d+)\\.pth``); :class:`InvalidArgument`
    naming ``parameter`` when it is not a regular expression or has no (?P<episode>...)/(?P<steps>...).
    ``counts`` (episodes|steps) says what the number counts; by default what the group is called."""
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise InvalidArgument(parameter, pattern, f"is not a regular expression: {error}") from None
    groups = [g for g in COUNT_GROUPS if g in compiled.groupindex]
    if len(groups) != 1:
        raise InvalidArgument(
            parameter, pattern, "needs one named group for the count: (?P<episode>\\d+) or (?P<steps>\\d+)"
        )
    if counts not in (None, "episodes", "steps"):
        raise InvalidArgument("count", counts, "must be episodes or steps")
    return CountPattern(compiled, groups[0], counts or ("episodes" if groups[0] == "episode" else "steps"))


__all__ = [
    "BINDING_FILE",
    "COUNT_GROUPS",
    "DEFAULT_REGISTRY_FILE",
    "MAX_NAME_LENGTH",
    "META_DIRECTORY",
    "URL_SCHEME",
    "CountPattern",
    "bucket_url",
    "count_pattern",
    "default_registry_url",
    "meta_directory",
    "registry_files",
    "registry_url",
    "store_directory",
    "validate_name",
]
