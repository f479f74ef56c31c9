"""A multi-region client for Meridian, using only the standard library.

It learns the cluster from any seed region's ``GET /v1/topology`` and keeps it current from that endpoint's
server-sent event stream (a background thread; it moves to another region when the stream ends). Each request
goes to the region the request needs: writes (and strong reads of single-leader keyspaces) to the leader or the
key's home, other reads to the first healthy region of ``preferred_regions``; restricted keyspaces only ever to
their residency regions. A region that fails repeatedly is left out by a circuit breaker and tried again after
a cool-down. Reads fail over to the next region at once. Every write carries an ``Idempotency-Key`` (the caller's,
or a fresh UUID), so a write whose fate is open (a lost answer, a 503 or 504 saying ``applied: maybe``, a leader
that died) is sent again with the same key until a region answers: the cluster applies it once. The session token of every answer is carried on the next request (read-your-writes in any
region). Reads can be hedged: a second region is asked when the first has not answered within ``hedge_after_ms``.
"""

from __future__ import annotations

import http.client
import json
import random
import ssl
import threading
import time
import uuid
import urllib.parse
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence


class MeridianError(Exception):
    """An answer of the cluster that is not a success, or no answer at all.

    ``code`` is the contract's error code (``key_not_found``, ``leader_unavailable``, ...), or ``unreachable`` when
    no region answered; ``applied`` says whether a write took effect (``no`` or ``maybe``; None for reads).
    """

    def __init__(self, code: str, message: str, status: int = 0, applied: Optional[str] = None,
                 region: Optional[str] = None, body: Optional[dict] = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.applied = applied
        self.region = region
        self.body = body or {}


class NotFound(MeridianError):
    """The key does not exist (404 key_not_found)."""


class PreconditionFailed(MeridianError):
    """If-Match did not hold (412)."""


class Unauthenticated(MeridianError):
    """The token is missing or not valid (401)."""


class Forbidden(MeridianError):
    """The token's scope does not cover the request (403)."""


class Unavailable(MeridianError):
    """No region could serve the request now (503/504, or every region unreachable)."""


_ERRORS = {404: NotFound, 412: PreconditionFailed, 401: Unauthenticated, 403: Forbidden, 503: Unavailable, 504: Unavailable}


@dataclass
class Result:
    """A successful answer: its status, body, version (the ETag), and the region that served it."""

    status: int
    body: bytes
    headers: Dict[str, str]
    region: str

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self):
        return json.loads(self.body)

    @property
    def version(self) -> Optional[str]:
        etag = self.headers.get("etag")
        return etag.strip('"') if etag else None


@dataclass
class _Breaker:
    """A region's circuit breaker: open after ``threshold`` consecutive failures, half-open after the cool-down."""

    failures: int = 0
    open_until: float = 0.0

    def available(self, now: float) -> bool:
        return now >= self.open_until

    def failed(self, now: float, threshold: int, cooldown: float) -> None:
        self.failures += 1
        if self.failures >= threshold:
            self.open_until = now + cooldown

    def succeeded(self) -> None:
        self.failures = 0
        self.open_until = 0.0


@dataclass
class _Topology:
    regions: Dict[str, dict] = field(default_factory=dict)
    keyspaces: Dict[str, dict] = field(default_factory=dict)
    version: int = 0
    quorate: bool = True
    source: Optional[str] = None


class MeridianClient:
    """A client of a whole Meridian cluster.

    :param seeds: client URLs of one or more regions (``http://127.0.0.1:7101``); the rest are discovered.
    :param preferred_regions: regions to read from, nearest first (default: the order of the topology).
    :param token: a bearer token (``Authorization: Bearer``), when the cluster has authentication on.
    :param cafile: the cluster's CA bundle, when its regions speak HTTPS.
    :param timeout: seconds per request attempt.
    :param hedge_after_ms: ask a second region when a read has no answer within this (None: never).
    :param breaker_threshold: consecutive failures before a region is left out.
    :param breaker_cooldown: seconds a region is left out before it is tried again.
    :param follow_topology: keep the topology current from a region's event stream (a background thread).
    :param topology: start from this ``GET /v1/topology`` answer instead of asking a seed.
    """

    def __init__(self, seeds: Sequence[str], preferred_regions: Sequence[str] = (), token: Optional[str] = None,
                 cafile: Optional[str] = None, timeout: float = 5.0, hedge_after_ms: Optional[float] = None,
                 breaker_threshold: int = 2, breaker_cooldown: float = 2.0, follow_topology: bool = True,
                 topology: Optional[dict] = None):
        if not seeds:
            raise ValueError("give at least one seed URL")
        self._seeds = [s.rstrip("/") for s in seeds]
        self._preferred = list(preferred_regions)
        self._token = token
        self._ssl = ssl.create_default_context(cafile=cafile) if cafile else None
        self._timeout = timeout
        self._hedge_after = hedge_after_ms / 1000.0 if hedge_after_ms else None
        self._threshold = breaker_threshold
        self._cooldown = breaker_cooldown
        self._lock = threading.Lock()
        self._topology = _Topology()
        self._breakers: Dict[str, _Breaker] = {}
        self._session: Optional[str] = None
        self._local = threading.local()
        self._closed = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=4) if self._hedge_after else None
        if topology is not None:
            self._install(topology)
        else:
            self.refresh()
        self._follower = None
        if follow_topology:
            self._follower = threading.Thread(target=self._follow, name="meridian-topology", daemon=True)
            self._follower.start()

    # -- the cluster -------------------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Reads the topology from the first region (known or seed) that answers."""
        errors = []
        for url in self._known_urls():
            try:
                status, body, _ = self._raw(url, "GET", "/v1/topology", None, {})
                if status == 200:
                    self._install(json.loads(body))
                    return
                errors.append(f"{url}: {status}")
            except OSError as error:
                errors.append(f"{url}: {error}")
        raise Unavailable("unreachable", "no seed region answered GET /v1/topology: " + "; ".join(errors))

    def topology(self) -> dict:
        """The regions, their health and the keyspaces, as last heard."""
        with self._lock:
            return {"version": self._topology.version, "quorate": self._topology.quorate, "source": self._topology.source,
                    "regions": dict(self._topology.regions), "keyspaces": dict(self._topology.keyspaces)}

    @property
    def session(self) -> Optional[str]:
        """The session token carried on every request (the newest any answer gave)."""
        return self._session

    def close(self) -> None:
        self._closed.set()
        if self._pool:
            self._pool.shutdown(wait=False)

    def _install(self, answer: dict) -> None:
        with self._lock:
            self._topology = _Topology(
                regions={r["name"]: r for r in answer.get("regions", [])},
                keyspaces={k["name"]: k for k in answer.get("keyspaces", [])},
                version=answer.get("version", 0), quorate=answer.get("quorate", True), source=answer.get("region"))

    def _known_urls(self) -> List[str]:
        with self._lock:
            urls = [r["url"] for r in self._topology.regions.values()]
        return urls + [s for s in self._seeds if s not in urls]

    def _follow(self) -> None:
        """Follows a topology stream; on its end moves to the next region. Stops with ``close``."""
        attempt = 0
        while not self._closed.is_set():
            urls = self._routable_urls() or self._known_urls()
            url = urls[attempt % len(urls)]
            attempt += 1
            try:
                self._stream(url)
            except (OSError, http.client.HTTPException, ValueError):
                pass
            self._closed.wait(min(1.0, 0.05 * attempt))

    def _stream(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        connection = self._connect(parts, timeout=3.0)
        try:
            connection.request("GET", "/v1/topology", headers=self._headers({"Accept": "text/event-stream"}))
            response = connection.getresponse()
            if response.status != 200:
                return
            data: List[str] = []
            while not self._closed.is_set():
                line = response.readline(1 << 20)
                if not line:
                    return
                text = line.decode("utf-8").rstrip("\r\n")
                if text.startswith("data:"):
                    data.append(text[5:].lstrip(" "))
                elif text == "" and data:
                    self._install(json.loads("\n".join(data)))
                    data = []
        finally:
            connection.close()

    def _routable_urls(self) -> List[str]:
        with self._lock:
            return [r["url"] for r in self._topology.regions.values() if r.get("health") != "down"]

    # -- requests ----------------------------------------------------------------------------------------------

    def get(self, keyspace: str, key: str, consistency: Optional[str] = None, max_staleness_ms: Optional[int] = None) -> Result:
        """Reads a key. Raises ``NotFound`` when it does not exist."""
        headers = {}
        if consistency:
            headers["Meridian-Consistency"] = consistency
        if max_staleness_ms is not None:
            headers["Meridian-Max-Staleness-Ms"] = str(max_staleness_ms)
        return self._read(keyspace, key, f"/v1/kv/{_quote(keyspace)}/{_quote(key)}", headers, consistency)

    def put(self, keyspace: str, key: str, value, content_type: str = "application/octet-stream", ack: Optional[str] = None,
            if_match: Optional[str] = None, idempotency_key: Optional[str] = None) -> Result:
        """Writes a value (bytes, text, or anything JSON can encode). Returns the answer, with its version.

        ``idempotency_key`` names the write for its retries (default: a fresh UUID); give your own to make a retry of
        the whole call, from your code, safe too."""
        if isinstance(value, str):
            body, content_type = value.encode("utf-8"), ("text/plain; charset=utf-8" if content_type == "application/octet-stream" else content_type)
        elif isinstance(value, (bytes, bytearray)):
            body = bytes(value)
        else:
            body, content_type = json.dumps(value).encode("utf-8"), "application/json"
        headers = {"Content-Type": content_type}
        if ack:
            headers["Meridian-Ack"] = ack
        if if_match:
            headers["If-Match"] = f'"{if_match}"' if not if_match.startswith('"') and if_match != "*" else if_match
        return self._write(keyspace, key, "PUT", f"/v1/kv/{_quote(keyspace)}/{_quote(key)}", body, headers, idempotency_key)

    def delete(self, keyspace: str, key: str, ack: Optional[str] = None, idempotency_key: Optional[str] = None) -> Result:
        headers = {"Meridian-Ack": ack} if ack else {}
        return self._write(keyspace, key, "DELETE", f"/v1/kv/{_quote(keyspace)}/{_quote(key)}", None, headers, idempotency_key)

    def crdt(self, keyspace: str, key: str, operation: dict, idempotency_key: Optional[str] = None) -> Result:
        """Applies a CRDT operation, e.g. ``{"type": "pn-counter", "op": "increment", "by": 1}``."""
        return self._write(keyspace, key, "POST", f"/v1/crdt/{_quote(keyspace)}/{_quote(key)}", json.dumps(operation).encode("utf-8"),
                           {"Content-Type": "application/json"}, idempotency_key)

    def crdt_value(self, keyspace: str, key: str) -> Result:
        return self._read(keyspace, key, f"/v1/crdt/{_quote(keyspace)}/{_quote(key)}", {}, None)

    # -- routing -----------------------------------------------------------------------------------------------

    def _writer(self, keyspace: dict, key: str) -> Optional[str]:
        """The one region that takes writes to ``key``, if one does (the leader, or the key's home)."""
        if keyspace.get("topology") == "single-leader":
            return keyspace.get("leader")
        if keyspace.get("topology") == "geo-partitioned":
            rules = [h for h in keyspace.get("homes") or [] if key.startswith(h["prefix"])]
            if rules:
                return max(rules, key=lambda h: len(h["prefix"]))["region"]
            return keyspace.get("home")
        return None

    def _candidates(self, keyspace_name: str, key: str, write: bool, consistency: Optional[str]) -> List[str]:
        """The regions to try, in order (the writer only, when there is one)."""
        with self._lock:
            regions = dict(self._topology.regions)
            keyspace = self._topology.keyspaces.get(keyspace_name)
        now = time.monotonic()
        order = [r for r in self._preferred if r in regions] + [r for r in regions if r not in self._preferred]
        if keyspace:
            residency = keyspace.get("residency", {})
            if residency.get("classification") == "restricted":
                order = [r for r in order if r in residency.get("regions", [])]
            replicas = keyspace.get("replicas", [])
            order = [r for r in order if r in replicas] + [r for r in order if r not in replicas]
            strong = (consistency or keyspace.get("consistency")) == "strong"
            writer = self._writer(keyspace, key) if (write or (strong and keyspace.get("topology") == "single-leader")) else None
            if writer:
                return [writer]
        healthy = [r for r in order if regions[r].get("health") != "down" and self._breaker(r).available(now)]
        return healthy or order

    def _breaker(self, region: str) -> _Breaker:
        with self._lock:
            return self._breakers.setdefault(region, _Breaker())

    def _url(self, region: str) -> str:
        with self._lock:
            entry = self._topology.regions.get(region)
        if not entry:
            raise Unavailable("unknown_region", f"the topology names no region '{region}'")
        return entry["url"]

    def _read(self, keyspace: str, key: str, path: str, headers: dict, consistency: Optional[str]) -> Result:
        candidates = self._candidates(keyspace, key, write=False, consistency=consistency)
        if self._pool and len(candidates) > 1:
            return self._hedged(candidates, path, headers)
        last: Optional[MeridianError] = None
        for region in candidates:
            try:
                return self._attempt(region, "GET", path, None, headers)
            except (NotFound, PreconditionFailed, Unauthenticated, Forbidden):
                raise
            except MeridianError as error:
                last = error
                if error.status and error.status not in (502, 503, 504):
                    raise
        raise last or Unavailable("unreachable", "no region could serve the read")

    def _hedged(self, candidates: List[str], path: str, headers: dict) -> Result:
        futures = {self._pool.submit(self._attempt, candidates[0], "GET", path, None, headers): candidates[0]}
        done, _ = wait(futures, timeout=self._hedge_after, return_when=FIRST_COMPLETED)
        if not done:
            futures[self._pool.submit(self._attempt, candidates[1], "GET", path, None, headers)] = candidates[1]
        last: Optional[MeridianError] = None
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                try:
                    return future.result()
                except (NotFound, PreconditionFailed, Unauthenticated, Forbidden):
                    raise
                except MeridianError as error:
                    last = error
        for region in candidates[2:]:
            try:
                return self._attempt(region, "GET", path, None, headers)
            except MeridianError as error:
                last = error
        raise last or Unavailable("unreachable", "no region could serve the read")

    def _write(self, keyspace: str, key: str, method: str, path: str, body: Optional[bytes], headers: dict,
               idempotency_key: Optional[str]) -> Result:
        deadline = time.monotonic() + max(self._timeout, 10.0)
        last: Optional[MeridianError] = None
        headers = dict(headers, **{"Idempotency-Key": idempotency_key or str(uuid.uuid4())})
        # Bounded: a few rounds over the candidates, while the cluster elects a leader or routes around a region.
        for round_number in range(50):
            for region in self._candidates(keyspace, key, write=True, consistency=None):
                try:
                    return self._attempt(region, method, path, body, headers)
                except (NotFound, PreconditionFailed, Unauthenticated, Forbidden):
                    raise
                except MeridianError as error:
                    last = error
                    # With its idempotency key a write whose fate is open is sent again: the cluster applies it once.
                    # Answers about the request itself (4xx) are final.
                    if error.status not in (0, 500, 502, 503, 504):
                        raise
            if time.monotonic() > deadline:
                break
            time.sleep(min(0.5, 0.05 * (round_number + 1)) * (0.5 + random.random()))
            try:
                self.refresh()
            except MeridianError:
                pass
        raise last or Unavailable("unreachable", "no region took the write", applied="no")

    def _attempt(self, region: str, method: str, path: str, body: Optional[bytes], headers: dict) -> Result:
        url = self._url(region)
        now = time.monotonic()
        try:
            status, data, response_headers = self._raw(url, method, path, body, self._headers(headers))
        except (OSError, http.client.HTTPException) as error:
            self._breaker(region).failed(now, self._threshold, self._cooldown)
            # A connection that could not be made sent nothing.
            applied = "no" if isinstance(error, ConnectionRefusedError) else ("maybe" if method != "GET" else None)
            raise Unavailable("unreachable", f"{region} ({url}): {error}", applied=applied, region=region)
        session = response_headers.get("meridian-session")
        if session:
            self._session = session
        if status >= 500:
            self._breaker(region).failed(now, self._threshold, self._cooldown)
        else:
            self._breaker(region).succeeded()
        if 200 <= status < 300 or status == 300:
            return Result(status, data, response_headers, response_headers.get("meridian-region", region))
        try:
            error = json.loads(data).get("error", {})
        except ValueError:
            error = {}
        kind = _ERRORS.get(status, MeridianError)
        raise kind(error.get("code", f"http_{status}"), error.get("message", data[:200].decode("utf-8", "replace")), status,
                   error.get("applied"), region, error)

    def _headers(self, extra: dict) -> dict:
        headers = dict(extra)
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if self._session and "Meridian-Session" not in headers:
            headers["Meridian-Session"] = self._session
        return headers

    def _connect(self, parts: urllib.parse.SplitResult, timeout: float):
        if parts.scheme == "https":
            return http.client.HTTPSConnection(parts.hostname, parts.port or 443, timeout=timeout, context=self._ssl)
        return http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)

    def _raw(self, url: str, method: str, path: str, body: Optional[bytes], headers: dict):
        """One request on this thread's keep-alive connection to ``url`` (reconnecting once if it went stale)."""
        connections = getattr(self._local, "connections", None)
        if connections is None:
            connections = self._local.connections = {}
        for attempt in range(2):
            connection = connections.get(url)
            fresh = connection is None
            if fresh:
                connection = connections[url] = self._connect(urllib.parse.urlsplit(url), self._timeout)
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
                return response.status, data, {k.lower(): v for k, v in response.getheaders()}
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                connection.close()
                connections.pop(url, None)
                # A kept-alive connection the server closed meanwhile: once more on a new one (a GET only, or a
                # write whose connection failed before the server read it, which a fresh connection rules out).
                if fresh or attempt == 1 or method != "GET":
                    raise
            except Exception:
                connection.close()
                connections.pop(url, None)
                raise
        raise Unavailable("unreachable", f"{url}: no answer")


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")
