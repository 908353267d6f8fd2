"""A JWKS URL's keys for the authenticator: PyJWT's `PyJWKClient` with a byte cap, fetched off
the event loop and paced, so a slow or hostile identity provider cannot stall requests."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import time
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any

import jwt

from gateway.settings import AuthSettings

logger = logging.getLogger("gateway.policy.auth")

_MAX_JWKS_BYTES = 1024 * 1024
_JWKS_HEADERS = {"Accept": "application/json", "User-Agent": "localmoe-gateway"}


class CappedJWKClient(jwt.PyJWKClient):
    """PyJWKClient reading at most `_MAX_JWKS_BYTES` of the document (it reads any size)."""

    def fetch_data(self) -> Any:
        request = urllib.request.Request(self.uri, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read(_MAX_JWKS_BYTES + 1)
            if len(body) > _MAX_JWKS_BYTES:
                raise ValueError(f"the document is larger than {_MAX_JWKS_BYTES} bytes")
            document = json.loads(body)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise jwt.PyJWKClientConnectionError(str(exc)) from exc
        if self.jwk_set_cache is not None:  # fetch_data's contract: it fills the cache
            self.jwk_set_cache.put(document)
        return document


class RemoteKeys:
    """The JWKS at `auth.jwks_url`: PyJWKClient fetches and parses it and keeps it
    `jwks_refresh_s`.

    Done here because PyJWKClient does not: it fetches inline, which on the event loop would
    stall every request for up to `jwks_timeout_s`, so fetches run on a worker thread (a token
    whose kid is not known yet is refused meanwhile); and its cooldown on refetches for unknown
    kids counts successful fetches only, so here every fetch, failed or not, waits
    `jwks_min_refresh_s` after the one before.
    """

    def __init__(self, settings: AuthSettings, on_fetch: Callable[[Iterable[jwt.PyJWK]], None]):
        self._url = settings.jwks_url or ""
        try:
            self._client = CappedJWKClient(
                self._url,
                lifespan=settings.jwks_refresh_s,
                timeout=settings.jwks_timeout_s,
                headers=_JWKS_HEADERS,
            )
        except jwt.PyJWKClientError as exc:
            raise ValueError(f"jwks_url: {exc}") from None
        self._min_interval_s = settings.jwks_min_refresh_s
        self._next_fetch = 0.0  # monotonic
        self._fetching = False
        self._on_fetch = on_fetch

    def refresh(self, unknown_kid: bool = False, *, wait: bool = False) -> None:
        """Fetch the key set when it is stale or lacks a token's kid: inline with `wait` or with
        no event loop running, else on a worker thread (the caller goes on with the keys it has)."""
        cache = self._client.jwk_set_cache
        stale = cache is None or cache.get() is None
        now = time.monotonic()
        if not (unknown_kid or stale) or self._fetching or now < self._next_fetch:
            return
        self._next_fetch = now + self._min_interval_s
        loop = None if wait else _running_loop()
        if loop is None:
            self._fetch()
            return
        self._fetching = True
        loop.run_in_executor(None, self._fetch)

    def _fetch(self) -> None:
        try:
            key_set = self._client.get_jwk_set(refresh=True)
        except (jwt.PyJWTError, ValueError) as exc:
            logger.warning("cannot fetch the JWKS from %s: %s", self._url, exc)
        else:
            self._on_fetch(key_set.keys)
        finally:
            self._fetching = False


def parse_jwks(document: Any) -> list[jwt.PyJWK]:
    """The usable keys of a JWKS document (none yet is not an error: tokens are refused)."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("a JWKS document is an object with a 'keys' list")
    try:
        return jwt.PyJWKSet.from_dict(document).keys
    except jwt.PyJWKSetError:
        return []  # no usable key (yet): every token is refused until one appears


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
