"""What the Python SDK adds to a Recall: `memoire.Memoire.recall` against the same call made with
plain grpcio (the same encoded message, parsed back into a protobuf message), over the same
server, interleaved call by call. Prints p50 / p95 / p99 of both and the difference.

    make bench-sdk          # starts target/release/memoire-server on a fresh database
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).parent))
import conftest  # noqa: E402  (the test suite's server start-up)

import memoire  # noqa: E402
from memoire import _messages  # noqa: E402


class _Factory:
    """What `conftest.running_server` needs of pytest's tmp_path_factory."""

    def mktemp(self, name: str) -> Path:
        import tempfile
        return Path(tempfile.mkdtemp(prefix=name))


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round((len(xs) - 1) * p))] * 1000


def main() -> None:
    calls = 2000 if "--quick" not in sys.argv else 200
    release = conftest.ROOT / "target" / "release" / "memoire-server"
    if release.exists():
        import os
        os.environ.setdefault("MEMOIRE_SERVER_BIN", str(release))
    with conftest.running_server(_Factory(), MEMOIRE_LOG="warn") as srv:
        endpoint = f"http://{srv.target}"
        admin = memoire.Memoire(endpoint, srv.admin_key)
        tenant = admin.create_tenant("bench")["tenant"]["id"]
        key = admin.create_api_key(tenant, role="writer")["secret"]
        m = memoire.Memoire(endpoint, key, user="u")
        for i in range(200):
            m.teach(f"Statement {i} about the user's favourite places and plans", kind="fact")
        query = "favourite places"
        path, req_class, reply_class = _messages.METHODS["Recall"]
        request = req_class(user_id="u", query=query, k=10)
        channel = grpc.insecure_channel(srv.target)
        raw = channel.unary_unary(path, request_serializer=lambda msg: msg.SerializeToString(),
                                  response_deserializer=reply_class.FromString)
        metadata = (("authorization", f"Bearer {key}"),)
        for _ in range(50):  # warm both paths (and the query-embedding cache)
            raw(request, metadata=metadata, timeout=10)
            m.recall(query, k=10)
        sdk_t, raw_t = [], []
        for _ in range(calls):
            t = time.perf_counter()
            raw(request, metadata=metadata, timeout=10)
            raw_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            m.recall(query, k=10)
            sdk_t.append(time.perf_counter() - t)
        print(f"bench-sdk: Recall (k=10, 200 memories, cached query embedding), {calls} calls each, interleaved")
        print(f"{'client':<26} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
        for name, xs in (("grpcio, raw message", raw_t), ("memoire.Memoire.recall", sdk_t)):
            print(f"{name:<26} {pct(xs, .5):>8.3f} {pct(xs, .95):>8.3f} {pct(xs, .99):>8.3f}")
        print(f"SDK overhead at p50: {pct(sdk_t, .5) - pct(raw_t, .5):+.3f} ms "
              f"(mean {1000 * (statistics.mean(sdk_t) - statistics.mean(raw_t)):+.3f} ms)")
        tls_overhead(m, query, calls)


def tls_overhead(plain: "memoire.Memoire", query: str, calls: int) -> None:
    """The same Recall through the SDK to a second server that serves TLS (same data), interleaved
    with the plaintext one, on warm connections."""
    import tempfile
    ca, cert, key_file = conftest.private_pki(Path(tempfile.mkdtemp(prefix="pki")))
    with conftest.running_server(_Factory(), MEMOIRE_LOG="warn", MEMOIRE_TLS_CERT_PATH=str(cert),
                                 MEMOIRE_TLS_KEY_PATH=str(key_file)) as srv:
        url = f"https://localhost:{srv.target.rsplit(':', 1)[1]}"
        admin = memoire.Memoire(url, srv.admin_key, tls_ca_file=str(ca))
        tenant = admin.create_tenant("bench")["tenant"]["id"]
        key = admin.create_api_key(tenant, role="writer")["secret"]
        m = memoire.Memoire(url, key, user="u", tls_ca_file=str(ca))
        for i in range(200):
            m.teach(f"Statement {i} about the user's favourite places and plans", kind="fact")
        for _ in range(50):
            m.recall(query, k=10)
            plain.recall(query, k=10)
        tls_t, plain_t = [], []
        for _ in range(calls):
            t = time.perf_counter()
            plain.recall(query, k=10)
            plain_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            m.recall(query, k=10)
            tls_t.append(time.perf_counter() - t)
        print(f"{'memoire, plaintext':<26} {pct(plain_t, .5):>8.3f} {pct(plain_t, .95):>8.3f} {pct(plain_t, .99):>8.3f}")
        print(f"{'memoire, TLS (warm)':<26} {pct(tls_t, .5):>8.3f} {pct(tls_t, .95):>8.3f} {pct(tls_t, .99):>8.3f}")
        print(f"TLS overhead at p50: {pct(tls_t, .5) - pct(plain_t, .5):+.3f} ms")


if __name__ == "__main__":
    main()
