"""Signed manifests: an Ed25519 signature over ``MANIFEST.json``, in ``MANIFEST.sig`` next to it.

The manifest holds the hash of every file and the registry holds the hash of the manifest, so anyone who can
write both the store and the registry could rewrite a checkpoint and every hash that pins it. A signature
made with a key kept *outside* the store closes that: without the private key a rewritten manifest cannot be
signed, and every load, verify, promote and live load checks the signature when a public key is configured
(``required``: an unsigned checkpoint is refused too). See SECURITY.md for who can do what.

Keys: ``trainguard key init PATH`` writes ``PATH`` (PKCS#8 PEM, mode 0600) and ``PATH.pub``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainguard._os.optional import require
from trainguard.checkpoints.manifest import SIGNATURE_FILE
from trainguard.errors import ConfigError, InvalidArgument, SignatureRejected

if TYPE_CHECKING:
    from trainguard.config import TrainguardConfig

ALGORITHM = "ed25519"
_MAX_KEY_BYTES = 16 << 10  # a PEM key is a few hundred bytes; never read an unbounded file
_MAX_SIGNATURE_BYTES = 4 << 10

PRIVATE_KEY_ENV = "TRAINGUARD_SIGNING_KEY"
PUBLIC_KEY_ENV = "TRAINGUARD_PUBLIC_KEY"
REQUIRED_ENV = "TRAINGUARD_SIGNING_REQUIRED"


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as error:
        raise ConfigError(what, str(path), f"cannot be read: {error.strerror or error}") from None
    try:
        return os.read(fd, _MAX_KEY_BYTES)
    finally:
        os.close(fd)


def key_id(public_raw: bytes) -> str:
    """A short, stable name for a public key (what a signature says it was made with)."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


class VerifyKey:
    """A public key: checks signatures."""

    def __init__(self, public: Any) -> None:
        from cryptography.hazmat.primitives import serialization

        self._public = public
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.key_id = key_id(raw)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> VerifyKey:
        require("cryptography", "signed manifests")
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        data = _read_key_file(Path(path), "signing.public_key")
        try:
            public = serialization.load_pem_public_key(data)
        except ValueError as error:
            raise ConfigError("signing.public_key", str(path), f"not a PEM public key ({error})") from None
        if not isinstance(public, Ed25519PublicKey):
            raise ConfigError("signing.public_key", str(path), "must be an Ed25519 public key")
        return cls(public)

    def verify(self, data: bytes, signature: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature

        try:
            self._public.verify(signature, data)
        except InvalidSignature:
            return False
        return True


class SigningKey:
    """A private key: signs manifests at commit. Never stored under a checkpoint store."""

    def __init__(self, private: Any) -> None:
        self._private = private
        self.public = VerifyKey(private.public_key())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SigningKey:
        require("cryptography", "signed manifests")
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        location = Path(path)
        if (mode := _mode(location)) is not None and mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                "signing.key", str(location), f"is readable by others (mode {mode:o}); chmod 600 it"
            )
        data = _read_key_file(location, "signing.key")
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as error:
            raise ConfigError("signing.key", str(location), f"not an unencrypted PEM key ({error})") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise ConfigError("signing.key", str(location), "must be an Ed25519 private key")
        return cls(private)

    def sign(self, data: bytes) -> bytes:
        return bytes(self._private.sign(data))


def _mode(path: Path) -> int | None:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None


def generate_key(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write a new key pair: ``path`` (private, 0600, created exclusively) and ``path.pub``. Refuses to
    overwrite either (a replaced key would make every existing signature unverifiable)."""
    require("cryptography", "signed manifests")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private_path = Path(path)
    public_path = private_path.with_name(private_path.name + ".pub")
    for existing in (private_path, public_path):
        if os.path.lexists(existing):
            raise InvalidArgument("PATH", str(existing), "exists already; a key is never overwritten")
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    for target, data, mode in ((private_path, pem, 0o600), (public_path, public_pem, 0o644)):
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    return private_path, public_path


@dataclass(frozen=True)
class Signing:
    """What a store does about signatures: sign with ``key`` (writers), check with ``public`` (defaults to
    the key's own), refuse unsigned checkpoints when ``required``."""

    key: SigningKey | None = None
    public: VerifyKey | None = None
    required: bool = False

    @property
    def verifier(self) -> VerifyKey | None:
        return self.public or (self.key.public if self.key else None)

    @classmethod
    def from_paths(
        cls,
        key: str | os.PathLike[str] | None = None,
        public_key: str | os.PathLike[str] | None = None,
        *,
        required: bool | None = None,
    ) -> Signing:
        """From key files; what is not given comes from ``$TRAINGUARD_SIGNING_KEY``,
        ``$TRAINGUARD_PUBLIC_KEY`` and ``$TRAINGUARD_SIGNING_REQUIRED`` (``1``)."""
        key = key or os.environ.get(PRIVATE_KEY_ENV) or None
        public_key = public_key or os.environ.get(PUBLIC_KEY_ENV) or None
        if required is None:
            required = os.environ.get(REQUIRED_ENV, "") in ("1", "true", "yes")
        signing = cls(
            SigningKey.load(key) if key else None,
            VerifyKey.load(public_key) if public_key else None,
            required,
        )
        if required and signing.verifier is None:
            raise ConfigError(
                "signing.required", True, "needs signing.public_key (or signing.key) to check signatures with"
            )
        return signing


def signing_of(config: TrainguardConfig | None) -> Signing:
    """The signing a config asks for (its ``signing:`` section), the environment filling what it leaves
    out; no config: the environment alone."""
    if config is None:
        return Signing.from_paths()
    key, public_key = config.signing_paths()
    return Signing.from_paths(key, public_key, required=True if config.signing.required else None)


def signature_bytes(key: SigningKey, manifest: bytes) -> bytes:
    """The content of ``MANIFEST.sig`` for these manifest bytes."""
    body = {
        "algorithm": ALGORITHM,
        "key_id": key.public.key_id,
        "signature": base64.b64encode(key.sign(manifest)).decode(),
    }
    return json.dumps(body, sort_keys=True).encode() + b"\n"


def check_signature(name: str, directory: Path, manifest: bytes, signing: Signing) -> str | None:
    """Check ``MANIFEST.sig`` against the manifest's bytes. Returns the signing key's id (None: unsigned
    and allowed, or no key to check with); raises :class:`SignatureRejected` naming what is wrong."""
    path = directory / SIGNATURE_FILE
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        if signing.required:
            raise SignatureRejected(name, str(path), "is missing; signed checkpoints are required") from None
        return None
    except OSError as error:
        raise SignatureRejected(name, str(path), f"unreadable: {error.strerror or error}") from None
    try:
        data = os.read(fd, _MAX_SIGNATURE_BYTES)
    finally:
        os.close(fd)
    return check_signature_bytes(name, str(path), data, manifest, signing)


def check_signature_bytes(
    name: str, where: str, data: bytes | None, manifest: bytes, signing: Signing
) -> str | None:
    """:func:`check_signature` for a signature already read from ``where`` (None: there is none) - an
    object store's ``MANIFEST.sig``."""
    path = where
    if data is None:
        if signing.required:
            raise SignatureRejected(name, where, "is missing; signed checkpoints are required")
        return None
    verifier = signing.verifier
    if verifier is None:
        return None  # signed, but nothing configured to check it with
    try:
        body = json.loads(data)
        signature = base64.b64decode(body["signature"], validate=True)
        algorithm, signed_by = body["algorithm"], body["key_id"]
    except (ValueError, KeyError, TypeError) as error:
        raise SignatureRejected(name, str(path), f"malformed ({type(error).__name__})") from None
    if algorithm != ALGORITHM:
        raise SignatureRejected(name, str(path), f"algorithm {algorithm!r} is not {ALGORITHM}")
    if signed_by != verifier.key_id:
        trusted = verifier.key_id
        raise SignatureRejected(name, str(path), f"signed by key {signed_by}, this store trusts {trusted}")
    if not verifier.verify(manifest, signature):
        raise SignatureRejected(name, str(path), "does not match the manifest (rewritten without the key)")
    return verifier.key_id


__all__ = [
    "ALGORITHM",
    "PRIVATE_KEY_ENV",
    "PUBLIC_KEY_ENV",
    "REQUIRED_ENV",
    "SIGNATURE_FILE",
    "Signing",
    "SigningKey",
    "VerifyKey",
    "check_signature",
    "check_signature_bytes",
    "generate_key",
    "key_id",
    "signature_bytes",
    "signing_of",
]
