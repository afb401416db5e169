//! Export and import throughput (release build: `make bench-transfer`): one user with 100,000
//! memories (each with its `create` version and a 384-dimension vector; loaded with SQL, since
//! loading is not what is measured), then
//!
//! - `ExportMemories` over gRPC, and `memoire-server export` to a file;
//! - `ImportMemories` over gRPC (500 lines a message) and `memoire-server import`, each into the
//!   emptied user (purged before), each checked to give back every record;
//!
//! with records/s, and the peak resident memory of the exporting and importing processes (the
//! CLI's, sampled from /proc every 20 ms; the gRPC client's own growth, in this process, which
//! also runs the server) — an export that streams keeps it flat whatever the tenant's size.
//! `--records N` for another size, `--quick` for 5,000.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use memoire_tests::{TestServer, proto as pb, purge_user};

const USER: &str = "bulk";

/// Resident memory of `pid` now, in MiB (`/proc/<pid>/status` VmRSS).
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Runs the release `memoire-server` with `args` on the bench's database; (seconds, peak RSS
/// MiB).
fn cli(server: &TestServer, args: &[&str]) -> anyhow::Result<(f64, f64)> {
    let bin = std::env::current_exe()?
        .parent()
        .map(|d| d.join("memoire-server"))
        .filter(|p| p.exists())
        .ok_or_else(|| anyhow::anyhow!("build the release server first (make release)"))?;
    let started = Instant::now();
    let mut child = Command::new(bin)
        .args(args)
        .env("MEMOIRE_DATABASE_URL", &server.database_url)
        .env("MEMOIRE_REDIS_URL", &server.config.redis_url)
        .env(
            "MEMOIRE_EMBEDDING_MODEL_DIR",
            &server.config.embedding_model_dir,
        )
        .env("MEMOIRE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut peak: f64 = 0.0;
    loop {
        peak = peak.max(rss_mib(child.id()));
        if let Some(status) = child.try_wait()? {
            anyhow::ensure!(status.success(), "memoire-server {args:?} failed");
            return Ok((started.elapsed().as_secs_f64(), peak));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let records: i64 = match args.iter().position(|a| a == "--records") {
        Some(i) => args
            .get(i + 1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(100_000),
        None if args.iter().any(|a| a == "--quick") => 5_000,
        None => 100_000,
    };
    let server = TestServer::start_with(
        |c| {
            c.log = "warn".into();
            c.worker_embedded = false;
            // One import RPC of the whole file: the default 30 s deadline would end it.
            c.request_timeout_ms = 3_600_000;
        },
        None,
    )
    .await;
    let (tenant, client) = server.tenant("bench", pb::KeyRole::Admin).await;

    let load = Instant::now();
    sqlx::query(
        "INSERT INTO memories (id, tenant_id, user_id, namespace, kind, content, content_key, \
           importance, confidence, version, created_at, updated_at, embedding, embedding_model) \
         SELECT gen_random_uuid(), $1::uuid, $2, 'default', 'fact', c, lower(c), 0.5, 1.0, 1, \
           now() - make_interval(secs => i), now() - make_interval(secs => i), \
           (SELECT array_agg(random())::real[]::vector FROM generate_series(1, 384) WHERE i > 0), \
           'all-MiniLM-L6-v2' \
         FROM generate_series(1, $3) AS i, \
              LATERAL (SELECT 'Remembers that item ' || i || ' was filed under ' || md5(i::text) AS c) AS t",
    )
    .bind(&tenant)
    .bind(USER)
    .bind(records)
    .execute(server.pool())
    .await?;
    sqlx::query(
        "INSERT INTO memory_versions (tenant_id, memory_id, version, op, basis, reason, actor, \
           created_at, kind, content, slot, subject, tags, importance, confidence, pinned, \
           expires_at, status, superseded_by) \
         SELECT tenant_id, id, 1, 'create', 'teach', '', 'bench', created_at, kind, content, \
           slot, subject, tags, importance, confidence, pinned, expires_at, status, superseded_by \
         FROM memories WHERE tenant_id = $1::uuid",
    )
    .bind(&tenant)
    .execute(server.pool())
    .await?;
    println!(
        "loaded {records} memories and their versions with SQL in {:.1} s",
        load.elapsed().as_secs_f64()
    );
    let expected = 1 + 2 * records as usize; // the header, each memory and its version

    // Export over gRPC: count the lines, keep them for the import.
    let me = std::process::id();
    let before = rss_mib(me);
    let started = Instant::now();
    let mut stream = client
        .admin()
        .export_memories(pb::ExportMemoriesRequest {
            tenant_id: tenant.clone(),
            user_id: USER.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let (mut lines, mut bytes, mut peak) = (0usize, 0usize, before);
    while let Some(m) = stream.message().await? {
        lines += m.lines.len();
        bytes += m.lines.iter().map(|l| l.len() + 1).sum::<usize>();
        if lines % 10_000 < m.lines.len() {
            peak = peak.max(rss_mib(me));
        }
    }
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        lines == expected,
        "exported {lines} records, not {expected}"
    );
    let size_mib = bytes as f64 / (1 << 20) as f64;
    println!(
        "ExportMemories (gRPC): {lines} records, {size_mib:.0} MiB in {secs:.1} s = {:.0} records/s; this process (server + client) grew {:.0} MiB",
        lines as f64 / secs,
        peak - before
    );

    let dir = std::env::temp_dir().join(format!("memoire-transfer-bench-{me}"));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("export.jsonl");
    let path = file.to_str().unwrap_or_default();
    let (secs, rss) = cli(&server, &["export", "--tenant", &tenant, "-o", path])?;
    let text = std::fs::read_to_string(&file)?;
    anyhow::ensure!(
        text.lines().count() == expected,
        "the CLI exported another count"
    );
    println!(
        "memoire-server export: {expected} records in {secs:.1} s = {:.0} records/s (process start included); peak RSS {rss:.0} MiB for a {size_mib:.0} MiB export",
        expected as f64 / secs
    );

    // Import over gRPC into the purged user, 500 lines a message.
    client.memory().forget(purge_user(USER)).await?;
    let file_lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut messages: Vec<pb::ImportMemoriesRequest> = file_lines
        .chunks(500)
        .map(|c| pb::ImportMemoriesRequest {
            lines: c.to_vec(),
            ..Default::default()
        })
        .collect();
    messages[0].tenant_id = tenant.clone();
    let started = Instant::now();
    let done = client
        .admin()
        .import_memories(tokio_stream::iter(messages))
        .await?
        .into_inner();
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        done.memories as i64 == records && done.versions as i64 == records,
        "imported {done:?}"
    );
    println!(
        "ImportMemories (gRPC): {expected} records in {secs:.1} s = {:.0} records/s ({:.0} memories/s with their versions)",
        expected as f64 / secs,
        records as f64 / secs
    );

    client.memory().forget(purge_user(USER)).await?;
    let (secs, rss) = cli(&server, &["import", "--tenant", &tenant, path])?;
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM memories WHERE tenant_id = $1::uuid")
            .bind(&tenant)
            .fetch_one(server.pool())
            .await?;
    anyhow::ensure!(stored == records, "the CLI imported {stored} memories");
    println!(
        "memoire-server import: {expected} records in {secs:.1} s = {:.0} records/s (process start and model load included); peak RSS {rss:.0} MiB",
        expected as f64 / secs
    );

    // A bulk load: plain memories without vectors, embedded in batches after the import.
    let plain = (records / 10).max(1);
    let now = chrono::Utc::now().to_rfc3339();
    let text: String = (0..plain)
        .map(|i| {
            let content = format!(
                "Remembers that parcel {i} went to the {} office",
                ["north", "south", "east", "west"][i as usize % 4]
            );
            let record = serde_json::json!({
                "type": "memory", "format_version": 1, "id": uuid::Uuid::now_v7(),
                "tenant_id": tenant, "user_id": "plain", "namespace": "default", "kind": "fact",
                "content_key": content.to_lowercase(), "content": content, "tags": [],
                "importance": 0.5, "confidence": 1.0, "pinned": false, "essential": false,
                "status": "active", "version": 1, "created_at": now, "updated_at": now,
                "access_count": 0, "source_episode_ids": [],
            });
            format!("{record}\n")
        })
        .collect();
    let plain_file = dir.join("plain.jsonl");
    std::fs::write(&plain_file, text)?;
    let (secs, _) = cli(
        &server,
        &[
            "import",
            "--tenant",
            &tenant,
            plain_file.to_str().unwrap_or_default(),
        ],
    )?;
    let embedded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM memories WHERE user_id = 'plain' AND embedding_model = $1",
    )
    .bind(&server.config.embedding_model)
    .fetch_one(server.pool())
    .await?;
    anyhow::ensure!(
        embedded == plain,
        "{embedded} of {plain} plain memories embedded"
    );
    println!(
        "memoire-server import of {plain} memories without vectors, embedded after (bulk load): {secs:.1} s = {:.0} memories/s, embedding included",
        plain as f64 / secs
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
