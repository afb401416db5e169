"""`memoire-server export` / `import`: the JSON Lines of docs/export.md to a file and back, straight
from Postgres, with progress and errors on stderr — against a real server's database."""
import json
import subprocess

import memoire

from conftest import binary, running_server


def cli(srv, *args: str) -> subprocess.CompletedProcess:
    env = {**srv.env, "MEMOIRE_LOG_FORMAT": "text"}  # key=value fields, read below
    return subprocess.run([str(binary("memoire-server")), *args], env=env, capture_output=True,
                          text=True, timeout=120)


def test_export_then_import_brings_a_purged_user_back_and_a_bad_file_writes_nothing(tmp_path_factory, tmp_path):
    with running_server(tmp_path_factory) as srv:
        admin = memoire.Memoire(f"http://{srv.target}", srv.admin_key)
        tenant = admin.create_tenant("cli")["tenant"]["id"]
        key = admin.create_api_key(tenant, role="writer")["secret"]
        m = memoire.Memoire(f"http://{srv.target}", key, user="ana")
        taught = {m.teach(c, kind="fact")["memory"]["id"]: c
                  for c in ("Plays the cello", "Lives in Lisbon", "Is allergic to peanuts")}

        dump = tmp_path / "ana.jsonl"
        out = cli(srv, "export", "--tenant", tenant, "--user", "ana", "-o", str(dump))
        assert out.returncode == 0, out.stderr
        assert "export finished" in out.stderr and "records=7" in out.stderr, out.stderr
        records = [json.loads(line) for line in dump.read_text().splitlines()]
        assert [r["type"] for r in records] == ["export"] + ["memory"] * 3 + ["memory_version"] * 3
        assert all(r["format_version"] == 1 and r["tenant_id"] == tenant for r in records)
        assert {r["id"]: r["content"] for r in records if r["type"] == "memory"} == taught

        m.forget(selector={"user_id": "ana"}, mode="purge")
        assert m.list_memories().get("memories", []) == []

        # A bad last line: the whole file is refused, by line, and nothing is written.
        bad = tmp_path / "bad.jsonl"
        bad.write_text(dump.read_text() + '{"type": "memory", "format_version": 1, "tenant_id": "x"\n')
        out = cli(srv, "import", "--tenant", tenant, str(bad))
        assert out.returncode != 0
        assert "line 8" in out.stderr and "is not a JSON record" in out.stderr, out.stderr
        out = cli(srv, "import", "--tenant", tenant, "--dry-run", str(dump))
        assert out.returncode == 0 and "memories=3" in out.stderr, out.stderr
        assert m.list_memories().get("memories", []) == []

        out = cli(srv, "import", "--tenant", tenant, str(dump))
        assert out.returncode == 0, out.stderr
        back = {x["id"]: x["content"] for x in m.list_memories()["memories"]}
        assert back == taught
        assert len(m.history(next(iter(taught)))["versions"]) == 1
        # Twice: every record is skipped.
        out = cli(srv, "import", "--tenant", tenant, str(dump))
        assert out.returncode == 0 and "memories=0" in out.stderr and "skipped=6" in out.stderr, out.stderr
