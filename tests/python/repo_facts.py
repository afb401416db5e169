"""What the code says, read from its source, for the tests that check deploy files against it
(test_deploy_files.py, test_k8s_manifests.py): the settings, their default addresses, the
binaries, the server's subcommands, the HTTP routes every process serves, and the metrics they
export (test_monitoring.py)."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def settings() -> set[str]:
    """Every setting's environment variable (`MEMOIRE_<KEY>`), from config/src/lib.rs's SETTINGS."""
    src = (ROOT / "config" / "src" / "lib.rs").read_text()
    table = src[src.index("pub const SETTINGS"):src.index("];", src.index("pub const SETTINGS"))]
    return {"MEMOIRE_" + k.upper() for k in re.findall(r'\(\s*"([a-z_]+)"', table)}


def default_addr(key: str) -> tuple[str, int]:
    """The default (host, port) of a `SocketAddr` setting, from `Config::default()`."""
    src = (ROOT / "config" / "src" / "lib.rs").read_text()
    defaults = src[src.index("impl Default for Config"):]
    m = re.search(rf"\b{key}: SocketAddr::from\(\(\[(\d+), (\d+), (\d+), (\d+)\], (\d+)\)\)", defaults)
    assert m, f"no default for {key} in config/src/lib.rs"
    return ".".join(m.groups()[:4]), int(m.group(5))


def binaries() -> set[str]:
    """The binaries the app crate builds (the image's `memoire-server` and `memoire-worker`)."""
    cargo = tomllib.loads((ROOT / "app" / "Cargo.toml").read_text())
    return {b["name"] for b in cargo["bin"]}


def server_subcommands() -> set[str]:
    """`memoire-server`'s subcommands: the variants of its clap `Command` enum, in the kebab case
    clap derives (`CheckConfig` -> `check-config`)."""
    src = (ROOT / "app" / "src" / "bin" / "memoire-server.rs").read_text()
    body = re.search(r"enum Command \{(.*?)\n\}", src, re.S)
    assert body, "no `enum Command` in app/src/bin/memoire-server.rs"
    variants = re.findall(r"^\s+([A-Z]\w*),?\s*$", body.group(1), re.M)
    return {re.sub(r"(?<!^)([A-Z])", r"-\1", v).lower() for v in variants}


def http_routes() -> set[str]:
    """The paths of the HTTP endpoint every process serves (app/src/ops.rs)."""
    src = (ROOT / "app" / "src" / "ops.rs").read_text()
    return set(re.findall(r'\.route\(\s*"(/[^"]*)"', src))


# --- Metrics: what the binaries record, read from the Rust sources ---------------------------

_RUST_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<comment>//[^\n]*|/\*.*?\*/)
  | (?P<str>(?:br|r)(?P<hashes>\#*)".*?"(?P=hashes)|b?"(?:\\.|[^"\\])*")
  | (?P<char>b?'(?:\\.|[^'\\])')
  | (?P<lifetime>'[A-Za-z_]\w*)
  | (?P<ident>[A-Za-z_]\w*)
  | (?P<num>\d\w*(?:\.\d\w*)?)
  | (?P<punct>::|=>|->|[^\s\w])
""", re.X | re.S)

_MACROS = {"counter", "gauge", "histogram"}


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    line: int

    @property
    def value(self) -> str:
        """A string literal's contents (the literals metric names and labels use are plain)."""
        assert self.kind == "str", self
        body = re.sub(r'^b?r?#*"|"#*$', "", self.text)
        return body if self.text.lstrip("b").startswith("r") else re.sub(r"\\(.)", r"\1", body)


def _rust_tokens(path: Path) -> list[_Tok]:
    src, out, line, pos = path.read_text(), [], 1, 0
    for m in _RUST_TOKEN.finditer(src):
        assert m.start() == pos, f"{path}:{line}: cannot read {src[pos:pos + 20]!r}"
        kind = m.lastgroup if m.lastgroup != "hashes" else "str"
        if kind not in ("ws", "comment"):
            out.append(_Tok(kind, m.group(), line))
        line += m.group().count("\n")
        pos = m.end()
    assert pos == len(src), f"{path}: cannot read past line {line}"
    return out


def _close(toks: list[_Tok], i: int) -> int:
    """The index of the bracket closing the one at `i`."""
    depth = 0
    for j in range(i, len(toks)):
        if toks[j].kind == "punct" and toks[j].text in "([{":
            depth += 1
        elif toks[j].kind == "punct" and toks[j].text in ")]}":
            depth -= 1
            if depth == 0:
                return j
    raise ValueError(f"unbalanced bracket at line {toks[i].line}")


def _split_args(toks: list[_Tok]) -> list[list[_Tok]]:
    """`toks` (inside a call's parentheses) split at its top-level commas."""
    args, depth, cur = [], 0, []
    for t in toks:
        if t.kind == "punct" and t.text in "([{":
            depth += 1
        elif t.kind == "punct" and t.text in ")]}":
            depth -= 1
        if depth == 0 and t.text == "," and t.kind == "punct":
            args.append(cur)
            cur = []
        else:
            cur.append(t)
    return args + [cur] if cur else args


@dataclass
class _Fn:
    name: str
    params: list[str]
    body: tuple[int, int]  # token indexes of its `{` and `}`


@dataclass
class _File:
    path: Path
    toks: list[_Tok]
    fns: list[_Fn]
    live: list[bool]  # False for tokens inside #[cfg(test)] items

    def fn_at(self, i: int) -> _Fn | None:
        inner = [f for f in self.fns if f.body[0] < i < f.body[1]]
        return max(inner, key=lambda f: f.body[0]) if inner else None


def _parse_rust(path: Path) -> _File:
    toks = _rust_tokens(path)
    live = [True] * len(toks)
    fns = []
    for i, t in enumerate(toks):
        # `#[cfg(test)]` (then any attributes) makes the next item test-only.
        if [x.text for x in toks[i:i + 7]] == ["#", "[", "cfg", "(", "test", ")", "]"]:
            j = i + 7
            while toks[j].text == "#":
                j = _close(toks, j + 1) + 1
            k = j
            while toks[k].text not in ("{", ";"):
                k += 1
            end = _close(toks, k) if toks[k].text == "{" else k
            live[i:end + 1] = [False] * (end + 1 - i)
        if t.text == "fn" and t.kind == "ident" and toks[i + 1].kind == "ident":
            j = i + 2
            if toks[j].text == "<":
                depth = 0
                while True:
                    depth += {"<": 1, ">": -1}.get(toks[j].text, 0)
                    j += 1
                    if depth == 0:
                        break
            if toks[j].text != "(":
                continue
            close = _close(toks, j)
            params = []
            for arg in _split_args(toks[j + 1:close]):
                names = [x for x in arg if x.kind == "ident" and x.text != "mut"]
                at = arg.index(names[0]) + 1 if names else len(arg)
                if at < len(arg) and arg[at].text == ":":
                    params.append(names[0].text)
            k = close
            while toks[k].text not in ("{", ";"):
                k += 1
            if toks[k].text == "{":
                fns.append(_Fn(toks[i + 1].text, params, (k, _close(toks, k))))
    return _File(path, toks, fns, live)


def _binary_crates() -> list[Path]:
    """The directories of the workspace crates the binaries are built from: the app crate and its
    `memoire-*` dependencies, transitively."""
    workspace = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["dependencies"]
    todo, seen = ["app"], set()
    while todo:
        crate = todo.pop()
        if crate in seen:
            continue
        seen.add(crate)
        deps = tomllib.loads((ROOT / crate / "Cargo.toml").read_text()).get("dependencies", {})
        todo += [workspace[d]["path"] for d in deps if d.startswith("memoire-")]
    return [ROOT / c for c in sorted(seen)]


@dataclass
class MetricSite:
    """One `metrics::counter!` / `gauge!` / `histogram!` call: its metric's name and kind, and
    each label with the values it can take (None: not all literal, so unknown)."""
    name: str
    kind: str
    labels: dict[str, frozenset[str] | None]
    where: str


def _values(f: _File, i: int, expr: list[_Tok], files: list[_File], depth: int = 0
            ) -> frozenset[str] | None:
    """The literal values the expression `expr` (at token `i` of `f`) can take, or None. Follows
    `if c { "a" } else { "b" }`, a `let` of the enclosing function, and that function's
    parameters to its callers' arguments (a few calls deep)."""
    if len(expr) == 1 and expr[0].kind == "str":
        return frozenset([expr[0].value])
    if expr and expr[0].text == "if":
        found, j = set(), 0
        while j < len(expr):
            if expr[j].text == "{":
                end = _close(expr, j)
                if end != j + 2 or expr[j + 1].kind != "str":
                    return None
                found.add(expr[j + 1].value)
                j = end
            j += 1
        return frozenset(found) or None
    if len(expr) != 1 or expr[0].kind != "ident" or depth > 3:
        return None
    name, fn = expr[0].text, f.fn_at(i)
    if fn is None:
        return None
    for j in range(i - 1, fn.body[0], -1):
        if f.toks[j].text == "let" and f.toks[j + 1].text == name and f.toks[j + 2].text == "=":
            end = j + 3
            while f.toks[end].text != ";" or f.toks[end].kind != "punct":
                end = _close(f.toks, end) if f.toks[end].text in "([{" else end
                end += 1
            return _values(f, j + 3, f.toks[j + 3:end], files, depth + 1)
    if name not in fn.params:
        return None
    at, found, calls = fn.params.index(name), set(), 0
    for g in files:
        for j, t in enumerate(g.toks[:-1]):
            if (t.text == fn.name and g.toks[j + 1].text == "(" and g.live[j]
                    and g.toks[j - 1].text not in ("fn", ".")):
                args = _split_args(g.toks[j + 2:_close(g.toks, j + 1)])
                v = _values(g, j, args[at], files, depth + 1) if at < len(args) else None
                if v is None:
                    return None
                found |= v
                calls += 1
    return frozenset(found) if calls else None


def metric_sites() -> list[MetricSite]:
    """Every metric the binaries record, one entry per macro call, from the Rust sources of the
    crates they are built from (test-only code excluded)."""
    files = [_parse_rust(p) for crate in _binary_crates()
             for p in sorted((crate / "src").rglob("*.rs"))]
    sites = []
    for f in files:
        t = f.toks
        for i in range(1, len(t) - 2):
            if not (t[i].text in _MACROS and t[i + 1].text == "!" and t[i + 2].text == "("
                    and f.live[i]):
                continue
            if t[i - 1].text == "::" and t[i - 2].text != "metrics":
                continue
            where = f"{f.path.relative_to(ROOT)}:{t[i].line}"
            args = _split_args(t[i + 3:_close(t, i + 2)])
            assert len(args[0]) == 1 and args[0][0].kind == "str", \
                f"{where}: a metric name that is not a string literal"
            labels = {}
            for arg in args[1:]:
                assert len(arg) >= 3 and arg[0].kind == "str" and arg[1].text == "=>", \
                    f"{where}: labels not written as \"key\" => value"
                labels[arg[0].value] = _values(f, i, arg[2:], files)
            sites.append(MetricSite(args[0][0].value, t[i].text, labels, where))
    return sites


@dataclass
class Series:
    """A series name as Prometheus scrapes it: its type and its labels (each with its possible
    values, or None when they are not known statically)."""
    type: str
    labels: dict[str, frozenset[str] | None]


def _exporter_config() -> dict:
    """How app/src/ops.rs configures the Prometheus exporter: the matchers of the metrics it
    gives buckets (the others are summaries), and naming options."""
    src = (ROOT / "app" / "src" / "ops.rs").read_text()
    for unsupported in ("set_native_histogram_for_metric", "add_global_label",
                        "set_enable_unit_suffix"):
        assert unsupported not in src, f"ops.rs uses {unsupported}: teach repo_facts about it"
    matchers = re.findall(r'set_buckets_for_metric\(\s*Matcher::(Full|Prefix|Suffix)\("([^"]+)"', src)
    return {
        "all_buckets": bool(re.search(r"\.set_buckets\(", src)),
        "matchers": matchers,
        "counter_suffix": bool(re.search(r"with_recommended_naming\(\s*true", src)),
    }


def exported_metrics() -> dict[str, Series]:
    """Every series name `/metrics` can show, with its labels: counters and gauges by name
    (`_total` appended under recommended naming), histograms given buckets as `_bucket` (with
    `le`), `_sum` and `_count`, other histograms as summaries (the name with `quantile`, `_sum`,
    `_count`)."""
    cfg = _exporter_config()
    by_name: dict[str, list[MetricSite]] = {}
    for s in metric_sites():
        by_name.setdefault(s.name, []).append(s)
    out = {}
    for name, sites in by_name.items():
        kinds = {s.kind for s in sites}
        assert len(kinds) == 1, f"{name} is recorded as {kinds}"
        labels: dict[str, frozenset[str] | None] = {}
        for s in sites:
            for k, v in s.labels.items():
                old = labels.get(k, frozenset())
                labels[k] = None if old is None or v is None else old | v
        kind = kinds.pop()
        if kind == "counter":
            suffix = "_total" if cfg["counter_suffix"] and not name.endswith("_total") else ""
            out[name + suffix] = Series("counter", labels)
        elif kind == "gauge":
            out[name] = Series("gauge", labels)
        else:
            bucketed = cfg["all_buckets"] or any(
                {"Full": name == m, "Prefix": name.startswith(m), "Suffix": name.endswith(m)}[how]
                for how, m in cfg["matchers"])
            if bucketed:
                out[name + "_bucket"] = Series("histogram", {**labels, "le": None})
            else:
                out[name] = Series("summary", {**labels, "quantile": None})
            out[name + "_sum"] = Series("counter", labels)
            out[name + "_count"] = Series("counter", labels)
    return out


def grpc_methods() -> set[str]:
    """The gRPC paths of Mémoire's RPCs (`/memoire.v1.MemoryService/Recall`), from proto/: the
    values of the RPC metrics' `method` label (besides health and reflection's)."""
    out = set()
    for proto in sorted((ROOT / "proto").rglob("*.proto")):
        src = re.sub(r"//[^\n]*", "", proto.read_text())
        package = re.search(r"^package\s+([\w.]+);", src, re.M)
        for service, body in re.findall(r"\bservice\s+(\w+)\s*\{(.*?)\n\}", src, re.S):
            out |= {f"/{package.group(1)}.{service}/{rpc}"
                    for rpc in re.findall(r"\brpc\s+(\w+)\s*\(", body)}
    return out


def grpc_codes() -> set[str]:
    """The values of `memoire_rpc_requests_total`'s `code` label (server/src/layers.rs)."""
    src = (ROOT / "server" / "src" / "layers.rs").read_text()
    return set(re.findall(r'=> "([A-Z_]+)"', src))
