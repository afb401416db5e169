"""Mémoire's Python SDK: a client for the memory service, and `wrap()` for OpenAI clients.

    import openai, memoire
    client = memoire.wrap(openai.OpenAI(), user="dana")
    client.chat.completions.create(model="gpt-4o-mini", messages=[...])   # remembers, fail-open

    m = memoire.Memoire("http://127.0.0.1:50051", api_key="mem_...", user="dana")
    m.teach("Lives in Dallas", kind="fact", slot="user.home_city")
    print(m.recall("where does she live?")["context"])
"""

from ._wrap import memory_of, wrap
from .client import AsyncMemoire, Memoire
from .errors import (
    AlreadyExistsError,
    ConfigurationError,
    FailedPreconditionError,
    InvalidArgumentError,
    MemoireError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    TimeoutError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
)

__all__ = [
    "AlreadyExistsError", "AsyncMemoire", "ConfigurationError", "FailedPreconditionError",
    "InvalidArgumentError", "Memoire", "MemoireError", "NotFoundError", "PermissionDeniedError",
    "ResourceExhaustedError", "TimeoutError", "UnauthenticatedError", "UnavailableError",
    "UnimplementedError", "memory_of", "wrap",
]
__version__ = "0.1.0"
