//! Postgres read replicas: a streaming replica of the test Postgres — a second cluster on another
//! port, made with `pg_basebackup -R` from the primary (Debian's postgresql-common, as
//! scripts/setup.sh installs it) — named by `database_read_url`. Reads are routed to it once it
//! has replayed the caller's tenant's last write, and to the primary before that (read your
//! writes), while its replay is paused (a replica too far behind is not read), and when it does
//! not answer.
//!
//! Its own test binary: it creates and drops a Postgres cluster, and needs root or the postgres
//! user (as `fault_postgres` does). The primary must accept a local replication connection for
//! the `postgres` user; if its `pg_hba.conf` has no replication line, the test adds Debian's
//! default one (`local replication postgres peer`) and reloads.

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use memoire_tests::{TestServer, current_contents, fact, http_get, proto as pb};

const VERSION: &str = "15";

/// Runs `program args…` (postgresql-common's cluster commands: as root); its stdout. Panics when
/// it fails.
fn run(program: &str, args: &[&str]) -> String {
    output(Command::new(program).args(args), program, args)
}

/// Runs `program args…` as the postgres user; its stdout. Panics when it fails.
fn as_postgres(program: &str, args: &[&str]) -> String {
    output(
        Command::new("runuser")
            .args(["-u", "postgres", "--", program])
            .args(args),
        program,
        args,
    )
}

fn output(cmd: &mut Command, program: &str, args: &[&str]) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// SQL on the primary (5432) or the replica, as the postgres superuser over the local socket.
fn psql(port: u16, sql: &str) -> String {
    as_postgres("psql", &["-p", &port.to_string(), "-Atc", sql])
}

/// A streaming replica of the primary, dropped with this value.
struct Replica {
    name: String,
    port: u16,
}

impl Replica {
    fn start() -> Replica {
        let hba = psql(5432, "SHOW hba_file");
        let rules = std::fs::read_to_string(&hba).expect("pg_hba.conf");
        let replication = rules
            .lines()
            .map(str::trim)
            .any(|l| !l.starts_with('#') && l.split_whitespace().nth(1) == Some("replication"));
        if !replication {
            std::fs::write(&hba, format!("{rules}\nlocal replication postgres peer\n"))
                .expect("pg_hba.conf");
            psql(5432, "SELECT pg_reload_conf()");
        }
        let port = (5433..5600)
            .find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
            .expect("a free port");
        let name = format!("memoire_replica_{}", std::process::id());
        run(
            "pg_createcluster",
            &[VERSION, &name, "-p", &port.to_string()],
        );
        let replica = Replica { name, port };
        let data = format!("/var/lib/postgresql/{VERSION}/{}", replica.name);
        // Emptied, not removed: the directory keeps the owner and mode the cluster needs.
        for entry in std::fs::read_dir(&data).expect("the new cluster's data") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path).expect("empty the new cluster");
            } else {
                std::fs::remove_file(&path).expect("empty the new cluster");
            }
        }
        as_postgres(
            "pg_basebackup",
            &[
                "-p", "5432", "-D", &data, "-R", "-X", "stream", "-c", "fast",
            ],
        );
        run("pg_ctlcluster", &[VERSION, &replica.name, "start"]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while psql_ok(port, "SELECT pg_is_in_recovery()") != Some("t".into()) {
            assert!(Instant::now() < deadline, "the replica did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
        replica
    }

    /// Pauses or resumes replaying the primary's WAL.
    fn replay(&self, on: bool) {
        let f = if on {
            "pg_wal_replay_resume"
        } else {
            "pg_wal_replay_pause"
        };
        psql(self.port, &format!("SELECT {f}()"));
    }
}

fn psql_ok(port: u16, sql: &str) -> Option<String> {
    let out = Command::new("runuser")
        .args([
            "-u",
            "postgres",
            "--",
            "psql",
            "-p",
            &port.to_string(),
            "-Atc",
            sql,
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = Command::new("pg_dropcluster")
            .args(["--stop", VERSION, &self.name])
            .status();
    }
}

/// `memoire_db_reads_total{target}` on the server's /metrics.
async fn reads(server: &TestServer, target: &str) -> f64 {
    let metrics = http_get(server.http_addr, "/metrics").await;
    let line = format!("memoire_db_reads_total{{target=\"{target}\"}}");
    metrics
        .lines()
        .find(|l| l.starts_with(&line))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

async fn list(client: &memoire_sdk::Client) -> Vec<String> {
    let mut contents = current_contents(client, "ada").await;
    contents.sort();
    contents
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_a_replica_that_has_the_callers_writes_and_to_the_primary_otherwise() {
    let replica = Replica::start();
    let port = replica.port;
    let server = TestServer::start_with(
        |c| {
            c.worker_embedded = false;
            c.database_read_url = Some(c.database_url.replace(":5432/", &format!(":{port}/")));
            c.database_read_max_lag_ms = 1_000;
        },
        None,
    )
    .await;
    let (_, client) = server.tenant("t", pb::KeyRole::Writer).await;

    // Read your writes: right after a Teach, its tenant's reads go to the primary.
    client
        .memory()
        .teach(fact("ada", "Keeps bees on the roof"))
        .await
        .expect("teach");
    let primary = reads(&server, "primary").await;
    assert_eq!(list(&client).await, ["Keeps bees on the roof"]);
    assert!(
        reads(&server, "primary").await > primary,
        "served by the primary"
    );

    // Once the replica has replayed the write, reads go there, with the same answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let replica_reads = reads(&server, "replica").await;
        let listed = list(&client).await;
        if reads(&server, "replica").await > replica_reads {
            assert_eq!(listed, ["Keeps bees on the roof"]);
            break;
        }
        assert!(Instant::now() < deadline, "the replica was never read");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = reads(&server, "replica").await;
    let recalled = client
        .memory()
        .recall(pb::RecallRequest {
            user_id: "ada".into(),
            query: "bees".into(),
            k: 5,
            ..Default::default()
        })
        .await
        .expect("recall")
        .into_inner();
    assert!(!recalled.items.is_empty());
    assert!(
        reads(&server, "replica").await > before,
        "Recall on the replica"
    );

    // The replica stops replaying: a new write is not there, yet the writer reads it at once.
    replica.replay(false);
    client
        .memory()
        .teach(fact("ada", "Grows tomatoes in pots"))
        .await
        .expect("teach");
    assert_eq!(
        list(&client).await,
        ["Grows tomatoes in pots", "Keeps bees on the roof"]
    );
    let db = server
        .database_url
        .rsplit('/')
        .next()
        .expect("database name");
    let on_replica = as_postgres(
        "psql",
        &[
            "-p",
            &port.to_string(),
            "-d",
            db,
            "-Atc",
            "SELECT count(*) FROM memories",
        ],
    );
    assert_eq!(on_replica, "1", "the replica is behind");
    // Past the allowed lag, no read goes to the replica.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let replica_reads = reads(&server, "replica").await;
    assert_eq!(list(&client).await.len(), 2);
    assert_eq!(reads(&server, "replica").await, replica_reads);

    // Replaying again, it is read again.
    replica.replay(true);
    let deadline = Instant::now() + Duration::from_secs(10);
    while reads(&server, "replica").await == replica_reads {
        assert_eq!(list(&client).await.len(), 2);
        assert!(Instant::now() < deadline, "the replica was not read again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A replica that does not answer: reads fall back to the primary.
    as_postgres(
        "pg_ctlcluster",
        &[VERSION, &replica.name, "stop", "-m", "fast"],
    );
    assert_eq!(list(&client).await.len(), 2);
    let metrics = http_get(server.http_addr, "/metrics").await;
    assert!(metrics.contains("memoire_replica_lag_seconds"), "{metrics}");
}
