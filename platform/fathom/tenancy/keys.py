"""API keys, handled only as SHA-256 digests.

Contract: a plaintext key exists only in the request header and in `digest()`'s argument.
It is never stored, logged, traced, used as a metric label, or returned. Stored keys are
lowercase hex SHA-256 digests; a presented key is hashed and then compared against every
stored digest with `hmac.compare_digest`, visiting all of them, so neither the comparison
nor the lookup time depends on how much of a digest matches.
"""

import hashlib
import hmac
import logging
import os
import re
import secrets
import sys
import time
from pathlib import Path

_HEX64 = re.compile(r"[0-9a-f]{64}")
log = logging.getLogger(__name__)


def digest(key: str) -> str:
    """Lowercase hex SHA-256 of the UTF-8 key: what a tenant file or Secret stores."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def normalize_digest(value: str) -> str:
    """A stored digest, lowercased and validated (64 hex characters) or ValueError naming it."""
    d = value.strip().lower()
    if not _HEX64.fullmatch(d):
        # Show only the length: a misplaced plaintext key must not end up in a log.
        raise ValueError(f"sha256 must be 64 hex characters (a SHA-256 digest), got {len(value)} characters")
    return d


def bearer_key(authorization: str | None) -> str | None:
    """The key of an `Authorization: Bearer <key>` header, or None when absent or malformed."""
    if not authorization:
        return None
    scheme, _, key = authorization.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return None
    return key


class KeyIndex:
    """Maps key digests to owners (tenant names); several keys per owner (rotation)."""

    def __init__(self, entries: dict[str, str] | None = None):
        self._entries: tuple[tuple[bytes, str], ...] = tuple(
            (normalize_digest(d).encode(), owner) for d, owner in (entries or {}).items()
        )

    def __len__(self) -> int:
        return len(self._entries)

    def owner(self, key: str) -> str | None:
        """The owner of a plaintext key, or None. Time is independent of which digest matches."""
        presented = digest(key).encode()
        found = None
        for stored, owner in self._entries:
            if hmac.compare_digest(presented, stored):
                found = owner
        return found


class KeyFile:
    """The key digests in a file, one a line (blank lines ignored), re-read when its mtime or
    size changes (checked at most every `poll_s`): a Secret the kubelet refreshes in place. A
    missing file holds no keys; a broken edit is logged and the previous keys stay."""

    def __init__(self, path: str | os.PathLike | None, poll_s: float = 1.0):
        self.path, self.poll_s = path, poll_s
        self._checked, self._signature, self._index = -float("inf"), None, KeyIndex()

    def owner(self, key: str) -> str | None:
        if self.path is None:
            return None
        if time.monotonic() - self._checked >= self.poll_s:
            self._reload()
        return self._index.owner(key)

    def _reload(self) -> None:
        self._checked = time.monotonic()
        try:
            st = os.stat(self.path)
            signature = (st.st_mtime_ns, st.st_size)
        except OSError:
            signature = None
        if signature == self._signature:
            return
        self._signature = signature
        try:
            lines = Path(self.path).read_text(encoding="utf-8").split() if signature else []
            self._index = KeyIndex(dict.fromkeys(lines, "metrics"))
        except (OSError, ValueError) as e:
            log.error("metrics keys in %s not reloaded, keeping the previous ones: %s", self.path, e)


def new_key() -> str:
    """A fresh random API key (256 bits)."""
    return "sk-fathom-" + secrets.token_urlsafe(32)


def _parser():
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m fathom.tenancy.keys",
        description="API keys for Fathom tenants files (`apiKeys: [{sha256: ...}]`) and `fathom serve "
                    "--api-key-sha256`: a new key with its SHA-256 digest, or the digests of keys you have.",
        epilog="Keys are never taken as arguments (shells keep those in history):\n"
               "  printf '%s\\n' \"$KEY\" | python -m fathom.tenancy.keys --stdin",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--new", action="store_true", help="make a random key (256 bits) and print it with its digest")
    what.add_argument("--stdin", action="store_true",
                      help="read keys from standard input, one per line, and print the digest of each")
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python -m fathom.tenancy.keys --new | --stdin` (see `--help`)."""
    try:
        args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:  # --help (0) or a usage error (2)
        return int(e.code or 0)
    if args.new:
        key = new_key()
        print(f"key:    {key}\nsha256: {digest(key)}")
        return 0
    if sys.stdin.isatty():
        print("reading keys from the terminal, one per line; end with Ctrl-D", file=sys.stderr)
    for line in sys.stdin:
        if line.strip():
            print(digest(line.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
