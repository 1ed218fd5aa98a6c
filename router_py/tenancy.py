"""Tenants: who a request belongs to, and which prefix-cache namespace it may read and write (standard library
only, so configuration and scheduling can import it).

    keys file (--api-keys-file)        one tenant per line: ``TENANT KEY [SHARE]`` (``#`` comments)
        │  the presented ``Authorization: Bearer KEY`` names the tenant; a key not in the file is 401
        ▼
    namespace = TENANT [+ "\\x00" + cache_salt]     (radix tree root and block hashes are per namespace)

Without a keys file the namespace is, as before, the operator's ``--tenant-header`` (only for a trusted proxy
that sets it: clients can send any header), else a hash of the single ``--api-key``, else one shared
namespace. A keys-file tenant is never overridden by a header.

``cache_salt`` (vLLM's per-request field): optional; when given it must be a non-empty string (at most
:data:`MAX_SALT_CHARS` characters). Requests share cached prefixes only when their tenant and salt are equal; a
request without a salt never shares with a salted one. Accepted top-level on every generation route (as vLLM's
OpenAI routes) and as ``parameters.cache_salt`` on TGI's routes.

``SHARE`` (0 < share <= 1): the tenant's fraction of the KV blocks, a partition of its own (see
:mod:`router_py.scheduling.tenant_partitions`); tenants without a share use the blocks left over, together.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_SALT_CHARS = 256
SALT_SEPARATOR = "\x00"


class KeysFileError(ValueError):
    """The keys file cannot be used; the message names the line."""


class CacheSaltError(ValueError):
    """An invalid ``cache_salt``; the HTTP layer answers 422 with this message."""


@dataclass(frozen=True)
class Tenants:
    """``by_key``: API key -> tenant name; ``shares``: tenant -> fraction of the KV blocks."""

    by_key: Mapping[str, str] = field(default_factory=dict)
    shares: Mapping[str, float] = field(default_factory=dict)

    def tenant_of_key(self, presented_authorization: str) -> str | None:
        """The tenant whose key is presented as ``Bearer KEY`` (scheme case-insensitive), else None."""
        scheme, _, key = presented_authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        return self.by_key.get(key.strip())


def load_keys_file(path: str | Path) -> Tenants:
    """Parse a keys file. Raises KeysFileError (unreadable file, malformed line, repeated key, a tenant's
    share given twice differently, shares outside (0, 1] or summing above 1)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise KeysFileError(f"cannot read the API keys file {path}: {e.strerror}") from e
    by_key: dict[str, str] = {}
    shares: dict[str, float] = {}
    for number, line in enumerate(lines, 1):
        parts = line.split("#", 1)[0].split()
        if not parts:
            continue
        where = f"{path}:{number}"
        if len(parts) not in (2, 3):
            raise KeysFileError(f"{where}: expected `TENANT KEY [SHARE]`, got {len(parts)} fields")
        tenant, key = parts[0], parts[1]
        if key in by_key:
            raise KeysFileError(f"{where}: this key is already given to tenant {by_key[key]!r}")
        by_key[key] = tenant
        if len(parts) == 3:
            share = _share(parts[2], where)
            if shares.get(tenant, share) != share:
                raise KeysFileError(f"{where}: tenant {tenant!r} already has share {shares[tenant]}")
            shares[tenant] = share
    if not by_key:
        raise KeysFileError(f"{path}: no keys")
    if sum(shares.values()) > 1 + 1e-9:
        raise KeysFileError(f"{path}: the shares add up to {sum(shares.values()):g}, more than 1")
    return Tenants(by_key, shares)


def _share(raw: str, where: str) -> float:
    try:
        share = float(raw)
    except ValueError:
        raise KeysFileError(f"{where}: SHARE must be a number in (0, 1], got {raw!r}") from None
    if not 0 < share <= 1:
        raise KeysFileError(f"{where}: SHARE must be in (0, 1], got {share:g}")
    return share


def base_namespace(tenants: Tenants | None, tenant_header: str | None, api_key: str | None, headers: Any) -> str:
    """The request's tenant namespace, before any salt (see the module doc for the order)."""
    authorization = headers.get("authorization", "")
    if tenants is not None and tenants.by_key:
        tenant = tenants.tenant_of_key(authorization)
        return tenant if tenant is not None else ""
    if tenant_header and headers.get(tenant_header):
        return str(headers.get(tenant_header))
    if api_key:
        return hashlib.sha256(authorization.lower().encode()).hexdigest()[:16]  # NOTE: keys compare any case
    return ""


def cache_salt(body: Any) -> str | None:
    """The request's ``cache_salt`` (top level, or in TGI's ``parameters``), validated. Raises CacheSaltError."""
    if not isinstance(body, dict):
        return None
    salt = body.get("cache_salt")
    params = body.get("parameters")
    if salt is None and isinstance(params, dict):
        salt = params.get("cache_salt")
    if salt is None:
        return None
    if not isinstance(salt, str) or not salt or len(salt) > MAX_SALT_CHARS:
        raise CacheSaltError(f"`cache_salt` must be a non-empty string of at most {MAX_SALT_CHARS} characters")
    return salt


def salted(namespace: str, salt: str | None) -> str:
    return namespace if salt is None else f"{namespace}{SALT_SEPARATOR}{salt}"


def tenant_of(namespace: str) -> str:
    """The tenant part of a (salted) namespace."""
    return namespace.partition(SALT_SEPARATOR)[0]
