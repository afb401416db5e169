"""Type stubs of the native module (Rust, PyO3)."""

from typing import Any, Callable, Dict, Optional, Tuple, final

class CallError(Exception):
    """args: (kind, message, field)."""

@final
class NativeClient:
    def __new__(cls, endpoint: str, api_key: Optional[str] = None, timeout: float = 10.0,
                max_retries: int = 2, tls_ca_file: Optional[str] = None, tls_cert_file: Optional[str] = None,
                tls_key_file: Optional[str] = None) -> "NativeClient": ...
    def call(self, path: str, body: bytes, idempotent: bool, timeout: Optional[float] = None,
             traceparent: Optional[str] = None, tracestate: Optional[str] = None) -> bytes: ...
    def call_async(
        self,
        path: str,
        body: bytes,
        idempotent: bool,
        callback: Callable[[Optional[bytes], Optional[Tuple[str, str, Optional[str]]]], None],
        timeout: Optional[float] = None,
        traceparent: Optional[str] = None,
        tracestate: Optional[str] = None,
    ) -> None: ...

def shutdown() -> None: ...
def file_descriptor_set() -> bytes: ...
def decode_reply(message: str, bytes: bytes) -> Dict[str, Any]: ...
