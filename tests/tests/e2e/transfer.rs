//! Export and import (`AdminService.ExportMemories` / `ImportMemories`): a round trip through a
//! purge answers every read exactly as before; importing twice changes nothing; bad records are
//! refused by line, with nothing written.

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use memoire_core::clock::{Clock, ManualClock};
use memoire_sdk::Client;
use memoire_tests::{TestServer, fact, proto as pb, purge_user, teach, violated_field};
use tonic::Code;

const USERS: [&str; 2] = ["ana", "ben"];
const QUERIES: [&str; 3] = [
    "where does she live",
    "what does ana like to drink",
    "hiking trip plans",
];

async fn export(client: &Client, tenant: &str, user: &str) -> Vec<String> {
    let mut stream = client
        .admin()
        .export_memories(pb::ExportMemoriesRequest {
            tenant_id: tenant.into(),
            user_id: user.into(),
            ..Default::default()
        })
        .await
        .expect("export")
        .into_inner();
    let mut lines = Vec::new();
    while let Some(m) = stream.message().await.expect("export stream") {
        lines.extend(m.lines);
    }
    lines
}

async fn import(
    client: &Client,
    tenant: &str,
    lines: &[String],
    dry_run: bool,
) -> Result<pb::ImportMemoriesResponse, tonic::Status> {
    // Three lines a message: errors must count lines across messages.
    let mut messages: Vec<pb::ImportMemoriesRequest> = lines
        .chunks(3)
        .map(|c| pb::ImportMemoriesRequest {
            lines: c.to_vec(),
            ..Default::default()
        })
        .collect();
    if messages.is_empty() {
        messages.push(pb::ImportMemoriesRequest::default());
    }
    messages[0].tenant_id = tenant.into();
    messages[0].dry_run = dry_run;
    client
        .admin()
        .import_memories(tokio_stream::iter(messages))
        .await
        .map(|r| r.into_inner())
}

fn of_type<'a>(lines: &'a [String], kind: &str) -> Vec<&'a String> {
    let tag = format!("\"type\": \"{kind}\"");
    lines.iter().filter(|l| l.contains(&tag)).collect()
}

fn ids(lines: &[String], kind: &str) -> Vec<String> {
    of_type(lines, kind)
        .into_iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            v["id"].as_str().expect("id").to_owned()
        })
        .collect()
}

/// Every read RPC of the users' data, as text: Conscious (first: Recall's access statistics
/// show in it), memories (listed, one by one, and their history), Recall with scores and
/// packed context. Each Recall adds a hit per memory it returns, written after the reply: the
/// next read waits for them (from `hits` before). Returns the reads and the hits after.
async fn reads(
    server: &TestServer,
    client: &Client,
    memory_ids: &[String],
    mut hits: i64,
) -> (Vec<String>, i64) {
    let mut m = client.memory();
    let mut out = Vec::new();
    for user in USERS {
        let conscious = m
            .conscious(pb::ConsciousRequest {
                user_id: user.into(),
                ..Default::default()
            })
            .await
            .map(|r| {
                // Which store answered (Redis or Postgres) is not the data.
                tonic::Response::new(pb::ConsciousResponse {
                    source: 0,
                    ..r.into_inner()
                })
            });
        out.push(text(conscious));
    }
    for user in USERS {
        let listed = m
            .list_memories(pb::ListMemoriesRequest {
                user_id: user.into(),
                include_superseded: true,
                ..Default::default()
            })
            .await;
        out.push(text(listed));
        for query in QUERIES {
            let recalled = m
                .recall(pb::RecallRequest {
                    user_id: user.into(),
                    query: query.into(),
                    k: 10,
                    include_episodes: Some(true),
                    explain: true,
                    ..Default::default()
                })
                .await;
            if let Ok(r) = &recalled {
                hits += r
                    .get_ref()
                    .items
                    .iter()
                    .filter(|i| matches!(i.item, Some(pb::recall_item::Item::Memory(_))))
                    .count() as i64;
                server.wait_access_hits(hits).await;
            }
            out.push(text(recalled));
        }
    }
    for id in memory_ids {
        let got = m
            .get_memory(pb::GetMemoryRequest {
                memory_id: id.clone(),
            })
            .await;
        out.push(text(got));
        let history = m
            .history(pb::HistoryRequest {
                memory_id: id.clone(),
            })
            .await;
        out.push(text(history));
    }
    (out, hits)
}

/// A reply as text: the message, or the error's code and message (not its headers: they hold
/// the date).
fn text<T: std::fmt::Debug>(reply: Result<tonic::Response<T>, tonic::Status>) -> String {
    match reply {
        Ok(r) => format!("{:?}", r.into_inner()),
        Err(e) => format!("{:?}: {}", e.code(), e.message()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_purge_import_answers_every_read_identically_and_twice_changes_nothing() {
    // Time stands still, so that recency scores and "now" do not move between the two reads.
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let server = TestServer::start_with(|_| {}, Some(clock.clone())).await;
    let (tenant, client) = server.tenant("transfer", pb::KeyRole::Admin).await;

    // A conversation (episodes, extracted memories, their derived-from edges)…
    let message = |id: &str, content: &str| pb::Message {
        role: pb::MessageRole::User as i32,
        name: Some("Ana".into()),
        content: content.into(),
        message_id: Some(id.into()),
        ..Default::default()
    };
    client
        .memory()
        .ingest(pb::IngestRequest {
            user_id: "ana".into(),
            session_id: "s1".into(),
            messages: vec![
                message("m1", "I live in Lisbon."),
                message("m2", "I love green tea in the morning."),
                message("m3", "We are planning a hiking trip to the Alps in June."),
            ],
            wait_for_extraction: true,
            ..Default::default()
        })
        .await
        .expect("ingest");
    server.wait_extracted(Duration::from_secs(30)).await;
    // …a superseded memory, a corrected one, a tombstone, one that expires, one pinned.
    let slot = |user: &str, content: &str| pb::TeachRequest {
        slot: Some("user.home_city".into()),
        ..fact(user, content)
    };
    teach(&client, slot("ben", "Lives in Berlin")).await;
    teach(&client, slot("ben", "Lives in Hamburg")).await;
    let tea = teach(&client, fact("ben", "Drinks black coffee")).await;
    teach(
        &client,
        pb::TeachRequest {
            memory_id: Some(tea.id.clone()),
            reason: Some("it was tea".into()),
            ..fact("ben", "Drinks black tea")
        },
    )
    .await;
    let gone = teach(&client, fact("ben", "Owns a red bicycle")).await;
    client
        .memory()
        .forget(pb::ForgetRequest {
            memory_ids: vec![gone.id.clone()],
            ..Default::default()
        })
        .await
        .expect("forget");
    teach(
        &client,
        pb::TeachRequest {
            expires_at: Some(prost_types::Timestamp {
                seconds: (clock.now() + TimeDelta::days(30)).timestamp(),
                nanos: 0,
            }),
            ..fact("ben", "Is on a hiking trip until the end of the month")
        },
    )
    .await;
    teach(
        &client,
        pb::TeachRequest {
            pinned: Some(true),
            ..fact("ana", "Is allergic to peanuts")
        },
    )
    .await;
    // Every episode embedded (the worker does it after extraction), and some access statistics.
    server.wait_embedded(Duration::from_secs(20)).await;
    // Recalls before the export, so that it holds access statistics.
    let (warm, hits) = reads(&server, &client, &[], 0).await;
    assert!(hits > 0, "the warm-up Recalls returned no memory: {warm:?}");
    // A write per user, so that Conscious is built again from Postgres (a cached view keeps the
    // access statistics it was built with).
    for user in USERS {
        teach(&client, fact(user, "Has a cat named Pixel")).await;
    }

    let mut before = Vec::new();
    for user in USERS {
        before.extend(export(&client, &tenant, user).await);
    }
    let memories = ids(&before, "memory");
    assert!(memories.contains(&gone.id) && memories.contains(&tea.id));
    for kind in ["episode", "memory", "memory_version", "edge"] {
        assert!(!of_type(&before, kind).is_empty(), "no {kind} exported");
    }
    let (first_reads, _) = reads(&server, &client, &memories, hits).await;

    // Purge both users: nothing of theirs is left.
    for user in USERS {
        client
            .memory()
            .forget(purge_user(user))
            .await
            .expect("purge");
    }
    for user in USERS {
        assert_eq!(
            of_type(&export(&client, &tenant, user).await, "memory").len(),
            0
        );
    }
    let dry = import(&client, &tenant, &before, true)
        .await
        .expect("dry run");
    assert!(
        dry.dry_run && dry.memories as usize == memories.len(),
        "{dry:?}"
    );
    assert_eq!(
        of_type(&export(&client, &tenant, "ben").await, "memory").len(),
        0,
        "a dry run writes nothing"
    );

    let done = import(&client, &tenant, &before, false)
        .await
        .expect("import");
    assert_eq!(done.records as usize, before.len(), "{done:?}");
    assert_eq!(done.memories as usize, memories.len(), "{done:?}");
    assert_eq!(done.episodes as usize, of_type(&before, "episode").len());
    assert_eq!(
        done.versions as usize,
        of_type(&before, "memory_version").len()
    );

    // The same records, byte for byte (the clock stood still: the headers too)…
    let mut after = Vec::new();
    for user in USERS {
        after.extend(export(&client, &tenant, user).await);
    }
    assert_eq!(after, before);
    // …and the same answers to every read.
    // (The purge took the access statistics; the import put them into the memories' rows.)
    let (second_reads, _) = reads(&server, &client, &memories, 0).await;
    assert_eq!(second_reads.len(), first_reads.len());
    for (a, b) in first_reads.iter().zip(&second_reads) {
        assert_eq!(a, b);
    }

    // Importing the same file again writes nothing.
    let again = import(&client, &tenant, &before, false)
        .await
        .expect("again");
    assert_eq!(
        (again.episodes, again.memories, again.versions, again.edges),
        (0, 0, 0, 0),
        "{again:?}"
    );
    assert_eq!(
        again.skipped + USERS.len() as u64,
        again.records,
        "{again:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_are_refused_by_line_and_nothing_is_half_imported() {
    let server = TestServer::start_with(|c| c.worker_embedded = false, None).await;
    let (tenant, client) = server.tenant("source", pb::KeyRole::Admin).await;
    // More memories than one write batch, so that the bad record comes after a batch went in.
    for i in 0..520 {
        teach(
            &client,
            pb::TeachRequest {
                force_create: true,
                ..fact("u", &format!("Remembers the number {i}"))
            },
        )
        .await;
    }
    let good = export(&client, &tenant, "u").await;
    let (other, other_client) = server.tenant("target", pb::KeyRole::Admin).await;
    let stored = |t: String| {
        let pool = server.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM memories WHERE tenant_id = $1::uuid")
                .bind(t)
                .fetch_one(&pool)
                .await
                .expect("count")
        }
    };

    // Another tenant's file: refused at its first line, by the target's admin and by the
    // bootstrap key alike.
    for c in [&other_client, &server.admin()] {
        let err = import(c, &other, &good, false).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert_eq!(violated_field(&err).as_deref(), Some("line 1"), "{err:?}");
        assert!(err.message().contains(&tenant), "{err:?}");
    }
    // The same file claiming to be the target's: its ids are the source's rows, so it is refused
    // at its first memory, not skipped as "already stored".
    let claimed: Vec<String> = good.iter().map(|l| l.replace(&tenant, &other)).collect();
    let err = import(&other_client, &other, &claimed, false)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(violated_field(&err).as_deref(), Some("line 2"), "{err:?}");
    assert!(err.message().contains("another tenant's memory"), "{err:?}");
    assert_eq!(stored(other.clone()).await, 0);
    // A tenant's admin key cannot import into another tenant, nor export it; a writer key
    // cannot do either.
    let err = import(&other_client, &tenant, &good, false)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = other_client
        .admin()
        .export_memories(pb::ExportMemoriesRequest {
            tenant_id: tenant.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let writer = server.client(Some(&server.key(&tenant, pb::KeyRole::Writer).await));
    let err = import(&writer, &tenant, &good, false).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // Into the source tenant after a purge: each bad record is named by its line.
    client
        .memory()
        .forget(purge_user("u"))
        .await
        .expect("purge");
    let last = good.len() - 1; // an edge-free file: its last line is a memory version
    let broken = |f: &dyn Fn(&str) -> String| {
        let mut lines = good.clone();
        lines[last] = f(&lines[last]);
        lines
    };
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "truncated",
            broken(&|l| l[..l.len() / 2].to_owned()),
            "is not a JSON record",
        ),
        (
            "unknown type",
            broken(&|l| l.replace("\"memory_version\"", "\"memory_verison\"")),
            "has type \"memory_verison\"",
        ),
        (
            "bad timestamp",
            broken(&|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["created_at"] = "2024-13-45T25:00:00Z".into();
                v.to_string()
            }),
            "created_at",
        ),
        (
            "newer format",
            broken(&|l| l.replace("\"format_version\": 1", "\"format_version\": 2")),
            "format_version 2",
        ),
        (
            "importance out of range",
            {
                // A memory record, in the middle of the second batch of memories.
                let mut lines = good.clone();
                let i = lines
                    .iter()
                    .rposition(|l| l.contains("\"type\": \"memory\""))
                    .unwrap();
                let mut v: serde_json::Value = serde_json::from_str(&lines[i]).unwrap();
                v["importance"] = 7.into();
                lines[i] = v.to_string();
                lines
            },
            "importance",
        ),
    ];
    for (what, lines, says) in cases {
        let err = import(&client, &tenant, &lines, false).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        let field = violated_field(&err).unwrap_or_default();
        let line: usize = field
            .strip_prefix("line ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{what}: no line in {err:?}"));
        assert!(
            lines[line - 1] != good[line - 1],
            "{what}: line {line} is not the broken one ({err:?})"
        );
        assert!(err.message().contains(says), "{what}: {err:?}");
        assert_eq!(stored(tenant.clone()).await, 0, "{what}: half imported");
    }

    // The good file still imports, whole.
    let done = import(&client, &tenant, &good, false)
        .await
        .expect("import");
    assert_eq!(done.memories, 520, "{done:?}");
    assert_eq!(stored(tenant.clone()).await, 520);
    assert_eq!(stored(other).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vectors_of_another_model_are_kept_then_embedded_again() {
    let server = TestServer::start_with(|c| c.worker_embedded = false, None).await;
    let (tenant, client) = server.tenant("models", pb::KeyRole::Admin).await;
    for content in ["Plays the cello", "Grows tomatoes on the balcony"] {
        teach(&client, fact("u", content)).await;
    }
    let lines: Vec<String> = export(&client, &tenant, "u")
        .await
        .into_iter()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(&l).expect("json");
            if v["type"] == "memory" {
                v["embedding_model"] = "an-older-model".into();
                v["embedding"] = "[1,0,0]".into();
            }
            v.to_string()
        })
        .collect();
    client
        .memory()
        .forget(purge_user("u"))
        .await
        .expect("purge");
    let done = import(&client, &tenant, &lines, false)
        .await
        .expect("import");
    assert_eq!(done.memories, 2, "{done:?}");
    // The import starts the re-embed job for the tenant: the configured model's vectors come.
    let model = server.config.embedding_model.clone();
    for _ in 0..400 {
        let stale: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM memories WHERE embedding_model <> $1 OR vector_dims(embedding) <> 384",
        )
        .bind(&model)
        .fetch_one(server.pool())
        .await
        .expect("count");
        if stale == 0 {
            let found = client
                .memory()
                .recall(pb::RecallRequest {
                    user_id: "u".into(),
                    query: "which instrument does she play".into(),
                    k: 1,
                    ..Default::default()
                })
                .await
                .expect("recall")
                .into_inner();
            assert!(
                format!("{found:?}").contains("Plays the cello"),
                "{found:?}"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the imported memories were not embedded again with {model}");
}
