"""Tokens: generated with ``secrets``, stored only as SHA-256, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets

ENDPOINT_TOKEN_PREFIX = "cmt_"
ADMIN_KEY_PREFIX = "cmk_"


def generate_token(prefix: str = ENDPOINT_TOKEN_PREFIX) -> str:
    """A new random token (256 bits of entropy) with a prefix that says what it is."""
    return prefix + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The hex SHA-256 of ``token``: the only form a token is stored in."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def verify_token(token: str, token_hash: str) -> bool:
    """Whether ``token`` hashes to ``token_hash``, compared in constant time."""
    return hmac.compare_digest(hash_token(token), token_hash)
