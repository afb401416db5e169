"""Mémoire beside the open-source peer (mem0), in one process, alternating calls (`make bench-peer`).

Both store short facts about one user in pgvector on the same Postgres and embed with the same
all-MiniLM-L6-v2 files (.models/): mem0 through sentence-transformers on one torch thread,
Mémoire through its release server (candle). mem0 runs without an LLM (`add(..., infer=False)`);
Mémoire's Teach uses `force_create` (the data has near-duplicates mem0 stores) and its
query-embedding cache is off, since mem0 embeds every query.

For each scope (memories of the searched user; `--scopes 1000,10000,100000`, default 1000,10000):
  - both are loaded: mem0 in bulk through its own vector store (the rows `add` writes, embedded
    in batches), Mémoire through Teach from four threads;
  - insert: `add` against Teach, one call each in turn, at concurrency 1;
  - search: `search(top_k=10)` against `Recall(k=10)`, in turn at concurrency 1, then in rounds at
    concurrency 4 (four threads on one system, then on the other).
Prints p50 / p95 ms and calls/s of both, the ratio of the p95s, and results returned per k; and
where Mémoire's CPU goes per search at c=4 (its server, Postgres, Redis, this client), from
/proc.

    make bench-peer                         # installs the peer into .venv-peer first
    make bench-peer ARGS="--scopes 1000 --queries 100"
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import os
import random
import re
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("MEM0_TELEMETRY", "False")
os.environ.setdefault("OPENAI_API_KEY", "unused")  # mem0 builds an LLM client; infer=False never calls it
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).parent))
import conftest  # noqa: E402  (the test suite's server start-up and database helpers)

import memoire  # noqa: E402

CITIES = ["Dallas", "Lisbon", "Osaka", "Denver", "Nairobi", "Toronto", "Krakow", "Austin", "Seoul",
          "Lyon", "Porto", "Boston", "Hanoi", "Oslo", "Lima", "Perth", "Cairo", "Dublin", "Quito", "Tampa"]
THINGS = ["sushi", "jazz", "chess", "hiking", "pottery", "tennis", "baking", "sailing", "poetry",
          "cycling", "gardening", "opera", "climbing", "knitting", "surfing", "ramen", "tango", "yoga"]
PEOPLE = ["sister", "brother", "manager", "neighbour", "cousin", "friend", "daughter", "son", "partner"]
TEMPLATES = [
    "Lived in {city} for {n} years before moving",
    "Goes {thing} with their {person} every {day}",
    "Their {person} recommended {thing} classes in {city}",
    "Is planning a trip to {city} in {month} to try {thing}",
    "Dislikes {thing} since an accident in {year}",
    "Met their {person} at a {thing} club in {city}",
    "Spent {n} weeks learning {thing} in {year}",
    "Wants their {person} to visit {city} in {month}",
]
QUERIES = [
    "Where did the user live before?", "What hobbies does the user have?", "Who recommended classes?",
    "Where is the user travelling next?", "What does the user dislike?", "Where did they meet their {person}?",
    "What did the user learn in {year}?", "Does the user like {thing}?", "Trips planned to {city}",
    "What does the user do with their {person}?",
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "March", "May", "July", "September", "November"]


def fill(rng: random.Random, template: str) -> str:
    return template.format(city=rng.choice(CITIES), thing=rng.choice(THINGS), person=rng.choice(PEOPLE),
                           day=rng.choice(DAYS), month=rng.choice(MONTHS), year=rng.randint(1995, 2024),
                           n=rng.randint(2, 30))


def facts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [fill(rng, rng.choice(TEMPLATES)) for _ in range(n)]


def queries(n: int) -> list[str]:
    rng = random.Random(99)
    return [fill(rng, rng.choice(QUERIES)) for _ in range(n)]


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round((len(xs) - 1) * p))] * 1000


class Peer:
    """mem0 on its own database (same Postgres), the model files Mémoire loads."""

    def __init__(self, model_dir: Path, database_url: str, history: Path):
        import torch
        torch.set_num_threads(1)
        from mem0 import Memory
        self.memory = Memory.from_config({
            "vector_store": {"provider": "pgvector", "config": {
                "connection_string": database_url, "collection_name": "bench",
                "embedding_model_dims": 384, "hnsw": True}},
            "embedder": {"provider": "huggingface", "config": {"model": str(model_dir)}},
            "history_db_path": str(history),
        })

    def load(self, user: str, texts: list[str]) -> None:
        """The rows `add(infer=False)` writes, embedded and inserted in batches."""
        from mem0.utils.lemmatization import lemmatize_for_bm25
        for i in range(0, len(texts), 500):
            batch = texts[i:i + 500]
            vectors = self.memory.embedding_model.embed_batch(batch, "add")
            now = datetime.now(timezone.utc).isoformat()
            payloads = [{"data": t, "hash": hashlib.md5(t.encode()).hexdigest(), "user_id": user,
                         "role": "user", "created_at": now, "updated_at": now,
                         "text_lemmatized": lemmatize_for_bm25(t)} for t in batch]
            self.memory.vector_store.insert(vectors=vectors, ids=[str(uuid.uuid4()) for _ in batch],
                                            payloads=payloads)

    def insert(self, user: str, text: str) -> int:
        return len(self.memory.add([{"role": "user", "content": text}], user_id=user, infer=False)["results"])

    def search(self, user: str, query: str) -> int:
        return len(self.memory.search(query, top_k=10, filters={"user_id": user})["results"])


class Ours:
    def __init__(self, client: memoire.Memoire):
        self.client = client

    def load(self, user: str, texts: list[str]) -> None:
        with cf.ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda t: self.insert(user, t), texts))

    def insert(self, user: str, text: str) -> int:
        self.client.teach(text, kind="fact", user=user, force_create=True)
        return 1

    def search(self, user: str, query: str) -> int:
        return len(self.client.recall(query, user=user, k=10)["items"])


def timed(call, *args) -> tuple[float, int]:
    started = time.perf_counter()
    n = call(*args)
    return time.perf_counter() - started, n


def alternate(systems, op: str, args: list) -> dict:
    """Each argument through every system in turn, at concurrency 1."""
    out = {name: ([], []) for name, _ in systems}
    for a in args:
        for name, system in systems:
            secs, n = timed(getattr(system, op), *a)
            out[name][0].append(secs)
            out[name][1].append(n)
    return {name: (lat, got, sum(lat)) for name, (lat, got) in out.items()}


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes `pids` have used (those still running)."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def pids_named(comm: str) -> list[int]:
    """The local processes named `comm` (Postgres's backends come and go with connections)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == comm:
                    out.append(int(entry.name))
            except OSError:
                pass
    return out


def rounds(systems, user: str, qs: list[str], threads: int = 4, per_round: int = 50,
           server_pid: int | None = None, cpu: dict | None = None) -> dict:
    """Rounds of `per_round` searches from `threads` threads, one system after the other. With
    `cpu`, adds the CPU seconds Mémoire's rounds cost its server (`server_pid`), Postgres, Redis
    and this process to `cpu["server"]`, `cpu["postgres"]`, `cpu["redis"]`, `cpu["client"]`."""
    out = {name: ([], [], 0.0) for name, _ in systems}
    with cf.ThreadPoolExecutor(threads) as pool:
        for start in range(0, len(qs), per_round):
            chunk = qs[start:start + per_round]
            for name, system in systems:
                measured = cpu is not None and name == "Mémoire"
                if measured:
                    pg, redis = pids_named("postgres"), pids_named("redis-server")
                    before = (cpu_seconds([server_pid]), cpu_seconds(pg), cpu_seconds(redis),
                              cpu_seconds([os.getpid()]))
                began = time.perf_counter()
                results = list(pool.map(lambda q: timed(system.search, user, q), chunk))
                wall = time.perf_counter() - began
                if measured:
                    after = (cpu_seconds([server_pid]), cpu_seconds(sorted(set(pg) | set(pids_named("postgres")))),
                             cpu_seconds(redis), cpu_seconds([os.getpid()]))
                    for key, b, a in zip(("server", "postgres", "redis", "client"), before, after):
                        cpu[key] = cpu.get(key, 0.0) + a - b
                lat, got, total = out[name]
                lat.extend(r[0] for r in results)
                got.extend(r[1] for r in results)
                out[name] = (lat, got, total + wall)
    return out


def row(scope: int, what: str, c: int, res: dict, k: int | None) -> str:
    cells = []
    for name in ("mem0", "Mémoire"):
        lat, got, wall = res[name]
        cells.append(f"{pct(lat, 0.5):.1f} / {pct(lat, 0.95):.1f} ({len(lat) / wall:.0f}/s)")
    ratio = pct(res["Mémoire"][0], 0.95) / pct(res["mem0"][0], 0.95)
    per_k = ""
    if k:
        per_k = " | " + " | ".join(f"{sum(res[n][1]) / len(res[n][1]) / k:.2f}" for n in ("mem0", "Mémoire"))
    else:
        per_k = " | – | –"
    return f"| {scope:,} | {what} | {c} | {cells[0]} | {cells[1]} | {ratio:.2f}×{per_k} |"


def server_times(http: str) -> dict[str, tuple[float, int]]:
    """Mémoire's own account of its time: (sum of seconds, count) of each Recall stage
    (`memoire_recall_stage_seconds`), of the query embeddings and of the Recall RPC, from /metrics."""
    import urllib.request

    wanted = ("memoire_recall_stage_seconds", "memoire_embedding_duration_seconds", "memoire_rpc_duration_seconds")
    out: dict[str, list[float]] = {}
    with urllib.request.urlopen(f"http://{http}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            name, _, value = line.rpartition(" ")
            for base in wanted:
                for part, i in (("_sum", 0), ("_count", 1)):
                    if name.startswith(base + part):
                        key = base.removeprefix("memoire_").removesuffix("_seconds") + name[len(base + part):]
                        if base.endswith("rpc_duration_seconds") and "Recall" not in key:
                            continue
                        if base.startswith("memoire_embedding") and 'kind="query"' not in key:
                            continue
                        out.setdefault(key, [0.0, 0])[i] = float(value)
    return {k: (v[0], int(v[1])) for k, v in out.items()}


def profile(scope: int, before: dict, after: dict) -> str:
    """Mean milliseconds of each server-side stage over the calls between `before` and `after`."""
    parts = []
    for key in sorted(after):
        total, n = after[key][0] - before.get(key, (0.0, 0))[0], after[key][1] - before.get(key, (0.0, 0))[1]
        if n > 0:
            label = re.sub(r'^recall_stage\{stage="([a-z_]+)",table="([a-z]+)"\}$', r"\1 (\2)", key)
            label = {'embedding_duration{kind="query"}': "query embedding"}.get(label, label)
            label = "whole Recall" if key.startswith("rpc_duration") else label
            parts.append(f"{label} {total / n * 1000:.2f}")
    return (f"bench-peer: Mémoire's server at {scope:,}, search c=1, mean ms over {after_calls(before, after)} "
            "calls: " + "; ".join(parts))


def after_calls(before: dict, after: dict) -> int:
    return max((n - before.get(k, (0.0, 0))[1] for k, (_, n) in after.items() if k.startswith("rpc_duration")), default=0)


class _Factory:
    def mktemp(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=name))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scopes", default="1000,10000", help="memories of the searched user, comma-separated")
    ap.add_argument("--queries", type=int, default=400, help="searches per system per concurrency")
    ap.add_argument("--inserts", type=int, default=300, help="inserts per system per scope")
    args = ap.parse_args()
    scopes = [int(s) for s in args.scopes.split(",") if s]
    model_dir = Path(os.environ.get("MEMOIRE_EMBEDDING_MODEL_DIR", conftest.ROOT / ".models" / "all-MiniLM-L6-v2"))
    peer_db = f"memoire_peer_{uuid.uuid4().hex[:12]}"
    conftest.psql(f"CREATE DATABASE {peer_db}")
    peer_url = conftest.BASE_URL.rsplit("/", 1)[0].replace("postgres://", "postgresql://") + "/" + peer_db
    lines = [
        "| scope | operation | c | mem0 p50 / p95 ms (calls/s) | Mémoire p50 / p95 ms (calls/s) "
        "| p95 ratio | mem0 results/k | Mémoire results/k |",
        "|---|---|---|---|---|---|---|---|",
    ]
    try:
        with tempfile.TemporaryDirectory() as tmp, \
                conftest.running_server(_Factory(), MEMOIRE_LOG="warn", MEMOIRE_QUERY_CACHE_TTL_SECS="0") as srv:
            peer = Peer(model_dir, peer_url, Path(tmp) / "history.db")
            admin = memoire.Memoire(f"http://{srv.target}", srv.admin_key)
            tenant = admin.create_tenant("bench-peer")["tenant"]["id"]
            ours = Ours(memoire.Memoire(f"http://{srv.target}", admin.create_api_key(tenant, role="writer")["secret"]))
            systems = [("mem0", peer), ("Mémoire", ours)]
            qs = queries(args.queries)
            # Both warm: the model loaded, connections open.
            for name, system in systems:
                system.insert("warm", "Likes warm starts")
                for q in qs[:20]:
                    system.search("warm", q)
            for scope in scopes:
                user = f"user-{scope}"
                texts = facts(scope, seed=scope)
                for name, system in systems:
                    began = time.perf_counter()
                    system.load(user, texts)
                    print(f"bench-peer: {name} loaded {scope:,} memories in {time.perf_counter() - began:.0f} s",
                          file=sys.stderr)
                extra = [(user, t) for t in facts(args.inserts, seed=scope + 1)]
                lines.append(row(scope, "insert", 1, alternate(systems, "insert", extra), None))
                before = server_times(srv.http)
                lines.append(row(scope, "search", 1, alternate(systems, "search", [(user, q) for q in qs]), 10))
                print(profile(scope, before, server_times(srv.http)), file=sys.stderr)
                cpu: dict = {}
                lines.append(row(scope, "search", 4, rounds(systems, user, qs, server_pid=srv.proc.pid, cpu=cpu), 10))
                print(f"bench-peer: Mémoire at {scope:,}, search c=4, CPU ms per search: "
                      + "; ".join(f"{k} {v / len(qs) * 1000:.2f}" for k, v in cpu.items()), file=sys.stderr)
                print("\n".join(lines[-3:]), file=sys.stderr)
    finally:
        conftest.psql(f"DROP DATABASE IF EXISTS {peer_db} WITH (FORCE)")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
