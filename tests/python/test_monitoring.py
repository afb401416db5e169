"""deploy/monitoring: the Prometheus rules and the Grafana dashboard, checked without Prometheus
or Grafana. Their structure, and every PromQL expression against what the binaries really
export (read from the Rust sources by repo_facts.exported_metrics()): each metric name, each
label in a matcher, a grouping, a vector match, a legend or an annotation, the literal label
values that can be known statically (RPC paths from proto/, gRPC codes, queues, outcomes...),
and rate() over counters, delta() over gauges."""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field

import pytest
import yaml
from repo_facts import ROOT, Series, exported_metrics, grpc_codes, grpc_methods

MONITORING = ROOT / "deploy" / "monitoring"
ALERTS = MONITORING / "alerts.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"

# Labels Prometheus attaches to every scraped series. A scraped label of the same name would be
# kept as `exported_<name>` (the default `honor_labels: false`): no metric may use one.
TARGET_LABELS = ("job", "instance")
# Series Prometheus itself writes for every target.
PROMETHEUS_SERIES = {"up": {"job": None, "instance": None}}
SEVERITIES = {"critical", "warning", "info"}
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range", "__interval_ms", "__range_s"}

Labels = dict[str, "frozenset[str] | None"]


def scraped(series: Series) -> Labels:
    """A series' labels as Prometheus stores them: its own plus the target's."""
    return {**series.labels, **{k: None for k in TARGET_LABELS}}


def known_series() -> dict[str, tuple[str, Labels]]:
    """Series name -> (type, labels with their known values) for everything a rule may select."""
    return dict(_known_series())


@functools.cache
def _known_series() -> dict[str, tuple[str, Labels]]:
    out = {name: ("gauge", dict(labels)) for name, labels in PROMETHEUS_SERIES.items()}
    for name, s in exported_metrics().items():
        labels = scraped(s)
        if name.startswith("memoire_rpc_"):
            # The RPC layer's labels come from the request path and the response status; proto/
            # and layers.rs list the values (health and reflection paths aside).
            labels["method"] = frozenset(grpc_methods())
            if "code" in labels:
                labels["code"] = frozenset(grpc_codes())
        out[name] = (s.type, labels)
    return out


# --- PromQL: a tokenizer, a parser, and the labels each expression's result has ----------------

TOKEN = re.compile(r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<str>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<duration>(?:\d+(?:ms|[smhdwy]))+(?![\w.]))
  | (?P<num>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[Ii]nf|NaN)
  | (?P<var>\$\{[^}]+\}|\$\w+|\[\[\w+\]\])
  | (?P<ident>[A-Za-z_][A-Za-z0-9_:]*|:[A-Za-z_][A-Za-z0-9_:]*)
  | (?P<op>==|!=|>=|<=|=~|!~|[-+*/%^<>=(){}\[\],@:])
""", re.X)

AGGREGATIONS = {"sum", "min", "max", "avg", "group", "count", "stddev", "stdvar", "topk",
                "bottomk", "quantile", "count_values", "limitk", "limit_ratio"}
# Aggregations whose first argument is a parameter; those that keep every label of the input.
PARAMETRIC = {"topk", "bottomk", "quantile", "count_values", "limitk", "limit_ratio"}
KEEP_LABELS = {"topk", "bottomk", "limitk", "limit_ratio"}
# Functions of a range vector, returning the series' labels; those meant for counters / gauges.
RANGE_FUNCTIONS = {"rate", "irate", "increase", "delta", "idelta", "deriv", "changes", "resets",
                   "predict_linear", "holt_winters", "double_exponential_smoothing",
                   "avg_over_time", "min_over_time", "max_over_time", "sum_over_time",
                   "count_over_time", "quantile_over_time", "stddev_over_time",
                   "stdvar_over_time", "last_over_time", "present_over_time", "mad_over_time"}
COUNTER_FUNCTIONS = {"rate", "irate", "increase", "resets"}
GAUGE_FUNCTIONS = {"delta", "idelta", "deriv", "predict_linear", "holt_winters",
                   "double_exponential_smoothing"}
# Functions of an instant vector returning its labels.
VECTOR_FUNCTIONS = {"abs", "ceil", "floor", "exp", "ln", "log2", "log10", "sqrt", "round",
                    "clamp", "clamp_min", "clamp_max", "sort", "sort_desc", "timestamp", "sgn",
                    "day_of_month", "day_of_week", "day_of_year", "days_in_month", "hour",
                    "minute", "month", "year", "acos", "asin", "atan", "cos", "sin", "tan",
                    "deg", "rad", "sort_by_label", "sort_by_label_desc"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
            "and", "or", "unless", "atan2"}
# Binary operators: precedence (higher binds tighter); ^ is right-associative.
BINARY = {"or": 1, "and": 2, "unless": 2, "==": 3, "!=": 3, "<": 3, ">": 3, "<=": 3, ">=": 3,
          "+": 4, "-": 4, "*": 5, "/": 5, "%": 5, "atan2": 5, "^": 6}
DURATION = r"(?:\d+(?:ms|[smhdwy]))+|\$\w+|\$\{\w+\}"
RANGE = re.compile(rf"\s*(?:{DURATION})\s*(?::\s*(?:{DURATION})?\s*)?")


@dataclass
class Tok:
    kind: str
    text: str
    pos: int


@dataclass
class Value:
    """What an expression evaluates to: its type, and for vectors the labels of its result
    (None when they cannot be known), and the series it selects when it is a bare selector."""
    type: str  # "vector", "matrix", "scalar" or "string"
    labels: Labels | None = None
    series: str | None = None


@dataclass
class Problem:
    kind: str  # "metric", "label", "value" or "type"
    message: str


def tokenize(text: str) -> list[Tok]:
    out, pos = [], 0
    while pos < len(text):
        m = TOKEN.match(text, pos)
        if not m:
            raise SyntaxError(f"unexpected {text[pos:pos + 10]!r} at {pos}")
        if m.lastgroup != "ws":
            out.append(Tok(m.lastgroup, m.group(), pos))
        pos = m.end()
    return out


def unquote(s: str) -> str:
    return s[1:-1] if s[0] == "`" else re.sub(r"\\(.)", r"\1", s[1:-1])


@dataclass
class Checker:
    """Parses PromQL (the subset rules and dashboards use, which is most of it) and records
    the problems it finds against `series` (name -> (type, labels))."""
    series: dict[str, tuple[str, Labels]]
    problems: list[Problem] = field(default_factory=list)
    metrics: set[str] = field(default_factory=set)

    def check(self, text: str) -> Value:
        self.text, self.toks, self.i = text, tokenize(text), 0
        value = self.expr(0)
        if self.i < len(self.toks):
            self.fail("unexpected")
        return value

    # tokens
    def peek(self, ahead: int = 0) -> Tok | None:
        j = self.i + ahead
        return self.toks[j] if j < len(self.toks) else None

    def at(self, *texts: str) -> bool:
        t = self.peek()
        return t is not None and t.kind in ("op", "ident") and t.text in texts

    def take(self, *texts: str) -> Tok:
        t = self.peek()
        if t is None or (texts and t.text not in texts):
            self.fail(f"expected {' or '.join(texts) or 'more'}")
        self.i += 1
        return t

    def fail(self, what: str):
        t = self.peek()
        where = f"{t.text!r} at {t.pos}" if t else "the end"
        raise SyntaxError(f"{what}: {where} in {self.text!r}")

    def problem(self, kind: str, message: str):
        self.problems.append(Problem(kind, message))

    # grammar
    def expr(self, min_prec: int) -> Value:
        left = self.unary()
        while (t := self.peek()) is not None and t.kind in ("op", "ident") and t.text in BINARY:
            prec = BINARY[t.text]
            if prec < min_prec:
                break
            op = self.take().text
            if self.at("bool"):  # 0/1 instead of filtering: the same labels
                self.take()
            on = ignoring = group = None
            if self.at("on", "ignoring"):
                kind = self.take().text
                labels = self.label_list()
                on, ignoring = (labels, None) if kind == "on" else (None, labels)
            if self.at("group_left", "group_right"):
                side = self.take().text
                extra = self.label_list() if self.at("(") else []
                group = (side, extra)
            right = self.expr(prec if op == "^" else prec + 1)
            left = self.binary(op, left, right, on, ignoring, group)
        return left

    def unary(self) -> Value:
        if self.at("-", "+"):
            self.take()
            return self.unary()
        return self.postfix(self.primary())

    def postfix(self, v: Value) -> Value:
        while True:
            if self.at("["):
                start = self.take().pos + 1
                while not self.at("]"):
                    self.take()
                body = self.text[start:self.peek().pos]
                self.take("]")
                if not RANGE.fullmatch(body):
                    self.fail(f"bad range [{body}]")
                if ":" in body:  # a subquery: a range of any vector expression
                    v = Value("matrix", v.labels)
                elif v.type != "vector" or v.series is None:
                    self.fail("a range of something other than a selector")
                else:
                    v = Value("matrix", v.labels, v.series)
            elif self.at("offset"):
                self.take()
                if self.at("-"):
                    self.take()
                if self.peek() is None or self.peek().kind not in ("duration", "var"):
                    self.fail("offset without a duration")
                self.take()
            elif self.at("@"):
                self.take()
                self.take()
                if self.at("("):
                    self.take("(")
                    self.take(")")
            else:
                return v

    def primary(self) -> Value:
        t = self.peek()
        if t is None:
            self.fail("expected an expression")
        if t.kind == "num":
            self.take()
            return Value("scalar")
        if t.kind == "str":
            self.take()
            return Value("string")
        if t.text == "(":
            self.take()
            v = self.expr(0)
            self.take(")")
            return v
        if t.text == "{":
            return self.selector(None)
        if t.kind != "ident":
            self.fail("expected an expression")
        name = t.text
        if name in AGGREGATIONS and self.peek(1) and self.peek(1).text in ("(", "by", "without"):
            return self.aggregation()
        if self.peek(1) and self.peek(1).text == "(":
            return self.function()
        if name in KEYWORDS:
            self.fail("a keyword where an expression belongs")
        return self.selector(self.take().text)

    def label_list(self) -> list[str]:
        self.take("(")
        labels = []
        while not self.at(")"):
            t = self.take()
            if t.kind != "ident":
                self.fail("expected a label name")
            labels.append(t.text)
            if not self.at(")"):
                self.take(",")
        self.take(")")
        return labels

    def selector(self, name: str | None) -> Value:
        matchers = []
        if self.at("{"):
            self.take("{")
            while not self.at("}"):
                label = self.take()
                if label.kind != "ident":
                    self.fail("expected a label name")
                op = self.take("=", "!=", "=~", "!~").text
                value = self.take()
                if value.kind != "str":
                    self.fail("expected a quoted label value")
                matchers.append((label.text, op, unquote(value.text)))
                if not self.at("}"):
                    self.take(",")
            self.take("}")
        names = [name] if name else []
        for label, op, value in matchers:
            if label == "__name__":
                if op == "=":
                    names.append(value)
                elif op == "=~" and re.fullmatch(r"[\w:]+(\|[\w:]+)*", value):
                    names += value.split("|")
                else:
                    self.fail("a __name__ matcher this test cannot resolve")
        if not names:
            self.fail("a selector without a metric name")
        labelsets = []
        for n in names:
            self.metrics.add(n)
            if n not in self.series:
                self.problem("metric", f"{n} is not a series the binaries export")
                continue
            labelsets.append(self.series[n][1])
            for label, op, value in matchers:
                if label != "__name__":
                    self.matcher(n, self.series[n][1], label, op, value)
        if len(labelsets) != len(names):
            return Value("vector")
        common = {k: v for k, v in labelsets[0].items() if all(k in s for s in labelsets)}
        return Value("vector", common, names[0] if len(names) == 1 else None)

    def matcher(self, name: str, labels: Labels, label: str, op: str, value: str):
        if label not in labels:
            self.problem("label", f"{name} has no label {label} (it has {sorted(labels)})")
            return
        if op in ("=~", "!~"):
            try:
                pattern = re.compile(value)
            except re.error as e:
                self.problem("value", f"{name}{{{label}{op}{value!r}}}: bad regex: {e}")
                return
        known = labels[label]
        if known is None or "$" in value:
            return
        if op == "=" and value not in known:
            self.problem("value", f"{name}{{{label}={value!r}}}: it takes {sorted(known)}")
        if op == "=~" and not any(pattern.fullmatch(v) for v in known):
            self.problem("value", f"{name}{{{label}=~{value!r}}} matches none of {sorted(known)}")

    def aggregation(self) -> Value:
        op = self.take().text
        grouping = None
        if self.at("by", "without"):
            grouping = (self.take().text, self.label_list())
        self.take("(")
        param = self.peek()
        if op in PARAMETRIC:
            self.expr(0)
            self.take(",")
        inner = self.expr(0)
        self.take(")")
        if grouping is None and self.at("by", "without"):
            grouping = (self.take().text, self.label_list())
        if inner.type != "vector":
            self.problem("type", f"{op}() of a {inner.type}")
            return Value("vector")
        labels = inner.labels
        if labels is not None and grouping:
            for label in grouping[1]:
                if label not in labels and grouping[0] == "by":
                    self.problem("label", f"{op} by ({label}): no such label in "
                                          f"{sorted(labels)}")
        if op in KEEP_LABELS:
            return Value("vector", labels)
        if labels is None:
            out = None
        elif grouping is None:
            out = {}
        elif grouping[0] == "by":
            out = {k: labels.get(k) for k in grouping[1]}
        else:
            out = {k: v for k, v in labels.items() if k not in grouping[1]}
        if op == "count_values" and out is not None:
            out[unquote(param.text) if param.kind == "str" else "?"] = None
        return Value("vector", out)

    def function(self) -> Value:
        name = self.take().text
        self.take("(")
        args, arg_tokens = [], []
        while not self.at(")"):
            start = self.i
            args.append(self.expr(0))
            arg_tokens.append(self.toks[start:self.i])
            if not self.at(")"):
                self.take(",")
        self.take(")")
        kinds = [a.type for a in args]
        if name in RANGE_FUNCTIONS:
            matrix = [a for a in args if a.type == "matrix"]
            if len(matrix) != 1:
                self.problem("type", f"{name}() takes one range vector, got {kinds}")
                return Value("vector")
            m = matrix[0]
            if m.series is not None and m.series in self.series:
                kind = self.series[m.series][0]
                if name in COUNTER_FUNCTIONS and kind not in ("counter", "histogram"):
                    self.problem("type", f"{name}({m.series}) of a {kind}: a counter's function")
                if name in GAUGE_FUNCTIONS and kind != "gauge":
                    self.problem("type", f"{name}({m.series}) of a {kind}: a gauge's function")
            return Value("vector", m.labels)
        if name in VECTOR_FUNCTIONS:
            if not args or args[0].type != "vector":
                self.problem("type", f"{name}() takes an instant vector, got {kinds}")
                return Value("vector")
            return Value("vector", args[0].labels)
        if name == "histogram_quantile":
            if kinds != ["scalar", "vector"]:
                self.problem("type", f"histogram_quantile takes (scalar, vector), got {kinds}")
                return Value("vector")
            labels = args[1].labels
            if labels is None:
                return Value("vector")
            if "le" not in labels:
                self.problem("label", f"histogram_quantile over series without le: {sorted(labels)}")
            return Value("vector", {k: v for k, v in labels.items() if k != "le"})
        if name in ("label_replace", "label_join"):
            labels = args[0].labels if args and args[0].type == "vector" else None
            dst = arg_tokens[1] if len(arg_tokens) > 1 else []
            dst = unquote(dst[0].text) if len(dst) == 1 and dst[0].kind == "str" else None
            return Value("vector", None if labels is None or dst is None else {**labels, dst: None})
        if name in ("absent", "absent_over_time"):
            return Value("vector")  # the labels of its equality matchers
        if name == "vector":
            return Value("vector", {})
        if name in ("scalar", "time", "pi"):
            return Value("scalar")
        self.problem("type", f"unknown function {name}()")
        return Value("vector")

    def binary(self, op, left: Value, right: Value, on, ignoring, group) -> Value:
        if "string" in (left.type, right.type) or "matrix" in (left.type, right.type):
            self.problem("type", f"{left.type} {op} {right.type}")
            return Value("vector")
        if left.type == "scalar" and right.type == "scalar":
            return Value("scalar")
        if op in ("and", "or", "unless") and "scalar" in (left.type, right.type):
            self.problem("type", f"{op} needs vectors on both sides")
            return Value("vector")
        if right.type == "scalar":
            return Value("vector", left.labels)
        if left.type == "scalar":
            return Value("vector", right.labels)
        l, r = left.labels, right.labels
        if l is None or r is None:
            return Value("vector", l if op in ("and", "unless") else None)
        for label in on or []:
            for side, labels in (("left", l), ("right", r)):
                if label not in labels:
                    self.problem("label", f"{op} on ({label}): not on the {side} side "
                                          f"{sorted(labels)}")
        if op == "or":
            return Value("vector", {k: l.get(k) or r.get(k) for k in {*l, *r}})
        if on is None and group is None:
            # Without on(), series match on every label (but ignoring's): different label sets
            # never match, and the result is always empty.
            drop = set(ignoring or [])
            if set(l) - drop != set(r) - drop:
                self.problem("label", f"{op}: the sides' labels differ, so nothing matches: "
                                      f"{sorted(l)} vs {sorted(r)}")
        if op in ("and", "unless"):
            return Value("vector", l)
        if group:
            side, extra = group
            one, many = (r, l) if side == "group_left" else (l, r)
            for label in extra:
                if label not in one:
                    self.problem("label", f"{side}({label}): not on the other side {sorted(one)}")
            return Value("vector", {**many, **{k: one.get(k) for k in extra}})
        if on is not None:
            return Value("vector", {k: l.get(k) for k in on})
        return Value("vector", {k: v for k, v in l.items() if k not in (ignoring or [])})


# --- the files ----------------------------------------------------------------------------------

def groups() -> list[dict]:
    return yaml.safe_load(ALERTS.read_text())["groups"]


def rules() -> list[dict]:
    return [r for g in groups() for r in g["rules"]]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(d: dict) -> list[dict]:
    """Every panel, those inside collapsed rows too."""
    out = []
    for p in d["panels"]:
        out.append(p)
        out += p.get("panels", [])
    return out


def checked_rules() -> tuple[Checker, dict[str, Value]]:
    """The rules file's expressions checked in order, recording rules becoming series for the
    rules after them. Returns the checker and each rule's value, by alert or record name."""
    checker = Checker(known_series())
    values = {}
    for rule in rules():
        name = rule.get("record") or rule.get("alert")
        try:
            v = checker.check(rule["expr"])
        except SyntaxError as e:
            checker.problem("syntax", f"{name}: {e}")
            continue
        values[name] = v
        if "record" in rule:
            if v.type != "vector":
                checker.problem("type", f"{name} records a {v.type}")
            checker.series[name] = ("recorded", v.labels if v.labels is not None else {})
    return checker, values


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(where, expr, legend) for every panel target, and (where, selector, label) for every
    `label_values(selector, label)` variable."""
    d = dashboard()
    out = []
    for p in all_panels(d):
        for t in p.get("targets", []):
            out.append((f"panel {p['id']} {p.get('title')!r} {t.get('refId')}", t["expr"],
                        t.get("legendFormat", "")))
    for var in d["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\)\s*", q, re.S)
            assert m, f"variable {var['name']}: not a label_values() query: {q}"
            out.append((f"variable {var['name']}", m.group(1), "{{" + m.group(2) + "}}"))
    return out


def checked_dashboard() -> Checker:
    records = {r["record"] for r in rules() if "record" in r}
    checker = Checker({**known_series(), **{n: ("recorded", v.labels or {})
                                             for n, v in checked_rules()[1].items() if n in records}})
    for where, expr, legend in dashboard_queries():
        before = len(checker.problems)
        try:
            v = checker.check(expr)
        except SyntaxError as e:
            checker.problem("syntax", f"{where}: {e}")
            continue
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
            if v.labels is not None and label not in v.labels:
                checker.problem("label", f"legend {{{{{label}}}}}: no such label in {sorted(v.labels)}")
        for p in checker.problems[before:]:
            p.message = f"{where}: {p.message}"
    return checker


def problems(checker: Checker, *kinds: str) -> list[str]:
    return [p.message for p in checker.problems if p.kind in kinds]


# --- tests ----------------------------------------------------------------------------------

def test_the_promql_checker_finds_metrics_and_nothing_else():
    series = {"a_total": ("counter", {"job": None, "code": frozenset({"OK", "ERR"})}),
              "h_bucket": ("histogram", {"job": None, "le": None, "m": None}),
              "g": ("gauge", {"job": None})}
    c = Checker(series)
    v = c.check('histogram_quantile(0.95, sum by (le, m) (rate(h_bucket{m=~"x|rate"}[5m])))'
                ' > on (m) group_left sum by (m) (rate(h_bucket[$__rate_interval] offset 1h))'
                ' and on () vector(1)')
    assert c.metrics == {"h_bucket"} and not c.problems and v.labels == {"m": None}
    c = Checker(series)
    c.check('sum by (job) (rate(a_total{code="ERR"}[5m])) / sum by (job) (rate(a_total[5m])) > bool 0.01')
    c.check('max by (job) (g) > 300 and max by (job) (delta(g[15m:1m])) > 0 or absent(g)')
    assert c.metrics == {"a_total", "g"} and not c.problems, c.problems
    c = Checker(series)
    c.check('sum by (cod) (rate(a_total{code="FAIL"}[5m])) + rate(g[5m]) / sum(rat_total)')
    c.check('sum by (job) (rate(a_total[5m])) / sum by (code) (rate(a_total[5m]))')
    assert {(p.kind, p.message.split(":")[0]) for p in c.problems} == {
        ("label", "sum by (cod)"), ("value", "a_total{code='FAIL'}"),
        ("type", "rate(g) of a gauge"), ("metric", "rat_total is not a series the binaries export"),
        ("label", "/")}
    c = Checker(series)
    c.check("rat(a_total[5m])")
    assert problems(c, "type") == ["unknown function rat()"]
    for bad in ("sum(rate(a_total[5m])", "rate(a_total[5x])", "sum by (job)", "a_total{code=OK}",
                "rate(sum(a_total)[5m])", "a_total and by"):
        with pytest.raises(SyntaxError):
            Checker(series).check(bad)


def test_the_exported_metrics_are_read_from_the_sources():
    m = exported_metrics()
    # A few the rules rely on, with the types and labels the code gives them.
    assert m["memoire_rpc_duration_seconds_bucket"].type == "histogram"
    assert set(m["memoire_rpc_duration_seconds_bucket"].labels) == {"method", "le"}
    assert set(m["memoire_rpc_requests_total"].labels) == {"method", "code"}
    assert set(m["memoire_recall_stage_seconds_bucket"].labels) == {"stage", "table", "le"}
    assert set(m["memoire_rate_limited_total"].labels) == {"tenant", "limit"}
    assert m["memoire_queue_oldest_age_seconds"].type == "gauge"
    assert m["memoire_queue_oldest_age_seconds"].labels["queue"] == {"extract", "embed"}
    assert {"dead_letter", "ok", "replay", "retry"} <= m["memoire_jobs_total"].labels["outcome"]
    # Histograms have buckets (app/src/ops.rs), so the base name is no series.
    assert "memoire_rpc_duration_seconds" not in m
    assert "/memoire.v1.MemoryService/Recall" in grpc_methods()


def test_the_rules_file_is_well_formed():
    gs = groups()
    assert len({g["name"] for g in gs}) == len(gs), "group names repeat"
    records, alerts = [r for r in rules() if "record" in r], [r for r in rules() if "alert" in r]
    assert records and alerts
    assert len(records) + len(alerts) == len(rules()), "a rule is neither an alert nor a record"
    names = [r["alert"] for r in alerts] + [r["record"] for r in records]
    assert len(set(names)) == len(names), f"names repeat: {sorted(names)}"
    for r in records:
        assert set(r) == {"record", "expr"}, r
        assert re.fullmatch(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", r["record"]), r["record"]
    for r in alerts:
        name = r["alert"]
        assert set(r) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, name
        assert re.fullmatch(r"Memoire[A-Z]\w+", name), name
        assert isinstance(r.get("expr"), str) and r["expr"].strip(), f"{name}: no expr"
        assert re.fullmatch(r"\d+[smh]", str(r.get("for", ""))), f"{name}: no `for` duration"
        assert r.get("labels", {}).get("severity") in SEVERITIES, f"{name}: severity"
        annotations = r.get("annotations", {})
        for key in ("summary", "description"):
            assert str(annotations.get(key, "")).strip(), f"{name}: no {key}"


def test_every_metric_the_rules_use_is_exported():
    checker, _ = checked_rules()
    assert not problems(checker, "syntax", "metric"), "\n".join(problems(checker, "syntax", "metric"))
    # Everything selected is a real series, Prometheus' `up`, or a recording rule of the file.
    records = {r["record"] for r in rules() if "record" in r}
    assert checker.metrics <= set(exported_metrics()) | set(PROMETHEUS_SERIES) | records
    assert records <= checker.metrics, "a recording rule nothing uses"


def test_the_rules_use_labels_and_values_the_metrics_have():
    checker, values = checked_rules()
    found = problems(checker, "label", "value", "type")
    # Annotations may only name labels the alert's series have.
    for r in rules():
        v = values.get(r.get("alert"))
        if v is None or v.labels is None:
            continue
        for text in r.get("annotations", {}).values():
            for label in re.findall(r"\$labels\.(\w+)", text):
                if label not in v.labels:
                    found.append(f"{r['alert']}: annotation names $labels.{label}, "
                                 f"not among {sorted(v.labels)}")
    assert not found, "\n".join(found)


def test_the_dashboard_is_well_formed():
    d = dashboard()
    assert d["schemaVersion"] >= 36 and d["title"] and d["uid"]
    ids = [p["id"] for p in all_panels(d)]
    assert len(ids) == len(set(ids)), f"panel ids repeat: {sorted(ids)}"
    variables = {v["name"]: v for v in d["templating"]["list"]}
    ds = variables.get("datasource")
    assert ds and ds["type"] == "datasource" and ds["query"] == "prometheus"
    source = {"type": "prometheus", "uid": "${datasource}"}
    cells = {}
    for p in all_panels(d):
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == source and p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"] == source and t["expr"].strip(), p["title"]
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"] == source, v["name"]
            if isinstance(v["query"], dict):
                assert v["definition"] == v["query"]["query"], v["name"]
    # Every variable an expression uses is defined (or one of Grafana's own).
    for where, expr, _ in dashboard_queries():
        for var in re.findall(r"\$\{?(\w+)", expr):
            assert var in variables or var in GRAFANA_BUILTINS, f"{where}: ${var} is not defined"


def test_every_metric_the_dashboard_uses_is_exported():
    checker = checked_dashboard()
    assert not problems(checker, "syntax", "metric"), "\n".join(problems(checker, "syntax", "metric"))
    assert checker.metrics <= set(exported_metrics()) | set(PROMETHEUS_SERIES)


def test_the_dashboard_uses_labels_and_values_the_metrics_have():
    checker = checked_dashboard()
    found = problems(checker, "label", "value", "type")
    assert not found, "\n".join(found)


def test_no_metric_uses_a_label_prometheus_attaches_to_every_target():
    clashing = {name: sorted(set(s.labels) & set(TARGET_LABELS))
                for name, s in exported_metrics().items() if set(s.labels) & set(TARGET_LABELS)}
    assert not clashing, f"labels Prometheus would rename to exported_<label>: {clashing}"
