"""Runs the grpcurl walkthrough of docs/walkthrough.md, command by command, with a reflection-only client.

docs/walkthrough.md is the script: each `grpcurl` command of its "grpcurl walkthrough" section is parsed
(flags, `-d` body or here-document, target, method, `| jq -r PATH` capture) and executed with the
same JSON. A `# => {...}` line after a command must be a subset of its reply; `# expect: Code`
means the command must fail with that status. So docs/walkthrough.md cannot drift from what the server does.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

WALKTHROUGH = Path(__file__).resolve().parents[2] / "docs" / "walkthrough.md"


@dataclass
class Command:
    line: int
    words: list[str]
    body: str | None = None
    capture: str | None = None  # variable name
    jq: str | None = None
    expect_reply: dict | None = None
    expect_code: str | None = None
    extra: list[str] = field(default_factory=list)


def walkthrough_lines() -> list[tuple[int, str]]:
    lines = WALKTHROUGH.read_text().splitlines()
    start = next(i for i, l in enumerate(lines) if l.strip() == "# grpcurl walkthrough")
    out, in_block = [], False
    for i in range(start + 1, len(lines)):
        l = lines[i]
        if l.startswith("## "):
            break
        if l.strip().startswith("```"):
            in_block = not in_block if l.strip() in ("```", "```sh") else in_block
            continue
        if in_block:
            out.append((i + 1, l))
    return out


def parse() -> tuple[dict[str, str], list[Command]]:
    assignments: dict[str, str] = {}
    commands: list[Command] = []
    lines = walkthrough_lines()
    i = 0
    while i < len(lines):
        n, l = lines[i]
        s = l.strip()
        i += 1
        if not s:
            continue
        if s.startswith("# =>"):
            commands[-1].expect_reply = json.loads(s[len("# =>"):])
            continue
        if s.startswith("# expect:"):
            commands[-1].expect_code = s[len("# expect:"):].strip()
            continue
        if s.startswith("#"):
            continue
        m = re.match(r"^([A-Z_]+)=\$\((grpcurl .*)$", s)
        capture = None
        if m:
            capture, s = m.group(1), m.group(2)
        elif re.match(r"^[A-Z_]+=[^$(]+$", s):
            k, v = s.split("=", 1)
            assignments[k] = v
            continue
        assert s.startswith("grpcurl "), f"docs/walkthrough.md line {n}: not a grpcurl command: {l}"
        jq = None
        if "| jq -r " in s:
            s, jq = s.split("| jq -r ", 1)
            jq = jq.strip().strip("'")
            if jq.endswith(")"):
                jq = jq[:-1].strip().strip("'")
        heredoc = "<<EOF" in s
        s = s.replace("<<EOF", "")
        cmd = Command(line=n, words=shlex.split(s, posix=True), capture=capture, jq=jq)
        if heredoc:
            body = []
            while lines[i][1].strip() != "EOF":
                body.append(lines[i][1])
                i += 1
            i += 1  # EOF
            if i < len(lines) and lines[i][1].strip() == ")":
                i += 1
            cmd.body = "\n".join(body)
        commands.append(cmd)
    return assignments, commands


def expand(text: str, env: dict[str, str]) -> str:
    def sub(m: re.Match) -> str:
        name = m.group(1)
        assert name in env, f"${name} is used before the walkthrough sets it"
        return env[name]

    return re.sub(r"\$([A-Z_]+)", sub, text)


def jq_path(doc: dict, path: str):
    """The `jq -r` subset docs/walkthrough.md uses: `.a.b`, `.a[0].b`."""
    cur = doc
    for part in path.lstrip(".").split("."):
        m = re.match(r"^(\w+)(?:\[(\d+)\])?$", part)
        assert m, f"unsupported jq path {path}"
        cur = cur[m.group(1)]
        if m.group(2) is not None:
            cur = cur[int(m.group(2))]
    return cur


def is_subset(expected, actual) -> bool:
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(k in actual and is_subset(v, actual[k]) for k, v in expected.items())
    if isinstance(expected, list):
        return isinstance(actual, list) and len(expected) == len(actual) and all(is_subset(e, a) for e, a in zip(expected, actual))
    return expected == actual


def code_name(code: grpc.StatusCode) -> str:
    return "".join(w.capitalize() for w in code.name.split("_"))


def test_the_readme_walkthrough_runs_as_written(server):
    assignments, commands = parse()
    assert len(commands) >= 20, "the walkthrough was not found or not parsed"
    assert assignments.get("ADMIN"), "the walkthrough sets ADMIN"
    # The walkthrough's ADMIN is `make run`'s default; this server has its own key.
    env = {"ADMIN": server.admin_key}
    client = server.client()
    methods_run = set()
    try:
        for cmd in commands:
            words = [expand(w, env) for w in cmd.words]
            assert words[0] == "grpcurl" and "-plaintext" in words, f"line {cmd.line}"
            headers, body, rest = [], None, []
            it = iter(words[1:])
            for w in it:
                if w == "-plaintext":
                    continue
                if w == "-H":
                    k, v = next(it).split(":", 1)
                    headers.append((k.strip().lower(), v.strip()))
                elif w == "-d":
                    body = next(it)
                else:
                    rest.append(w)
            assert rest[0] == "127.0.0.1:50051", f"line {cmd.line}: the walkthrough talks to the default address"
            verb = rest[1:]
            if body == "@":
                body = expand(cmd.body or "", env)
            if verb == ["list"]:
                services = client.list_services()
                for s in ["memoire.v1.MemoryService", "memoire.v1.AdminService", "grpc.health.v1.Health"]:
                    assert s in services, services
                continue
            if verb[0] == "describe":
                client.load(verb[1])
                assert client.pool.FindMessageTypeByName(verb[1]) is not None
                continue
            (method,) = verb
            methods_run.add(method)
            try:
                reply = client.call(method, body, metadata=headers)
            except grpc.RpcError as e:
                assert cmd.expect_code, f"docs/walkthrough.md line {cmd.line}: {method} failed: {e.code()} {e.details()}"
                assert code_name(e.code()) == cmd.expect_code, f"docs/walkthrough.md line {cmd.line}: {e.code()} {e.details()}"
                continue
            assert not cmd.expect_code, f"docs/walkthrough.md line {cmd.line}: {method} should fail with {cmd.expect_code}, got {reply}"
            if cmd.expect_reply is not None:
                assert is_subset(cmd.expect_reply, reply), f"docs/walkthrough.md line {cmd.line}: {reply} does not contain {cmd.expect_reply}"
            if cmd.capture:
                env[cmd.capture] = str(jq_path(reply, cmd.jq))
    finally:
        client.close()
    # Every RPC implemented so far appears in the walkthrough.
    implemented = {
        "memoire.v1.MemoryService/" + m for m in ["Teach", "Forget", "GetMemory", "ListMemories", "History", "Recall"]
    } | {
        "memoire.v1.AdminService/" + m
        for m in ["CreateTenant", "ListTenants", "CreateApiKey", "ListApiKeys", "RevokeApiKey", "GetStats"]
    }
    assert implemented <= methods_run, f"not in docs/walkthrough.md: {sorted(implemented - methods_run)}"
