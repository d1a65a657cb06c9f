"""Dashboard users and their passwords, kept in one small file.

Each line is ``NAME:scrypt$ln=15,r=8,p=1$<salt>$<hash>`` (salt and hash in unpadded base64): the
password is never stored, only its scrypt hash under a per-user random salt, with the cost
parameters next to it so they can be raised later without invalidating older hashes. The file
is written atomically with mode 0600 (its directory 0700). :class:`UserDirectory` re-reads it
when it changes, so ``chargewatch dashboard add-user`` takes effect on a running dashboard and
removing a user (or changing a password) ends that user's sessions.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from chargewatch.errors import ConfigError

#: scrypt cost: N = 2**LOG_N (32 MiB of memory with r=8, ~0.1 s here), r, p; salt and key bytes.
LOG_N, BLOCK_SIZE, PARALLELISM = 15, 8, 1
SALT_BYTES, KEY_BYTES = 16, 32
MAX_MEMORY = 256 * 1024 * 1024  # ceiling passed to OpenSSL; stored parameters above it are refused
MIN_PASSWORD, MAX_PASSWORD = 8, 1024
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_SCHEME = "scrypt"


class PasswordError(ConfigError):
    """A user name or password that cannot be accepted (says why)."""


def hash_password(password: str, *, log_n: int = LOG_N, salt: bytes | None = None) -> str:
    """The storable hash of password: scheme, parameters, random salt and scrypt key."""
    check_password(password)
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    key = _scrypt(password, salt, log_n, BLOCK_SIZE, PARALLELISM)
    return f"{_SCHEME}$ln={log_n},r={BLOCK_SIZE},p={PARALLELISM}${_b64(salt)}${_b64(key)}"


def verify_password(stored: str, password: str) -> bool:
    """True when password matches the stored hash (constant-time comparison); False for a
    malformed hash, so a damaged line locks that user out instead of letting anyone in."""
    parsed = _parse(stored)
    if parsed is None or len(password) > MAX_PASSWORD:
        return False
    log_n, r, p, salt, key = parsed
    try:
        candidate = _scrypt(password, salt, log_n, r, p)
    except ValueError:
        return False
    return hmac.compare_digest(candidate, key)


def check_password(password: str) -> None:
    """Raise PasswordError for a password too short or too long."""
    if len(password) < MIN_PASSWORD:
        raise PasswordError(f"the password must have at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise PasswordError(f"the password must have at most {MAX_PASSWORD} characters")


def check_name(name: str) -> None:
    """Raise PasswordError unless name is 1-64 letters, digits, '.', '_', '@' or '-' (not leading)."""
    if not NAME_PATTERN.fullmatch(name):
        raise PasswordError(f"invalid user name {name!r}: use 1-64 letters, digits, '.', '_', '@' or '-', "
                            "starting with a letter or digit")


def hash_stamp(stored: str) -> str:
    """A short fingerprint of a stored hash, kept in the session: a changed password (or a
    removed user) no longer matches it, which ends the sessions opened with the old one."""
    return hashlib.sha256(stored.encode()).hexdigest()[:16]


def _scrypt(password: str, salt: bytes, log_n: int, r: int, p: int) -> bytes:
    if not (1 <= log_n <= 24 and 1 <= r <= 64 and 1 <= p <= 16) or 128 * r * (2 ** log_n) * p > MAX_MEMORY:
        raise ValueError("scrypt parameters out of range")
    return hashlib.scrypt(password.encode(), salt=salt, n=2 ** log_n, r=r, p=p, maxmem=MAX_MEMORY, dklen=KEY_BYTES)


def _parse(stored: str) -> tuple[int, int, int, bytes, bytes] | None:
    parts = stored.split("$")
    if len(parts) != 4 or parts[0] != _SCHEME:
        return None
    try:
        params = dict(item.split("=", 1) for item in parts[1].split(","))
        log_n, r, p = int(params["ln"]), int(params["r"]), int(params["p"])
        salt, key = _unb64(parts[2]), _unb64(parts[3])
    except (KeyError, ValueError):
        return None
    if len(salt) < 8 or len(key) < 16:
        return None
    return log_n, r, p, salt, key


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


@dataclass(frozen=True)
class UsersFile:
    """The users file: read, add or replace a user, remove a user."""

    path: Path

    def load(self) -> dict[str, str]:
        """User name -> stored hash ({} when the file does not exist yet)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot read the dashboard users file: {exc}") from exc
        users: dict[str, str] = {}
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, stored = line.partition(":")
            if not sep or not NAME_PATTERN.fullmatch(name) or _parse(stored) is None:
                raise ConfigError(f"{self.path}:{number}: not a 'NAME:scrypt$...' line; fix or remove it")
            users[name] = stored
        return users

    def add(self, name: str, password: str, *, replace: bool = False) -> bool:
        """Store name with a new hash of password; returns True when the user already existed
        (allowed only with replace, which changes the password)."""
        check_name(name)
        users = self.load()
        existed = name in users
        if existed and not replace:
            raise PasswordError(f"user {name!r} already exists in {self.path}; pass --replace to change the password")
        users[name] = hash_password(password)
        self._write(users)
        return existed

    def remove(self, name: str) -> None:
        """Delete name (its sessions end at their next request)."""
        users = self.load()
        if name not in users:
            raise PasswordError(f"no user {name!r} in {self.path}")
        del users[name]
        self._write(users)

    def _write(self, users: dict[str, str]) -> None:
        directory = self.path.parent
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".users-", dir=directory)  # created 0600
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write("# chargewatch dashboard users: NAME:scrypt hash (chargewatch dashboard add-user)\n")
                out.writelines(f"{name}:{stored}\n" for name, stored in sorted(users.items()))
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot write the dashboard users file: {exc}") from exc


class UserDirectory:
    """The users file as the running dashboard sees it: re-read when its size or modification
    time changes, shared by the server's threads."""

    def __init__(self, users_file: UsersFile) -> None:
        self.file = users_file
        self._lock = threading.Lock()
        self._signature: tuple[int, int] | None = None
        self._users: dict[str, str] = {}

    def users(self) -> dict[str, str]:
        """Current name -> hash mapping."""
        try:
            st = self.file.path.stat()
            signature: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            signature = None
        with self._lock:
            if signature != self._signature or signature is None:
                self._users = self.file.load() if signature is not None else {}
                self._signature = signature
            return dict(self._users)

    def authenticate(self, name: str, password: str) -> str | None:
        """The stamp (:func:`hash_stamp`) of name's hash when password is right, else None.
        Unknown names cost one scrypt too."""
        stored = self.users().get(name)
        if stored is None:
            verify_password(_DUMMY, password)
            return None
        return hash_stamp(stored) if verify_password(stored, password) else None

    def stamp(self, name: str) -> str | None:
        """The current stamp of name's hash (None when the user no longer exists)."""
        stored = self.users().get(name)
        return hash_stamp(stored) if stored is not None else None


# Verified against when the user name is unknown, so a wrong name costs the same time as a
# wrong password and response times do not tell which names exist.
_DUMMY = f"{_SCHEME}$ln={LOG_N},r={BLOCK_SIZE},p={PARALLELISM}${_b64(b'chargewatch-salt')}${_b64(bytes(KEY_BYTES))}"
