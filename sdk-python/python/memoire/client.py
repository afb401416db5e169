"""`Memoire` (blocking) and `AsyncMemoire` (asyncio): every unary RPC of `memoire.v1` as a method.

Requests and replies are plain dicts with the .proto's field names. Enum values may be given
short ("fact", "user", "purge") or in full ("MEMORY_KIND_FACT"). Blocking calls release the GIL;
async calls are awaitables resolved from the native runtime. Deadlines and retries (of idempotent
calls only) are enforced in Rust.
"""

from __future__ import annotations

import asyncio
import atexit
import datetime as _dt
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from . import _messages, _native
from .errors import MemoireError, from_native

try:  # Optional: with the OpenTelemetry API installed, calls carry the caller's trace context.
    from opentelemetry import propagate as _propagate
except ImportError:  # pragma: no cover - depends on the environment
    _propagate = None

# The native runtime stops before the interpreter finalizes, with the GIL released.
atexit.register(_native.shutdown)

# Reads, and calls that are safe to repeat.
_IDEMPOTENT = {
    "Recall", "Conscious", "GetMemory", "ListMemories", "History", "ListTenants", "ListApiKeys",
    "GetStats", "ListDeadLetters", "ListUsers", "ListEpisodes", "WhoAmI",
}

_ENUM_PREFIX = {
    "kind": "MEMORY_KIND_", "role": "MESSAGE_ROLE_", "mode": "FORGET_MODE_", "job": "MAINTENANCE_JOB_",
    "pii_mode": "PII_MODE_", "key_role": "KEY_ROLE_",
}


def _enum(field: str, value: Any) -> Any:
    prefix = _ENUM_PREFIX[field]
    if isinstance(value, str) and not value.startswith(prefix):
        return prefix + value.upper()
    return value


def _time(value: Any) -> Any:
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return value.isoformat()
    return value


def _drop_none(d: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _message(m: Mapping[str, Any]) -> Dict[str, Any]:
    out = dict(m)
    if "role" in out:
        out["role"] = _enum("role", out["role"])
    if "occurred_at" in out:
        out["occurred_at"] = _time(out["occurred_at"])
    return _drop_none(out)


class _Api:
    """The RPCs, shared by the blocking and the async client; `_call` makes the difference."""

    def __init__(
        self,
        endpoint: str = "http://127.0.0.1:50051",
        api_key: Optional[str] = None,
        *,
        user: Optional[str] = None,
        namespace: Optional[str] = None,
        timeout: float = 10.0,
        max_retries: int = 2,
        tls_ca_file: Optional[str] = None,
        tls_cert_file: Optional[str] = None,
        tls_key_file: Optional[str] = None,
    ) -> None:
        try:
            self._native = _native.NativeClient(endpoint, api_key, timeout, max_retries, tls_ca_file,
                                                tls_cert_file, tls_key_file)
        except _native.CallError as e:
            raise from_native(*e.args) from None
        self.endpoint = endpoint
        self.user = user
        self.namespace = namespace
        self.timeout = timeout

    def _call(self, method: str, request: Dict[str, Any], timeout: Optional[float]) -> Any:
        raise NotImplementedError

    def _scoped(self, user: Optional[str], namespace: Optional[str], **fields: Any) -> Dict[str, Any]:
        out = _drop_none(fields)
        if user or self.user:
            out["user_id"] = user or self.user
        if namespace or self.namespace:
            out["namespace"] = namespace or self.namespace
        return out

    def _namespaces(self, namespaces: Optional[Sequence[str]]) -> Optional[List[str]]:
        if namespaces:
            return list(namespaces)
        return [self.namespace] if self.namespace else None

    # --- memory service -------------------------------------------------------------------

    def ingest(self, messages: Iterable[Mapping[str, Any]], *, session_id: str, user: Optional[str] = None,
               namespace: Optional[str] = None, wait_for_extraction: bool = False,
               wait_timeout: Optional[float] = None, timeout: Optional[float] = None,
               user_name: Optional[str] = None) -> Any:
        msgs = [_message(m) for m in messages]
        req = self._scoped(user, namespace, session_id=session_id, messages=msgs, user_name=user_name,
                           wait_for_extraction=wait_for_extraction or None,
                           wait_timeout=f"{wait_timeout}s" if wait_timeout else None)
        return self._call("Ingest", req, timeout)

    def recall(self, query: str, *, user: Optional[str] = None, namespaces: Optional[Sequence[str]] = None,
               k: Optional[int] = None, token_budget: Optional[int] = None, tokenizer: Optional[str] = None,
               filter: Optional[Mapping[str, Any]] = None, include_episodes: Optional[bool] = None,
               explain: bool = False, timeout: Optional[float] = None) -> Any:
        f = dict(filter or {})
        if "kinds" in f:
            f["kinds"] = [_enum("kind", x) for x in f["kinds"]]
        for t in ("as_of", "created_after", "created_before"):
            if t in f:
                f[t] = _time(f[t])
        req = _drop_none({
            "user_id": user or self.user, "namespaces": self._namespaces(namespaces), "query": query,
            "k": k, "token_budget": token_budget, "tokenizer": tokenizer, "filter": f or None,
            "include_episodes": include_episodes, "explain": explain or None,
        })
        return self._call("Recall", req, timeout)

    def conscious(self, *, user: Optional[str] = None, namespace: Optional[str] = None,
                  session_id: Optional[str] = None, token_budget: Optional[int] = None,
                  tokenizer: Optional[str] = None, timeout: Optional[float] = None) -> Any:
        req = self._scoped(user, namespace, session_id=session_id, token_budget=token_budget,
                           tokenizer=tokenizer)
        return self._call("Conscious", req, timeout)

    def teach(self, content: str = "", *, kind: Optional[str] = None, user: Optional[str] = None,
              namespace: Optional[str] = None, memory_id: Optional[str] = None, timeout: Optional[float] = None,
              **fields: Any) -> Any:
        """A new memory (``kind`` required), or a correction of ``memory_id``. Other fields:
        slot, subject, tags, importance, confidence, pinned, expires_at, force_create, reason."""
        if "expires_at" in fields:
            fields["expires_at"] = _time(fields["expires_at"])
        req = self._scoped(user, namespace, content=content or None, memory_id=memory_id,
                           kind=_enum("kind", kind) if kind else None, **fields)
        return self._call("Teach", req, timeout)

    def forget(self, memory_ids: Optional[Sequence[str]] = None, *, selector: Optional[Mapping[str, Any]] = None,
               mode: Optional[str] = None, dry_run: bool = False, reason: Optional[str] = None,
               timeout: Optional[float] = None) -> Any:
        sel = dict(selector) if selector else None
        if sel and "kind" in sel:
            sel["kind"] = _enum("kind", sel["kind"])
        if sel and "before" in sel:
            sel["before"] = _time(sel["before"])
        req = _drop_none({"memory_ids": list(memory_ids) if memory_ids else None, "selector": sel,
                          "mode": _enum("mode", mode) if mode else None, "dry_run": dry_run or None,
                          "reason": reason})
        return self._call("Forget", req, timeout)

    def get_memory(self, memory_id: str, *, timeout: Optional[float] = None) -> Any:
        return self._call("GetMemory", {"memory_id": memory_id}, timeout)

    def list_memories(self, *, user: Optional[str] = None, namespaces: Optional[Sequence[str]] = None,
                      timeout: Optional[float] = None, **fields: Any) -> Any:
        """Fields: kinds, tags, slot, include_superseded, created_after, created_before,
        page_size, page_token."""
        if "kinds" in fields:
            fields["kinds"] = [_enum("kind", x) for x in fields["kinds"]]
        req = _drop_none({"user_id": user or self.user, "namespaces": self._namespaces(namespaces),
                          **{k: _time(v) for k, v in fields.items()}})
        return self._call("ListMemories", req, timeout)

    def history(self, memory_id: str, *, timeout: Optional[float] = None) -> Any:
        return self._call("History", {"memory_id": memory_id}, timeout)

    def chat(self, content: str, *, session_id: str, user: Optional[str] = None,
             namespace: Optional[str] = None, message_id: Optional[str] = None, k: Optional[int] = None,
             token_budget: Optional[int] = None, wait_timeout: Optional[float] = None,
             dry_run: bool = False, timeout: Optional[float] = None) -> Any:
        """Stores the message, builds the prompt from memory and, with the server's chat model,
        returns its reply (`prompt`, `reply`, `model`); `dry_run` only builds the prompt."""
        req = self._scoped(user, namespace, session_id=session_id, content=content, message_id=message_id,
                           k=k, token_budget=token_budget, dry_run=dry_run or None,
                           wait_timeout=f"{wait_timeout}s" if wait_timeout else None)
        return self._call("Chat", req, timeout)

    def list_users(self, *, namespace: Optional[str] = None, page_size: Optional[int] = None,
                   page_token: Optional[str] = None, timeout: Optional[float] = None) -> Any:
        req = _drop_none({"namespace": namespace, "page_size": page_size, "page_token": page_token})
        return self._call("ListUsers", req, timeout)

    def list_episodes(self, *, session_id: str, user: Optional[str] = None, namespace: Optional[str] = None,
                      page_size: Optional[int] = None, page_token: Optional[str] = None,
                      timeout: Optional[float] = None) -> Any:
        req = self._scoped(user, namespace, session_id=session_id, page_size=page_size, page_token=page_token)
        return self._call("ListEpisodes", req, timeout)

    def who_am_i(self, *, timeout: Optional[float] = None) -> Any:
        return self._call("WhoAmI", {}, timeout)

    # --- admin service --------------------------------------------------------------------

    def create_tenant(self, name: str, *, timeout: Optional[float] = None) -> Any:
        return self._call("CreateTenant", {"name": name}, timeout)

    def list_tenants(self, *, timeout: Optional[float] = None) -> Any:
        return self._call("ListTenants", {}, timeout)

    def update_tenant(self, tenant_id: str = "", *, timeout: Optional[float] = None, **fields: Any) -> Any:
        """Fields: pii_mode, extraction_create_only, episode_retention_days, memory_retention_days,
        scrub_teach, the quotas max_memories, max_episodes and max_content_bytes (0: none), rate_limit_rps and
        rate_limit_burst (requests per second of all the tenant's keys; 0: none),
        ingest_rate_limit_mps (ingested messages per second; 0: none)."""
        if "pii_mode" in fields:
            fields["pii_mode"] = _enum("pii_mode", fields["pii_mode"])
        return self._call("UpdateTenant", _drop_none({"tenant_id": tenant_id or None, **fields}), timeout)

    def create_api_key(self, tenant_id: str = "", *, role: str = "writer", name: str = "",
                       rate_limit_rps: int = 0, timeout: Optional[float] = None) -> Any:
        """A key acting for the tenant; `rate_limit_rps` limits it on its own (0: only the
        tenant's limit). The secret is in the reply, shown once."""
        req = _drop_none({"tenant_id": tenant_id or None, "role": _enum("key_role", role), "name": name or None,
                          "rate_limit_rps": rate_limit_rps or None})
        return self._call("CreateApiKey", req, timeout)

    def list_api_keys(self, tenant_id: str = "", *, timeout: Optional[float] = None) -> Any:
        return self._call("ListApiKeys", _drop_none({"tenant_id": tenant_id or None}), timeout)

    def revoke_api_key(self, key_id: str, *, timeout: Optional[float] = None) -> Any:
        return self._call("RevokeApiKey", {"key_id": key_id}, timeout)

    def get_stats(self, tenant_id: str = "", *, timeout: Optional[float] = None) -> Any:
        return self._call("GetStats", _drop_none({"tenant_id": tenant_id or None}), timeout)

    def run_maintenance(self, job: str, *, tenant_id: str = "", user: Optional[str] = None, wait: bool = False,
                        timeout: Optional[float] = None) -> Any:
        req = _drop_none({"job": _enum("job", job), "tenant_id": tenant_id or None, "user_id": user,
                          "wait": wait or None})
        return self._call("RunMaintenance", req, timeout)

    def list_dead_letters(self, tenant_id: str = "", *, page_size: Optional[int] = None,
                          page_token: Optional[str] = None, timeout: Optional[float] = None) -> Any:
        req = _drop_none({"tenant_id": tenant_id or None, "page_size": page_size, "page_token": page_token})
        return self._call("ListDeadLetters", req, timeout)

    def replay_dead_letters(self, tenant_id: str = "", ids: Optional[Sequence[str]] = None, *,
                            timeout: Optional[float] = None) -> Any:
        req = _drop_none({"tenant_id": tenant_id or None, "ids": list(ids) if ids else None})
        return self._call("ReplayDeadLetters", req, timeout)


def _idempotent(method: str, request: Mapping[str, Any]) -> bool:
    if method == "Chat":
        # A dry run reads; a turn is stored once per message id (the model may be asked again).
        return bool(request.get("dry_run") or request.get("message_id"))
    if method == "Ingest":
        msgs = request.get("messages") or []
        return bool(msgs) and all(m.get("message_id") for m in msgs)
    return method in _IDEMPOTENT


def _encode(method: str, request: Dict[str, Any]) -> bytes:
    try:
        return _messages.encode(method, request)
    except Exception as e:  # json_format.ParseError, TypeError, ValueError
        raise MemoireError(f"{method}: the request cannot be encoded: {e}") from None


def _decode(method: str, reply: bytes) -> Dict[str, Any]:
    try:
        return _messages.decode(method, reply)
    except ValueError as e:  # malformed bytes
        raise MemoireError(f"{method}: the reply cannot be decoded: {e}") from None


def _trace_context() -> Tuple[Optional[str], Optional[str]]:
    """The W3C trace context (traceparent, tracestate) of the caller's current OpenTelemetry span,
    so that the server traces the call under it; (None, None) without the `opentelemetry`
    package or outside a span."""
    if _propagate is None:
        return None, None
    carrier: Dict[str, str] = {}
    _propagate.inject(carrier)
    return carrier.get("traceparent"), carrier.get("tracestate")


class Memoire(_Api):
    """The blocking client. Every method returns the reply as a dict."""

    def _call(self, method: str, request: Dict[str, Any], timeout: Optional[float]) -> Dict[str, Any]:
        body = _encode(method, request)
        path = _messages.METHODS[method][0]
        try:
            reply = self._native.call(path, body, _idempotent(method, request), timeout, *_trace_context())
        except _native.CallError as e:
            raise from_native(*e.args) from None
        return _decode(method, reply)


class AsyncMemoire(_Api):
    """The asyncio client. Every method returns an awaitable of the reply dict."""

    def _call(self, method: str, request: Dict[str, Any], timeout: Optional[float]) -> "asyncio.Future[Dict[str, Any]]":
        body = _encode(method, request)
        path = _messages.METHODS[method][0]
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Dict[str, Any]] = loop.create_future()

        def resolve(reply: Optional[bytes], error: Optional[tuple]) -> None:
            if future.cancelled():
                return
            if error is not None:
                future.set_exception(from_native(*error))
                return
            try:
                future.set_result(_decode(method, reply or b""))
            except MemoireError as e:  # a reply that cannot be decoded
                future.set_exception(e)

        def done(reply: Optional[bytes], error: Optional[tuple]) -> None:
            # On a runtime thread: hand over to the loop's thread. A closed loop has no one
            # waiting any more.
            try:
                loop.call_soon_threadsafe(resolve, reply, error)
            except RuntimeError:
                pass

        try:
            self._native.call_async(path, body, _idempotent(method, request), done, timeout, *_trace_context())
        except _native.CallError as e:
            future.set_exception(from_native(*e.args))
        return future
