"""`memoire.wrap(openai_client)`: memory in every prompt, conversations remembered — fail-open.

Interception is by class-level patches of `Completions.create`, `AsyncCompletions.create`,
`Responses.create` and `AsyncResponses.create`, active only for registered clients (looked up by
the resource's `_client`), with `OpenAI.copy` / `with_options` patched so that copies stay
registered. That survives openai 1.x, 2.x and 3.x; instance patches miss `with_options()` copies
and transport-level interception breaks where openai changed its HTTP library.

The contract: the `try` surrounds only what the wrapper adds. Recall runs within
`recall_budget_ms`; if Mémoire is down, slow, misconfigured or answers garbage, the call proceeds
exactly as without the wrapper, a warning is logged once per incident (per operation, until it
works again), `on_error` is called, and after consecutive failures a circuit breaker skips memory
for a cool-down (then one call probes). Errors of the model call itself propagate unchanged. The
caller's `messages` are never mutated; one-shot iterables (generators) are read once into a list
that both the wrapper and the model see.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
import uuid
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

from .client import AsyncMemoire, Memoire
from .errors import PermissionDeniedError, UnauthenticatedError

_Client = TypeVar("_Client")

log = logging.getLogger("memoire")

_MEMORY_HEADER = "Relevant memories about the user (from Mémoire; each line ends with its id):"


class _Breaker:
    """Consecutive failures open it for `cooldown` seconds. After the cool-down one call probes
    (half-open): a success closes it, a failure opens it again at once — so a service that is
    still down costs one call's budget per cool-down, not `threshold` of them."""

    def __init__(self, threshold: int, cooldown: float) -> None:
        self.threshold, self.cooldown = threshold, cooldown
        self.failures = 0
        self.open_until = 0.0
        self.lock = threading.Lock()

    def allow(self) -> bool:
        with self.lock:
            return time.monotonic() >= self.open_until

    def success(self) -> None:
        with self.lock:
            self.failures = 0
            self.open_until = 0.0

    def failure(self) -> None:
        with self.lock:
            probing = self.open_until > 0.0  # it had opened, and the cool-down ended
            self.failures += 1
            if probing or self.failures >= self.threshold:
                self.open_until = time.monotonic() + self.cooldown
                self.failures = 0

    @property
    def is_open(self) -> bool:
        return not self.allow()


class _Memory:
    """What one wrapped client remembers with."""

    def __init__(self, *, endpoint: str, api_key: Optional[str], user: Optional[str], namespace: Optional[str],
                 session_id: Optional[str], recall_budget_ms: int, k: int, token_budget: int,
                 conscious: bool, on_error: Optional[Callable[[BaseException], Any]],
                 breaker_threshold: int, breaker_cooldown: float, queue_size: int,
                 tls: Dict[str, Optional[str]]) -> None:
        budget = max(recall_budget_ms, 1) / 1000.0
        self.sync = Memoire(endpoint, api_key, namespace=namespace, timeout=budget, max_retries=0, **tls)
        self.aio = AsyncMemoire(endpoint, api_key, namespace=namespace, timeout=budget, max_retries=0, **tls)
        self.writer = Memoire(endpoint, api_key, namespace=namespace, timeout=5.0, max_retries=2, **tls)
        self.user, self.session_id = user, session_id or uuid.uuid4().hex
        self.k, self.token_budget, self.conscious = k, token_budget, conscious
        self.on_error = on_error
        self.breaker = _Breaker(breaker_threshold, breaker_cooldown)
        self.queue: "queue.Queue[Dict[str, Any]]" = queue.Queue(maxsize=queue_size)
        self.stats = {"recalled": 0, "recall_failures": 0, "skipped": 0, "ingested": 0,
                      "ingest_failures": 0, "dropped": 0}
        self.conscious_done: set = set()
        # Operations ("recall", "ingest") in a failure incident: one warning when it starts, one
        # info line when the operation works again.
        self.incidents: set = set()
        self.incidents_lock = threading.Lock()
        # A refused ingest (the key may not write) is not retried on every call: ingestion pauses
        # for the breaker's cool-down.
        self.ingest_paused_until = 0.0
        self.said_no_user = False
        self.worker = threading.Thread(target=self._drain, name="memoire-ingest", daemon=True)
        self.worker.start()

    # --- failure handling -----------------------------------------------------------------

    def failed(self, what: str, e: BaseException) -> None:
        self.breaker.failure()
        with self.incidents_lock:
            new = what not in self.incidents
            self.incidents.add(what)
        if new:
            log.warning("memoire: %s failed (%s: %s); calls proceed without it until it works again "
                        "(after %d failures in a row memory pauses for %.0fs)", what, type(e).__name__, e,
                        self.breaker.threshold, self.breaker.cooldown)
        if self.on_error is not None:
            try:
                self.on_error(e)
            except Exception:  # the callback must not break the call either
                log.exception("memoire: on_error raised")

    def worked(self, what: str) -> None:
        self.breaker.success()
        with self.incidents_lock:
            ended = what in self.incidents
            self.incidents.discard(what)
        if ended:
            log.info("memoire: %s works again", what)

    # --- recall ---------------------------------------------------------------------------

    def _block(self, recalled: Dict[str, Any], conscious: Optional[Dict[str, Any]]) -> Optional[str]:
        parts = []
        if conscious and conscious.get("context"):
            parts.append(conscious["context"].strip())
        if recalled.get("context"):
            parts.append(recalled["context"].strip())
        if not parts:
            return None
        return _MEMORY_HEADER + "\n" + "\n".join(parts)

    def _want_conscious(self, user: str) -> bool:
        if not self.conscious or user in self.conscious_done:
            return False
        self.conscious_done.add(user)
        return True

    def recall_sync(self, user: str, query: str) -> Optional[str]:
        if not self.breaker.allow():
            self.stats["skipped"] += 1
            return None
        try:
            conscious = (self.sync.conscious(user=user, session_id=self.session_id, token_budget=self.token_budget)
                         if self._want_conscious(user) else None)
            recalled = self.sync.recall(query, user=user, k=self.k, token_budget=self.token_budget)
            block = self._block(recalled, conscious)
        except Exception as e:  # fail open: down, slow, garbage, misconfigured
            self.stats["recall_failures"] += 1
            self.failed("recall", e)
            return None
        self.worked("recall")
        self.stats["recalled"] += 1
        return block

    async def recall_async(self, user: str, query: str) -> Optional[str]:
        if not self.breaker.allow():
            self.stats["skipped"] += 1
            return None
        try:
            conscious = (await self.aio.conscious(user=user, session_id=self.session_id,
                                                  token_budget=self.token_budget)
                         if self._want_conscious(user) else None)
            recalled = await self.aio.recall(query, user=user, k=self.k, token_budget=self.token_budget)
            block = self._block(recalled, conscious)
        except Exception as e:
            self.stats["recall_failures"] += 1
            self.failed("recall", e)
            return None
        self.worked("recall")
        self.stats["recalled"] += 1
        return block

    # --- ingest, in the background --------------------------------------------------------

    def ingest_later(self, user: str, said: str, answer: str) -> None:
        if not (said or answer) or not self.breaker.allow():
            return
        if time.monotonic() < self.ingest_paused_until:
            self.stats["skipped"] += 1
            return
        call = uuid.uuid4().hex
        messages = []
        if said:
            messages.append({"role": "user", "content": said, "message_id": f"{call}/u"})
        if answer:
            messages.append({"role": "assistant", "content": answer, "message_id": f"{call}/a"})
        try:
            self.queue.put_nowait({"user": user, "messages": messages})
        except queue.Full:
            self.stats["dropped"] += 1

    def _drain(self) -> None:
        while True:
            item = self.queue.get()
            try:
                self.writer.ingest(item["messages"], user=item["user"], session_id=self.session_id)
                self.stats["ingested"] += 1
                self.worked("ingest")
            except Exception as e:
                self.stats["ingest_failures"] += 1
                if isinstance(e, (PermissionDeniedError, UnauthenticatedError)):
                    self.ingest_paused_until = time.monotonic() + self.breaker.cooldown
                self.failed("ingest", e)
            finally:
                self.queue.task_done()

    def flush(self, timeout: float = 10.0) -> bool:
        """Waits until queued ingests are sent (for tests and shutdown hooks)."""
        deadline = time.monotonic() + timeout
        while self.queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True


# Registered clients: the openai client object -> its memory. Weak: a client that goes away
# unregisters itself.
_registry: "weakref.WeakKeyDictionary[Any, _Memory]" = weakref.WeakKeyDictionary()
_installed = False
_install_lock = threading.Lock()


def _memory_for(resource: Any) -> Optional[_Memory]:
    try:
        return _registry.get(resource._client)
    except (AttributeError, TypeError):
        return None


# --- what a call says, and what the model answered -------------------------------------------

def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if isinstance(p, dict) and isinstance(p.get("text"), str):
                parts.append(p["text"])
        return "\n".join(parts)
    return ""


def _last_user_chat(messages: Any) -> str:
    for m in reversed(list(messages or [])):
        if isinstance(m, dict) and m.get("role") == "user":
            return _text(m.get("content"))
    return ""


def _with_memory_chat(messages: Any, block: str) -> List[Any]:
    """A new list: the memory as a system message after the leading system/developer ones."""
    msgs = list(messages)
    i = 0
    while i < len(msgs) and isinstance(msgs[i], dict) and msgs[i].get("role") in ("system", "developer"):
        i += 1
    return msgs[:i] + [{"role": "system", "content": block}] + msgs[i:]


def _last_user_responses(inp: Any) -> str:
    if isinstance(inp, str):
        return inp
    for item in reversed(list(inp or [])):
        if isinstance(item, dict) and item.get("role", "user") == "user":
            return _text(item.get("content"))
    return ""


def _parsed(result: Any) -> Any:
    # with_raw_response: a raw response whose parse() gives the model's object.
    parse = getattr(result, "parse", None)
    if callable(parse) and not hasattr(result, "choices") and not hasattr(result, "output"):
        return parse()
    return result


def _chat_answer(result: Any) -> str:
    try:
        r = _parsed(result)
        return r.choices[0].message.content or ""
    except Exception:
        return ""


def _responses_answer(result: Any) -> str:
    try:
        return _parsed(result).output_text or ""
    except Exception:
        return ""


def _chunk_text(chunk: Any) -> str:
    try:  # chat completion chunk
        return chunk.choices[0].delta.content or ""
    except Exception:
        pass
    if getattr(chunk, "type", None) == "response.output_text.delta":
        return getattr(chunk, "delta", "") or ""
    return ""


def _tap_stream(stream: Any, on_done: Callable[[str], None]) -> Any:
    """Ingests once the stream is consumed or closed; the stream stays the client's own type."""
    if not hasattr(stream, "_iterator"):
        return stream
    collected: List[str] = []
    finished = threading.Event()

    def finish() -> None:
        if not finished.is_set():
            finished.set()
            on_done("".join(collected))

    inner = stream._iterator
    if hasattr(inner, "__anext__"):
        async def agen():  # type: ignore[no-untyped-def]
            try:
                async for item in inner:
                    try:
                        collected.append(_chunk_text(item))
                    except Exception:
                        pass
                    yield item
            finally:
                finish()

        stream._iterator = agen()
        original_close = stream.close

        async def aclose() -> None:
            try:
                await original_close()
            finally:
                finish()

        stream.close = aclose
    else:
        def gen():  # type: ignore[no-untyped-def]
            try:
                for item in inner:
                    try:
                        collected.append(_chunk_text(item))
                    except Exception:
                        pass
                    yield item
            finally:
                finish()

        stream._iterator = gen()
        original_close = stream.close

        def close() -> None:
            try:
                original_close()
            finally:
                finish()

        stream.close = close
    return stream


# --- the patches ---------------------------------------------------------------------------

class _Call:
    """What the wrapper adds around one model call: the memory before, the ingest after."""

    def __init__(self, mem: _Memory, user: str, said: str, stream: bool) -> None:
        self.mem, self.user, self.said, self.stream = mem, user, said, stream

    def finish(self, result: Any, answer: Callable[[Any], str]) -> Any:
        try:
            if self.stream:
                return _tap_stream(result, lambda text: self.mem.ingest_later(self.user, self.said, text))
            self.mem.ingest_later(self.user, self.said, answer(result))
        except Exception as e:  # never the user's problem
            self.mem.failed("ingest", e)
        return result


def _materialized(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """`messages` / `input` given as a one-shot iterable (a generator, `map`, …) read once into a
    list, so that the wrapper can look at the conversation and the model still receives all of
    it. An error raised while reading it is the caller's, as it would be without the wrapper."""
    out = kwargs
    for key in ("messages", "input"):
        value = kwargs.get(key)
        if value is None or isinstance(value, (str, bytes, list, tuple, dict)):
            continue
        if hasattr(value, "__iter__"):
            out = {**out, key: list(value)}
    return out


def _begin(resource: Any, kwargs: Dict[str, Any],
           said_of: Callable[[Dict[str, Any]], str]) -> Tuple[Optional[_Call], Dict[str, Any]]:
    """The wrapper's part of a call (None when the client is not wrapped or has no user), and the
    call's arguments with one-shot iterables made lists."""
    mem = _memory_for(resource)
    user = kwargs.get("user") or (mem.user if mem else None)
    if mem is not None and not user and not mem.said_no_user:
        mem.said_no_user = True
        log.info("memoire: a call without `user=` (and no default user in wrap()) goes through "
                 "without memory; this is said once per client")
    if mem is None or not user:
        return None, kwargs
    kwargs = _materialized(kwargs)
    try:
        said = said_of(kwargs)
    except Exception:
        said = ""
    return _Call(mem, user, said, bool(kwargs.get("stream"))), kwargs


def _chat_said(kwargs: Dict[str, Any]) -> str:
    return _last_user_chat(kwargs["messages"]) if "messages" in kwargs else ""


def _chat_kwargs(kwargs: Dict[str, Any], block: Optional[str]) -> Dict[str, Any]:
    if not block:
        return kwargs
    return {**kwargs, "messages": _with_memory_chat(kwargs["messages"], block)}


def _responses_said(kwargs: Dict[str, Any]) -> str:
    return _last_user_responses(kwargs.get("input"))


def _responses_kwargs(kwargs: Dict[str, Any], block: Optional[str]) -> Dict[str, Any]:
    if not block:
        return kwargs
    existing = kwargs.get("instructions")
    instructions = f"{existing}\n\n{block}" if existing else block
    return {**kwargs, "instructions": instructions}


def _patch_sync(said_of: Callable[[Dict[str, Any]], str],
                with_memory: Callable[[Dict[str, Any], Optional[str]], Dict[str, Any]],
                answer: Callable[[Any], str]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def create(self: Any, *args: Any, **kwargs: Any) -> Any:
            call, kwargs = _begin(self, kwargs, said_of)
            if call is None or not call.said:
                return original(self, *args, **kwargs)
            try:
                kwargs = with_memory(kwargs, call.mem.recall_sync(call.user, call.said))
            except Exception as e:
                call.mem.failed("recall", e)
            # The model call itself is outside every guard: its errors are the caller's.
            return call.finish(original(self, *args, **kwargs), answer)

        return create

    return make


def _patch_async(said_of: Callable[[Dict[str, Any]], str],
                 with_memory: Callable[[Dict[str, Any], Optional[str]], Dict[str, Any]],
                 answer: Callable[[Any], str]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        async def create(self: Any, *args: Any, **kwargs: Any) -> Any:
            call, kwargs = _begin(self, kwargs, said_of)
            if call is None or not call.said:
                return await original(self, *args, **kwargs)
            try:
                kwargs = with_memory(kwargs, await call.mem.recall_async(call.user, call.said))
            except Exception as e:
                call.mem.failed("recall", e)
            return call.finish(await original(self, *args, **kwargs), answer)

        return create

    return make


_chat_sync = _patch_sync(_chat_said, _chat_kwargs, _chat_answer)
_chat_async = _patch_async(_chat_said, _chat_kwargs, _chat_answer)
_responses_sync = _patch_sync(_responses_said, _responses_kwargs, _responses_answer)
_responses_async = _patch_async(_responses_said, _responses_kwargs, _responses_answer)


def _copy(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def copy(self: Any, *args: Any, **kwargs: Any) -> Any:
        new = original(self, *args, **kwargs)
        mem = _registry.get(self)
        if mem is not None:
            _registry[new] = mem
        return new

    return copy


def _install() -> None:
    global _installed
    with _install_lock:
        if _installed:
            return
        import openai
        from openai.resources.chat.completions import AsyncCompletions, Completions

        patches = [(Completions, "create", _chat_sync), (AsyncCompletions, "create", _chat_async)]
        try:
            from openai.resources.responses import AsyncResponses, Responses

            patches += [(Responses, "create", _responses_sync), (AsyncResponses, "create", _responses_async)]
        except ImportError:  # openai versions before the Responses API
            pass
        # Azure's clients define their own copy().
        for name in ("OpenAI", "AsyncOpenAI", "AzureOpenAI", "AsyncAzureOpenAI"):
            cls = getattr(openai, name, None)
            if cls is not None and "copy" in cls.__dict__:
                patches.append((cls, "copy", _copy))
        for cls, name, make in patches:
            original = getattr(cls, name)
            setattr(cls, name, make(original))
            if name == "copy":
                # `with_options` is an alias of `copy` bound at class creation.
                setattr(cls, "with_options", getattr(cls, "copy"))
        _installed = True


def wrap(client: _Client, *, user: Optional[str] = None, namespace: Optional[str] = None,
         endpoint: str = "http://127.0.0.1:50051", api_key: Optional[str] = None,
         session_id: Optional[str] = None, recall_budget_ms: int = 200, k: int = 10,
         token_budget: int = 1024, conscious: bool = False,
         on_error: Optional[Callable[[BaseException], Any]] = None, breaker_threshold: int = 3,
         breaker_cooldown: float = 30.0, queue_size: int = 1000, tls_ca_file: Optional[str] = None,
         tls_cert_file: Optional[str] = None, tls_key_file: Optional[str] = None) -> _Client:
    """Adds memory to an ``openai.OpenAI`` / ``AsyncOpenAI`` (or Azure) client and returns the
    same client object, typed as it was. ``user`` is the default user (a call's own ``user=``
    wins); calls without a user go through untouched. A Mémoire setting that cannot work (an
    endpoint that is not a URL, …) does not raise: it is logged, passed to ``on_error``, and the
    client is returned without memory. An API key read from a file may end with a newline: white
    space around it is ignored. An ``https://`` endpoint is TLS with the system's roots, plus
    ``tls_ca_file`` (a PEM CA) and ``tls_cert_file`` + ``tls_key_file`` (a client certificate, for
    servers that require one); ``http://`` is plaintext, and nothing falls back from one to the
    other."""
    _install()
    try:
        _registry[client] = _Memory(
            endpoint=endpoint, api_key=api_key.strip() if api_key else api_key, user=user,
            namespace=namespace, session_id=session_id, recall_budget_ms=recall_budget_ms, k=k,
            token_budget=token_budget, conscious=conscious, on_error=on_error,
            breaker_threshold=breaker_threshold, breaker_cooldown=breaker_cooldown, queue_size=queue_size,
            tls={"tls_ca_file": tls_ca_file, "tls_cert_file": tls_cert_file, "tls_key_file": tls_key_file})
    except Exception as e:  # fail open: misconfigured memory never stops the application
        log.warning("memoire: memory is off for this client, its settings cannot work (%s: %s)",
                    type(e).__name__, e)
        if on_error is not None:
            try:
                on_error(e)
            except Exception:
                log.exception("memoire: on_error raised")
    return client


def memory_of(client: Any) -> Optional[_Memory]:
    """The wrapper state of a wrapped client (its ``stats``, ``flush()``), or None."""
    return _registry.get(client)
