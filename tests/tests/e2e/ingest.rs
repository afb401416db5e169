//! Ingest and the extraction worker, end to end over gRPC against real Postgres: idempotency,
//! validation, PII scrubbing, the rule extractor's Dana example, and the LLM extractor against a
//! local fake OpenAI-compatible endpoint (good JSON, malformed JSON → dead letter → replay,
//! timeouts, 429 with Retry-After, delete intents).

use std::time::Duration;

use memoire_config::{Config, ExtractorKind};
use memoire_sdk::Client;
use memoire_tests::fake_llm::{FakeLlm, Reply};
use memoire_tests::{TestServer, proto as pb, retry_delay, violated_field};
use serde_json::json;

fn msg(role: pb::MessageRole, content: &str, message_id: Option<&str>) -> pb::Message {
    pb::Message {
        role: role as i32,
        content: content.into(),
        message_id: message_id.map(str::to_owned),
        ..Default::default()
    }
}

fn user(content: &str) -> pb::Message {
    msg(pb::MessageRole::User, content, None)
}

/// An Ingest of `messages` in session "s1" that waits up to 30 s for extraction.
fn waiting(user_id: &str, messages: Vec<pb::Message>) -> pb::IngestRequest {
    pb::IngestRequest {
        user_id: user_id.into(),
        session_id: "s1".into(),
        messages,
        wait_for_extraction: true,
        wait_timeout: Some(prost_types::Duration {
            seconds: 30,
            nanos: 0,
        }),
        ..Default::default()
    }
}

async fn ingest(
    client: &Client,
    user_id: &str,
    messages: Vec<pb::Message>,
    wait: bool,
) -> pb::IngestResponse {
    client
        .memory()
        .ingest(pb::IngestRequest {
            wait_for_extraction: wait,
            ..waiting(user_id, messages)
        })
        .await
        .expect("ingest")
        .into_inner()
}

async fn current(client: &Client, user_id: &str) -> Vec<pb::Memory> {
    client
        .memory()
        .list_memories(pb::ListMemoriesRequest {
            user_id: user_id.into(),
            page_size: 500,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .memories
}

/// Whether the user has a current memory saying exactly `content`.
async fn remembers(client: &Client, user_id: &str, content: &str) -> bool {
    current(client, user_id)
        .await
        .iter()
        .any(|m| m.content == content)
}

/// The memory of `user_id` in `slot` whose content has `text`, superseded ones included.
async fn in_history(client: &Client, user_id: &str, slot: &str, text: &str) -> pb::Memory {
    client
        .memory()
        .list_memories(pb::ListMemoriesRequest {
            user_id: user_id.into(),
            slot: Some(slot.into()),
            include_superseded: true,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .memories
        .into_iter()
        .find(|m| m.content.contains(text))
        .unwrap_or_else(|| panic!("{text} kept in {slot}"))
}

async fn dead_letters(server: &TestServer, tenant: &str) -> Vec<pb::DeadLetter> {
    server
        .admin()
        .admin()
        .list_dead_letters(pb::ListDeadLettersRequest {
            tenant_id: tenant.into(),
            ..Default::default()
        })
        .await
        .expect("list dead letters")
        .into_inner()
        .dead_letters
}

async fn recall(
    client: &Client,
    user_id: &str,
    query: &str,
    as_of: Option<prost_types::Timestamp>,
) -> Vec<pb::Memory> {
    client
        .memory()
        .recall(pb::RecallRequest {
            user_id: user_id.into(),
            query: query.into(),
            k: 5,
            filter: Some(pb::RecallFilter {
                as_of,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("recall")
        .into_inner()
        .items
        .into_iter()
        .filter_map(|i| match i.item {
            Some(pb::recall_item::Item::Memory(m)) => Some(m),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dana_moves_to_dallas_and_keeps_her_allergy() {
    let server = TestServer::start().await;
    let (_, client) = server.tenant("dana", pb::KeyRole::Writer).await;
    let r = ingest(
        &client,
        "dana",
        vec![user(
            "Hi, I'm Dana. I live in San Francisco and I'm allergic to peanuts.",
        )],
        true,
    )
    .await;
    assert_eq!(r.extraction, pb::ExtractionState::Completed as i32);
    let before_move = prost_types::Timestamp::from(std::time::SystemTime::now());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let r = ingest(&client, "dana", vec![user("I just moved to Dallas.")], true).await;
    assert_eq!(r.extraction, pb::ExtractionState::Completed as i32);

    let hits = recall(&client, "dana", "where does the user live?", None).await;
    assert!(
        hits.first().is_some_and(|m| m.content.contains("Dallas")),
        "Dallas must come first: {:?}",
        hits.iter().map(|m| &m.content).collect::<Vec<_>>()
    );
    assert!(
        hits.iter().all(|m| !m.content.contains("San Francisco")),
        "San Francisco is superseded: not in the current view"
    );
    let then = recall(
        &client,
        "dana",
        "where does the user live?",
        Some(before_move),
    )
    .await;
    assert!(
        then.first()
            .is_some_and(|m| m.content.contains("San Francisco")),
        "as_of before the move sees San Francisco: {:?}",
        then.iter().map(|m| &m.content).collect::<Vec<_>>()
    );

    let memories = current(&client, "dana").await;
    let slot = |s: &str| memories.iter().find(|m| m.slot == s);
    let allergy = slot("user.allergy.peanuts").expect("the allergy has its own slot");
    assert!(allergy.content.to_lowercase().contains("peanut"));
    assert!(slot("user.name").is_some_and(|m| m.content.contains("Dana")));
    let home = slot("user.home_city").expect("home city");
    assert!(home.content.contains("Dallas"));
    assert_eq!(
        home.source_episode_ids.len(),
        1,
        "provenance: the episode it came from"
    );

    // San Francisco is in the history, superseded by Dallas, decided by the resolver.
    let sf = in_history(&client, "dana", "user.home_city", "San Francisco").await;
    assert_eq!(sf.status, pb::MemoryStatus::Superseded as i32);
    assert_eq!(sf.superseded_by, home.id);
    let history = client
        .memory()
        .history(pb::HistoryRequest {
            memory_id: sf.id.clone(),
        })
        .await
        .expect("history")
        .into_inner()
        .versions;
    assert_eq!(history[0].basis, pb::Basis::Rule as i32);
    assert_eq!(
        history.last().expect("v").op,
        pb::VersionOp::Supersede as i32
    );

    // Every decision left an audit row naming the episode.
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action LIKE 'extract.%' AND detail ? 'episode'",
    )
    .fetch_one(server.pool())
    .await
    .expect("audit");
    assert!(audited >= 4, "{audited} audit rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_turns_is_extracted_together_as_if_one_at_a_time() {
    let server = TestServer::start().await;
    let (tenant, client) = server.tenant("run", pb::KeyRole::Writer).await;
    // One Ingest: the worker finds the five turns due at once. Each later turn is resolved
    // against what the earlier ones wrote in the same run.
    let r = ingest(
        &client,
        "dana",
        vec![
            user("I live in San Francisco."),
            user("I'm allergic to peanuts."),
            user("I just moved to Dallas."),
            user("I'm allergic to peanuts."),
            user("My name is Dana."),
        ],
        true,
    )
    .await;
    assert_eq!(r.extraction, pb::ExtractionState::Completed as i32);
    let memories = current(&client, "dana").await;
    let in_slot = |s: &str| memories.iter().filter(|m| m.slot == s).collect::<Vec<_>>();
    let home = in_slot("user.home_city");
    assert_eq!(home.len(), 1, "{memories:?}");
    assert!(home[0].content.contains("Dallas"));
    assert_eq!(
        in_slot("user.allergy.peanuts").len(),
        1,
        "the repeated allergy is not written twice"
    );
    assert!(in_slot("user.name")[0].content.contains("Dana"));
    let sf = in_history(&client, "dana", "user.home_city", "San Francisco").await;
    assert_eq!(sf.status, pb::MemoryStatus::Superseded as i32);
    assert_eq!(sf.superseded_by, home[0].id);
    // One transaction wrote them all: every turn was marked extracted at the same instant.
    let marked: Vec<Option<chrono::DateTime<chrono::Utc>>> =
        sqlx::query_scalar("SELECT DISTINCT extracted_at FROM episodes WHERE tenant_id = $1::uuid")
            .bind(&tenant)
            .fetch_all(server.pool())
            .await
            .expect("episodes");
    assert_eq!(marked.len(), 1, "{marked:?}");
    assert!(marked[0].is_some());
}

fn said_by(name: &str, content: &str) -> pb::Message {
    pb::Message {
        name: Some(name.into()),
        ..user(content)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_talking_keep_their_own_facts() {
    let server = TestServer::start().await;
    let (_, client) = server.tenant("pair", pb::KeyRole::Writer).await;
    let talk = |user_name: Option<&str>, messages: Vec<pb::Message>| {
        let client = client.clone();
        let request = pb::IngestRequest {
            user_name: user_name.map(str::to_owned),
            ..waiting("caroline", messages)
        };
        async move {
            client
                .memory()
                .ingest(request)
                .await
                .expect("ingest")
                .into_inner()
        }
    };
    // Caroline owns the user id; Melanie is the friend she talks to.
    let r = talk(
        Some("Caroline"),
        vec![
            said_by("Caroline", "I live in Boston and I love pottery."),
            said_by("Melanie", "I just moved to Denver! I love pottery too."),
        ],
    )
    .await;
    assert_eq!(r.extraction, pb::ExtractionState::Completed as i32);
    // Melanie moving again supersedes Melanie's home, never Caroline's.
    talk(
        Some("Caroline"),
        vec![said_by("Melanie", "I moved to Austin last week.")],
    )
    .await;

    let memories = current(&client, "caroline").await;
    let by_slot = |slot: &str| -> Vec<(&str, &str)> {
        memories
            .iter()
            .filter(|m| m.slot == slot)
            .map(|m| (m.content.as_str(), m.subject.as_str()))
            .collect()
    };
    assert_eq!(by_slot("user.home_city"), vec![("Lives in Boston", "")]);
    assert_eq!(
        by_slot("melanie.home_city"),
        vec![("Lives in Austin", "Melanie")]
    );
    assert_eq!(by_slot("user.taste.pottery").len(), 1, "{memories:?}");
    assert_eq!(
        by_slot("melanie.taste.pottery"),
        vec![("Likes pottery", "Melanie")]
    );

    // Recall says whose fact it is, and a question naming Melanie prefers hers.
    let reply = client
        .memory()
        .recall(pb::RecallRequest {
            user_id: "caroline".into(),
            query: "Where does Melanie live?".into(),
            k: 3,
            include_episodes: Some(false),
            ..Default::default()
        })
        .await
        .expect("recall")
        .into_inner();
    let first = match &reply.items[0].item {
        Some(pb::recall_item::Item::Memory(m)) => m.content.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(first, "Lives in Austin");
    assert!(
        reply.context.contains("Lives in Austin (about Melanie)"),
        "{}",
        reply.context
    );

    // Without `user_name`, every named speaker is someone else: nothing is filed as the user's.
    let r = ingest(
        &client,
        "transcript",
        vec![said_by("Nate", "I live in Oslo.")],
        true,
    )
    .await;
    assert_eq!(r.extraction, pb::ExtractionState::Completed as i32);
    let nate = current(&client, "transcript").await;
    assert_eq!(nate.len(), 1);
    assert_eq!(
        (nate[0].slot.as_str(), nate[0].subject.as_str()),
        ("nate.home_city", "Nate")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn likes_and_allergies_in_any_script_keep_their_own_slots() {
    let server = TestServer::start().await;
    let (_, client) = server.tenant("unicode", pb::KeyRole::Writer).await;
    for said in [
        "I love 寿司.",
        "I love 焼肉.",
        "I'm allergic to 花生.",
        "I'm allergic to 小麦.",
        "I love борщ.",
        "I love пельмени.",
    ] {
        let r = ingest(&client, "u", vec![user(said)], true).await;
        assert_eq!(r.extraction, pb::ExtractionState::Completed as i32);
    }
    // Teach takes such slots too (NFKC + lowercase), and two words never share one.
    for (content, slot) in [
        ("Likes كبسة", "user.taste.كبسة"),
        ("Likes فلافل", "user.taste.فلافل"),
        ("Likes crème brûlée", "User.Taste.Crème_Brûlée"),
    ] {
        client
            .memory()
            .teach(pb::TeachRequest {
                user_id: "u".into(),
                kind: pb::MemoryKind::Preference as i32,
                content: content.into(),
                slot: Some(slot.into()),
                ..Default::default()
            })
            .await
            .expect("teach");
    }
    let mut slots: Vec<String> = current(&client, "u")
        .await
        .into_iter()
        .map(|m| m.slot)
        .collect();
    slots.sort();
    assert_eq!(
        slots,
        [
            "user.allergy.小麦",
            "user.allergy.花生",
            "user.taste.crème_brûlée",
            "user.taste.борщ",
            "user.taste.пельмени",
            "user.taste.فلافل",
            "user.taste.كبسة",
            "user.taste.寿司",
            "user.taste.焼肉",
        ],
        "every one still active"
    );
}

/// Recall of `query` over user "talk"'s turns, explained.
async fn explained(client: &Client, query: &str) -> Vec<(String, f32)> {
    let reply = client
        .memory()
        .recall(pb::RecallRequest {
            user_id: "talk".into(),
            query: query.into(),
            k: 10,
            include_episodes: Some(true),
            explain: true,
            ..Default::default()
        })
        .await
        .expect("recall")
        .into_inner();
    reply
        .items
        .iter()
        .filter_map(|i| match &i.item {
            Some(pb::recall_item::Item::Episode(e)) => Some((
                e.content.clone(),
                i.explain.as_ref().map_or(-1.0, |x| x.text_score),
            )),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_question_about_a_speaker_searches_for_what_is_asked_not_for_their_name() {
    let server = TestServer::start().await;
    let (_, client) = server.tenant("names", pb::KeyRole::Writer).await;
    let greeting = "Melanie! Good morning Melanie, so good to see you, Melanie.";
    let pottery = "I have been learning pottery lately, it keeps me calm.";
    ingest(
        &client,
        "talk",
        vec![
            said_by("Caroline", greeting),
            said_by("Melanie", pottery),
            said_by("Caroline", "I went hiking in the hills with my dog."),
            said_by("Caroline", "My sister Anna visits next week."),
        ],
        true,
    )
    .await;
    server.wait_embedded(Duration::from_secs(20)).await;
    // "Melanie" is a speaker here: the searches look for "What hobby does have?", so the
    // greeting that repeats her name matches nothing in full text, and her own turn comes first
    // (the speaker boost still reads the question as asked).
    let text_score = |items: &[(String, f32)], content: &str| {
        items
            .iter()
            .find(|(c, _)| c == content)
            .map(|(_, t)| *t)
            .unwrap_or_else(|| panic!("{content:?} is a candidate: {items:?}"))
    };
    let items = explained(&client, "What hobby does Melanie have?").await;
    assert_eq!(items[0].0, pottery, "{items:?}");
    assert_eq!(text_score(&items, greeting), 0.0, "{items:?}");
    // A query that is nothing but a name is searched as asked: the greeting matches it best in
    // full text (her own turn still comes first, by the speaker boost).
    let items = explained(&client, "Melanie?").await;
    assert_eq!(items[0].0, pottery, "{items:?}");
    assert_eq!(text_score(&items, greeting), 1.0, "{items:?}");
    // Someone who does not speak here keeps their name in the searches ("who" and "is" are
    // stop words: only "Anna" can match).
    let items = explained(&client, "Who is Anna?").await;
    assert_eq!(items[0].0, "My sister Anna visits next week.", "{items:?}");
    assert!(items[0].1 > 0.0, "{items:?}");
}

/// A query starts embedding as asked while the speakers' names are looked up; one that names a
/// speaker is embedded again without the name, and the vector search uses that embedding. Once a
/// scope's queries were found to name a speaker, a query that may name them waits for the lookup
/// and is embedded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_is_embedded_while_its_names_are_looked_up_and_again_without_them() {
    let server = TestServer::start().await;
    let (tenant, client) = server.tenant("names", pb::KeyRole::Writer).await;
    ingest(
        &client,
        "talk",
        vec![
            said_by("Caroline", "I went hiking in the hills with my dog."),
            said_by("Melanie", "I have been learning pottery lately."),
        ],
        true,
    )
    .await;
    server.wait_embedded(Duration::from_secs(20)).await;
    let vs = memoire_store::SearchSettings {
        model: server.config.embedding_model.clone(),
        dims: server.config.embedding_dims,
        exact_search_max_scope: 10_000,
        exact_text_max_scope: 10_000,
        vector_cache_bytes: 0,
    };
    let recall = |text: &str| {
        let (server, vs) = (&server, &vs);
        let q = memoire_core::command::RecallQuery {
            candidates: 50,
            ..memoire_core::command::RecallQuery::new(
                tenant.parse().expect("tenant id"),
                "talk".into(),
                "default".into(),
                text.into(),
            )
        };
        async move {
            // Only a text without "Melanie" gets a vector: the vector search runs only if the
            // searched text was embedded.
            let asked = std::sync::Mutex::new(Vec::new());
            let found = server
                .store
                .recall_candidates(
                    &q,
                    |text: String| {
                        asked.lock().expect("lock").push(text.clone());
                        async move {
                            let named = text.contains("Melanie");
                            Ok((!named).then(|| vec![0.05; vs.dims as usize]))
                        }
                    },
                    vs,
                )
                .await
                .expect("recall");
            let searched = found.iter().any(|c| c.vector_rank.is_some());
            (asked.into_inner().expect("lock"), searched)
        }
    };
    let (asked, searched) = recall("What does Melanie make?").await;
    assert_eq!(asked[0], "What does Melanie make?", "{asked:?}");
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert!(!asked[1].contains("Melanie"), "{asked:?}");
    assert!(searched, "the vector side used the text without the name");
    let (asked, searched) = recall("Where did Caroline and her dog go?").await;
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert!(searched);
    let (asked, searched) = recall("Where did the dog go hiking?").await;
    assert_eq!(
        asked,
        ["Where did the dog go hiking?"],
        "no name: embedded once"
    );
    assert!(searched);
    let (asked, searched) = recall("What else does Melanie make?").await;
    assert_eq!(
        asked.len(),
        1,
        "a known speaker: looked up first: {asked:?}"
    );
    assert!(!asked[0].contains("Melanie"), "{asked:?}");
    assert!(searched);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_is_idempotent_on_message_id() {
    let server = TestServer::start_with(|c| c.worker_embedded = false, None).await;
    let (_, client) = server.tenant("t", pb::KeyRole::Writer).await;
    let batch = || {
        vec![
            msg(pb::MessageRole::User, "I love jazz.", Some("m1")),
            msg(pb::MessageRole::Assistant, "Nice!", Some("m2")),
            msg(pb::MessageRole::User, "no id", None),
            msg(pb::MessageRole::User, "I love jazz.", Some("m1")),
        ]
    };
    let first = ingest(&client, "u", batch(), false).await;
    assert_eq!(first.extraction, pb::ExtractionState::Queued as i32);
    let dup: Vec<bool> = first.episodes.iter().map(|e| e.duplicate).collect();
    assert_eq!(
        dup,
        [false, false, false, true],
        "m1 twice in one batch is one message"
    );
    assert_eq!(first.episodes[0].episode_id, first.episodes[3].episode_id);

    let retry = ingest(&client, "u", batch(), false).await;
    let dup: Vec<bool> = retry.episodes.iter().map(|e| e.duplicate).collect();
    assert_eq!(
        dup,
        [true, true, false, true],
        "a retried batch stores nothing new with an id"
    );
    assert_eq!(retry.episodes[0].episode_id, first.episodes[0].episode_id);
    assert_eq!(retry.episodes[1].episode_id, first.episodes[1].episode_id);
    assert_eq!(retry.episodes[1].message_id, "m2");

    let rows: Vec<(String, Option<String>, i64)> =
        sqlx::query_as("SELECT content, message_id, seq FROM episodes ORDER BY seq")
            .fetch_all(server.pool())
            .await
            .expect("episodes");
    assert_eq!(rows.len(), 4, "m1, m2 and the two messages without id");
    assert_eq!(rows[0].1.as_deref(), Some("m1"));
    assert_eq!(rows[1].1.as_deref(), Some("m2"), "stored in the order said");

    // The same message id for another user is another message.
    let other = ingest(&client, "v", batch(), false).await;
    assert!(!other.episodes[0].duplicate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_past_its_extraction_backlog_is_told_to_retry_and_nothing_is_stored() {
    let server = TestServer::start_with(
        |c| {
            c.worker_embedded = false;
            c.max_extraction_backlog = 3;
        },
        None,
    )
    .await;
    let (_, client) = server.tenant("t", pb::KeyRole::Writer).await;
    let (_, other) = server.tenant("other", pb::KeyRole::Writer).await;
    let batch = |ids: &[&str]| -> Vec<pb::Message> {
        ids.iter()
            .map(|id| msg(pb::MessageRole::User, &format!("message {id}"), Some(id)))
            .collect()
    };
    // Under the bound, a call is accepted whole, even one that crosses it.
    ingest(&client, "u", batch(&["a", "b"]), false).await;
    ingest(&client, "u", batch(&["c", "d"]), false).await;
    // The count is reused for a second: past it, the tenant is refused.
    tokio::time::sleep(memoire_store::BACKLOG_TTL + Duration::from_millis(100)).await;
    let refused = client
        .memory()
        .ingest(pb::IngestRequest {
            wait_for_extraction: false,
            ..waiting("u", batch(&["e"]))
        })
        .await
        .expect_err("past the backlog bound");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("max_extraction_backlog"),
        "{}",
        refused.message()
    );
    let retry = retry_delay(&refused).expect("a retry delay");
    assert!(retry >= Duration::from_secs(1), "{retry:?}");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM episodes")
        .fetch_one(server.pool())
        .await
        .expect("count");
    assert_eq!(stored, 4, "the refused message was not stored");
    // Another tenant's backlog is its own.
    ingest(&other, "u", batch(&["x"]), false).await;

    // The lag: how long the oldest waiting message has waited.
    let uc = server.usecases().await;
    let lag = uc.store().queue_depths().await.expect("depths");
    assert_eq!(lag.extract, 5);
    assert!(
        lag.extract_oldest_age >= memoire_store::BACKLOG_TTL
            && lag.extract_oldest_age < Duration::from_secs(60),
        "{lag:?}"
    );

    // The worker drains the backlog; the retried call is then accepted, once.
    let worker = server.start_worker(|_| {}).await;
    server.wait_extracted(Duration::from_secs(60)).await;
    let lag = uc.store().queue_depths().await.expect("depths");
    assert_eq!(
        (lag.extract, lag.extract_oldest_age),
        (0, Duration::ZERO),
        "{lag:?}"
    );
    let metrics = memoire_tests::http_get(server.http_addr, "/metrics").await;
    assert!(
        metrics.contains("memoire_ingest_refused_total{reason=\"backlog\"} 1"),
        "{metrics}"
    );
    tokio::time::sleep(memoire_store::BACKLOG_TTL + Duration::from_millis(100)).await;
    let accepted = ingest(&client, "u", batch(&["e"]), false).await;
    assert!(!accepted.episodes[0].duplicate);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ingest_requests_name_the_field_and_store_nothing() {
    let server = TestServer::start_with(
        |c| {
            c.worker_embedded = false;
            c.max_batch_messages = 3;
            c.max_content_bytes = 100;
        },
        None,
    )
    .await;
    let (_, client) = server.tenant("t", pb::KeyRole::Writer).await;
    let good = || user("hello");
    let future =
        prost_types::Timestamp::from(std::time::SystemTime::now() + Duration::from_secs(3600));
    let cases: Vec<(pb::IngestRequest, &str)> = vec![
        (
            pb::IngestRequest {
                session_id: "s".into(),
                messages: vec![good()],
                ..Default::default()
            },
            "user_id",
        ),
        (
            pb::IngestRequest {
                user_id: "u".into(),
                messages: vec![good()],
                ..Default::default()
            },
            "session_id",
        ),
        (
            pb::IngestRequest {
                user_id: "u".into(),
                session_id: "s".into(),
                ..Default::default()
            },
            "messages",
        ),
        (
            pb::IngestRequest {
                user_id: "u".into(),
                session_id: "s".into(),
                messages: vec![good(); 4],
                ..Default::default()
            },
            "messages",
        ),
        (
            pb::IngestRequest {
                user_id: "u".into(),
                session_id: "s".into(),
                messages: vec![
                    good(),
                    pb::Message {
                        content: "x".into(),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            },
            "messages[1].role",
        ),
        (
            pb::IngestRequest {
                user_id: "u".into(),
                session_id: "s".into(),
                messages: vec![good(), user("   ")],
                ..Default::default()
            },
            "messages[1].content",
        ),
        (
            pb::IngestRequest {
                user_id: "u".into(),
                session_id: "s".into(),
                messages: vec![user(&"x".repeat(101))],
                ..Default::default()
            },
            "messages[0].content",
        ),
        (
            pb::IngestRequest {
                user_id: "u".into(),
                session_id: "s".into(),
                messages: vec![pb::Message {
                    occurred_at: Some(future),
                    ..good()
                }],
                ..Default::default()
            },
            "messages[0].occurred_at",
        ),
        (
            pb::IngestRequest {
                user_id: "u".into(),
                session_id: "s".into(),
                messages: vec![good()],
                wait_for_extraction: true,
                wait_timeout: Some(prost_types::Duration {
                    seconds: 61,
                    nanos: 0,
                }),
                ..Default::default()
            },
            "wait_timeout",
        ),
        (
            pb::IngestRequest {
                user_id: "u".into(),
                namespace: "bad namespace!".into(),
                session_id: "s".into(),
                messages: vec![good()],
                ..Default::default()
            },
            "namespace",
        ),
    ];
    for (req, field) in cases {
        let err = client.memory().ingest(req).await.expect_err(field);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{field}: {err:?}");
        assert_eq!(violated_field(&err).as_deref(), Some(field), "{err:?}");
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM episodes")
        .fetch_one(server.pool())
        .await
        .expect("count");
    assert_eq!(
        stored, 0,
        "a rejected batch stores nothing, not even its valid messages"
    );

    // A reader key cannot ingest.
    let (tenant, _) = server.tenant("r", pb::KeyRole::Reader).await;
    let reader = server.client(Some(&server.key(&tenant, pb::KeyRole::Reader).await));
    let err = reader
        .memory()
        .ingest(pb::IngestRequest {
            user_id: "u".into(),
            session_id: "s".into(),
            messages: vec![good()],
            ..Default::default()
        })
        .await
        .expect_err("reader");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
}

const PII_MESSAGE: &str = "Reach me at dana.k@example.com or +1 (415) 555-0133; card 4111 1111 1111 1111, \
    SSN 219-09-9999, from 203.0.113.7. Order 4111 1111 1111 1112 shipped on 2024-03-05, v1.2.3.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_episodes_hold_no_raw_pii_per_tenant_policy() {
    let server = TestServer::start_with(|c| c.worker_embedded = false, None).await;
    let (tenant, client) = server.tenant("t", pb::KeyRole::Writer).await;
    let admin = server.admin();
    let stored = |id: String| {
        let pool = server.pool().clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT content FROM episodes WHERE id = $1::uuid")
                .bind(id)
                .fetch_one(&pool)
                .await
                .expect("episode")
        }
    };

    // Default: redact.
    let r = ingest(&client, "u", vec![user(PII_MESSAGE)], false).await;
    let text = stored(r.episodes[0].episode_id.clone()).await;
    for raw in [
        "dana.k@example.com",
        "555-0133",
        "4111 1111 1111 1111",
        "219-09-9999",
        "203.0.113.7",
    ] {
        assert!(!text.contains(raw), "{raw} leaked: {text}");
    }
    assert!(
        text.contains("[EMAIL]") && text.contains("[CARD]"),
        "{text}"
    );
    // What a client teaches is scrubbed by the same policy, and so is a correction.
    let teach = |content: &str, memory_id: Option<&str>| pb::TeachRequest {
        user_id: "u".into(),
        kind: pb::MemoryKind::Fact as i32,
        content: content.into(),
        memory_id: memory_id.map(Into::into),
        ..Default::default()
    };
    let taught = client
        .memory()
        .teach(teach("Her email is dana.k@example.com", None))
        .await
        .expect("teach")
        .into_inner()
        .memory
        .expect("memory");
    assert_eq!(taught.content, "Her email is [EMAIL]");
    let corrected = client
        .memory()
        .teach(teach("Her card is 4111 1111 1111 1111", Some(&taught.id)))
        .await
        .expect("correct")
        .into_inner()
        .memory
        .expect("memory");
    assert_eq!(corrected.content, "Her card is [CARD]");
    // A tenant may keep its policy for messages but not for what it teaches (on by default).
    let t = admin
        .admin()
        .update_tenant(pb::UpdateTenantRequest {
            tenant_id: tenant.clone(),
            scrub_teach: Some(false),
            ..Default::default()
        })
        .await
        .expect("update")
        .into_inner()
        .tenant
        .expect("tenant");
    assert!(!t.scrub_teach);
    let verbatim = client
        .memory()
        .teach(teach("Her work email is dana@work.example.com", None))
        .await
        .expect("teach")
        .into_inner()
        .memory
        .expect("memory");
    assert_eq!(verbatim.content, "Her work email is dana@work.example.com");
    let r = ingest(&client, "u", vec![user(PII_MESSAGE)], false).await;
    assert!(
        stored(r.episodes[0].episode_id.clone())
            .await
            .contains("[EMAIL]"),
        "messages are still scrubbed"
    );
    admin
        .admin()
        .update_tenant(pb::UpdateTenantRequest {
            tenant_id: tenant.clone(),
            scrub_teach: Some(true),
            ..Default::default()
        })
        .await
        .expect("update");
    // Near misses stay: a number failing the Luhn check, a date, a version.
    for kept in ["4111 1111 1111 1112", "2024-03-05", "v1.2.3"] {
        assert!(text.contains(kept), "{kept} was scrubbed: {text}");
    }

    // Mask: a recognisable hint, still no raw value.
    let t = admin
        .admin()
        .update_tenant(pb::UpdateTenantRequest {
            tenant_id: tenant.clone(),
            pii_mode: pb::PiiMode::Mask as i32,
            ..Default::default()
        })
        .await
        .expect("update")
        .into_inner()
        .tenant
        .expect("tenant");
    assert_eq!(t.pii_mode, pb::PiiMode::Mask as i32);
    let r = ingest(&client, "u", vec![user(PII_MESSAGE)], false).await;
    let text = stored(r.episodes[0].episode_id.clone()).await;
    assert!(
        !text.contains("dana.k@example.com") && !text.contains("4111 1111 1111 1111"),
        "{text}"
    );
    assert!(
        text.contains("@example.com"),
        "mask keeps the domain: {text}"
    );

    // Off: stored as said.
    admin
        .admin()
        .update_tenant(pb::UpdateTenantRequest {
            tenant_id: tenant.clone(),
            pii_mode: pb::PiiMode::Off as i32,
            ..Default::default()
        })
        .await
        .expect("update");
    let r = ingest(&client, "u", vec![user(PII_MESSAGE)], false).await;
    assert_eq!(stored(r.episodes[0].episode_id.clone()).await, PII_MESSAGE);

    // Rate limits are bounded, and the error names the setting.
    let err = admin
        .admin()
        .update_tenant(pb::UpdateTenantRequest {
            tenant_id: tenant,
            ingest_rate_limit_mps: Some(2_000_000),
            ..Default::default()
        })
        .await
        .expect_err("rate limit out of bounds");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        violated_field(&err).as_deref(),
        Some("ingest_rate_limit_mps")
    );
}

fn llm_config(c: &mut Config, url: &str) {
    c.extractor = ExtractorKind::Llm;
    c.llm_base_url = url.into();
    c.llm_model = "fake-extractor".into();
    c.llm_api_key = Some("sk-fake".into());
    c.llm_timeout_ms = 400;
    c.llm_max_retries = 1;
    c.extraction_max_attempts = 3;
    c.extraction_retry_base_ms = 50;
    c.extraction_retry_max_ms = 200;
}

fn fact(content: &str, slot: Option<&str>) -> serde_json::Value {
    json!({ "action": "add", "kind": "fact", "content": content, "slot": slot,
            "subject": null, "importance": 0.7, "confidence": 0.9, "memory_id": null })
}

/// The fake's answers, by what the last turn says.
fn script(turn: &str, asked: usize) -> Reply {
    if turn.contains("garbage") {
        return Reply::Content(
            "Sure! Here are the memories: {\"memories\": [{\"content\": ".into(),
        );
    }
    if turn.contains("slow") && asked == 1 {
        return Reply::Delayed(Duration::from_secs(2), Box::new(Reply::memories(json!([]))));
    }
    if turn.contains("busy") && asked == 1 {
        return Reply::Status(429, Some(0.1));
    }
    if turn.contains("Acme") && turn.contains("no longer") {
        return Reply::memories(
            json!([{ "action": "delete", "kind": "fact", "content": "Works at Acme",
            "slot": "user.employer", "subject": null, "importance": 0.5, "confidence": 0.9, "memory_id": null }]),
        );
    }
    if turn.contains("Acme") {
        return Reply::memories(json!([fact("Works at Acme", Some("user.employer"))]));
    }
    if turn.contains("slow") {
        return Reply::memories(json!([fact("Plays the cello", Some("user.instrument"))]));
    }
    if turn.contains("busy") {
        return Reply::memories(json!([fact("Runs marathons", None)]));
    }
    if let Some(rest) = turn.strip_prefix("I like ") {
        let item = rest.trim_end_matches('.');
        return Reply::memories(json!([fact(
            &format!("Likes {item}"),
            Some(&format!("user.taste.{item}"))
        )]));
    }
    Reply::memories(json!([]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_llm_extractor_against_a_fake_openai_endpoint() {
    let fake = FakeLlm::start(script).await;
    let server = TestServer::start_with(|c| llm_config(c, &fake.url), None).await;
    let (tenant, client) = server.tenant("t", pb::KeyRole::Writer).await;

    // Good JSON: a memory whose history says the LLM decided it.
    let r = ingest(
        &client,
        "u",
        vec![user("I work at Acme now. My email is dana@example.com")],
        true,
    )
    .await;
    assert_eq!(r.extraction, pb::ExtractionState::Completed as i32);
    let acme = current(&client, "u").await;
    let acme = acme
        .iter()
        .find(|m| m.slot == "user.employer")
        .expect("employer");
    let history = client
        .memory()
        .history(pb::HistoryRequest {
            memory_id: acme.id.clone(),
        })
        .await
        .expect("history")
        .into_inner()
        .versions;
    assert_eq!(history[0].basis, pb::Basis::Llm as i32);

    // The request: structured output with the schema, the known memories, and no raw PII.
    let requests = fake.requests();
    let first = &requests[0];
    assert_eq!(first["model"], "fake-extractor");
    assert_eq!(first["response_format"]["type"], "json_schema");
    assert_eq!(first["response_format"]["json_schema"]["strict"], true);
    let all = serde_json::to_string(&requests).expect("json");
    assert!(
        !all.contains("dana@example.com"),
        "raw email sent to the LLM"
    );
    assert!(all.contains("[EMAIL]"));

    // Timeouts (the first answer comes after the client gave up) and 429 with Retry-After are
    // retried; the rest of the batch waits its turn and then goes through.
    let r = ingest(
        &client,
        "u",
        vec![
            user("I'm slow to answer but I play the cello."),
            user("I'm busy training, I run marathons."),
        ],
        true,
    )
    .await;
    assert_eq!(r.extraction, pb::ExtractionState::Completed as i32);
    assert!(fake.times_asked("slow") >= 2);
    assert!(fake.times_asked("busy") >= 2);
    let mems = current(&client, "u").await;
    assert!(mems.iter().any(|m| m.content == "Plays the cello"));
    assert!(mems.iter().any(|m| m.content == "Runs marathons"));

    // A delete intent tombstones the memory with the same identity.
    let r = ingest(&client, "u", vec![user("I no longer work at Acme.")], true).await;
    assert_eq!(r.extraction, pb::ExtractionState::Completed as i32);
    let err = client
        .memory()
        .get_memory(pb::GetMemoryRequest {
            memory_id: acme.id.clone(),
        })
        .await
        .expect_err("forgotten");
    assert_eq!(
        err.code(),
        tonic::Code::NotFound,
        "a tombstoned memory is hidden"
    );
    let (status, op, basis): (String, String, String) = sqlx::query_as(
        "SELECT m.status, v.op, v.basis FROM memories m JOIN memory_versions v ON v.memory_id = m.id \
         WHERE m.id = $1::uuid ORDER BY v.version DESC LIMIT 1",
    )
    .bind(&acme.id)
    .fetch_one(server.pool())
    .await
    .expect("versions");
    assert_eq!(
        (status.as_str(), op.as_str(), basis.as_str()),
        ("tombstoned", "tombstone", "llm")
    );

    // Malformed JSON: never "no memories" — retried, then dead-lettered with the raw reply,
    // while the user's later messages go on.
    let r = ingest(
        &client,
        "u",
        vec![user("here is some garbage"), user("I like tea.")],
        true,
    )
    .await;
    assert_eq!(
        r.extraction,
        pb::ExtractionState::Failed as i32,
        "one message was dead-lettered"
    );
    assert_eq!(fake.times_asked("garbage"), 3, "extraction_max_attempts");
    assert!(remembers(&client, "u", "Likes tea").await);
    let dead = dead_letters(&server, &tenant).await;
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!((d.job.as_str(), d.attempts), ("extract", 3));
    assert!(
        d.raw_reply.starts_with("Sure! Here are the memories"),
        "{d:?}"
    );
    assert!(d.error.contains("not valid JSON"), "{d:?}");
    assert!(d.payload_json.contains(&r.episodes[0].episode_id));

    // Replay after the model is fixed: extracted once, the queue is empty.
    fake.set_script(|turn, asked| {
        if turn.contains("garbage") {
            Reply::memories(json!([fact("Sorts recycling carefully", None)]))
        } else {
            script(turn, asked)
        }
    });
    let replayed = server
        .admin()
        .admin()
        .replay_dead_letters(pb::ReplayDeadLettersRequest {
            tenant_id: tenant.clone(),
            ids: vec![d.id.clone()],
        })
        .await
        .expect("replay")
        .into_inner();
    assert_eq!(replayed.replayed, 1);
    server.wait_extracted(Duration::from_secs(20)).await;
    assert!(remembers(&client, "u", "Sorts recycling carefully").await);
    let dead = dead_letters(&server, &tenant).await;
    assert!(dead.is_empty());

    // Another tenant's admin cannot see or replay them.
    let (other, _) = server.tenant("other", pb::KeyRole::Writer).await;
    let other_admin = server.client(Some(&server.key(&other, pb::KeyRole::Admin).await));
    let err = other_admin
        .admin()
        .list_dead_letters(pb::ListDeadLettersRequest {
            tenant_id: tenant,
            ..Default::default()
        })
        .await
        .expect_err("cross-tenant");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    // The pipeline's metrics are exported.
    let metrics = memoire_tests::http_get(server.http_addr, "/metrics").await;
    for name in [
        "memoire_jobs_total",
        "memoire_extraction_decisions_total",
        "memoire_resolver_score",
        "memoire_llm_request_seconds",
        "memoire_llm_tokens_total",
        "memoire_ingested_messages_total",
        "memoire_worker_tasks_total",
        "memoire_worker_task_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kill_switch_falls_back_to_create_only() {
    let server = TestServer::start().await;
    let (tenant, client) = server.tenant("t", pb::KeyRole::Writer).await;
    ingest(&client, "u", vec![user("I live in Boston.")], true).await;
    server
        .admin()
        .admin()
        .update_tenant(pb::UpdateTenantRequest {
            tenant_id: tenant,
            extraction_create_only: Some(true),
            ..Default::default()
        })
        .await
        .expect("update");
    ingest(
        &client,
        "u",
        vec![user("I moved to Denver. I no longer live in Boston.")],
        true,
    )
    .await;
    let mems = current(&client, "u").await;
    let boston = mems
        .iter()
        .find(|m| m.content.contains("Boston"))
        .expect("Boston untouched");
    assert_eq!(boston.slot, "user.home_city");
    let denver = mems
        .iter()
        .find(|m| m.content.contains("Denver"))
        .expect("Denver created");
    assert_eq!(denver.slot, "", "create-only: the taken slot is not reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn episodes_are_embedded_in_batches_and_recallable() {
    let server = TestServer::start().await;
    let (_, client) = server.tenant("t", pb::KeyRole::Writer).await;
    let messages: Vec<pb::Message> = (0..10)
        .map(|i| {
            user(&format!(
                "Random remark number {i} about the weather in Lisbon."
            ))
        })
        .collect();
    ingest(&client, "u", messages, true).await;
    server.wait_embedded(Duration::from_secs(20)).await;
    let model: String = sqlx::query_scalar("SELECT DISTINCT embedding_model FROM episodes")
        .fetch_one(server.pool())
        .await
        .expect("model");
    assert_eq!(model, "all-MiniLM-L6-v2");
    let r = client
        .memory()
        .recall(pb::RecallRequest {
            user_id: "u".into(),
            query: "Lisbon weather".into(),
            include_episodes: Some(true),
            ..Default::default()
        })
        .await
        .expect("recall")
        .into_inner();
    assert!(r.items.iter().any(|i| matches!(&i.item, Some(pb::recall_item::Item::Episode(e)) if e.content.contains("Lisbon"))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_json_mode_describes_the_schema_and_reads_fenced_replies() {
    let fake = FakeLlm::start(|_, _| {
        Reply::Content(format!(
            "```json\n{}\n```",
            json!({ "memories": [fact("Speaks Portuguese", Some("user.language.portuguese"))] })
        ))
    })
    .await;
    let server = TestServer::start_with(
        |c| {
            llm_config(c, &fake.url);
            c.llm_json_mode = memoire_config::LlmJsonMode::Object;
        },
        None,
    )
    .await;
    let (_, client) = server.tenant("t", pb::KeyRole::Writer).await;
    let r = ingest(&client, "u", vec![user("Eu falo português.")], true).await;
    assert_eq!(r.extraction, pb::ExtractionState::Completed as i32);
    assert!(remembers(&client, "u", "Speaks Portuguese").await);
    let request = &fake.requests()[0];
    assert_eq!(request["response_format"]["type"], "json_object");
    let prompt = request["messages"][1]["content"].as_str().expect("prompt");
    assert!(
        prompt.contains("JSON schema") && prompt.contains("\"memories\""),
        "{prompt}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_waiting_on_a_retry_do_not_hold_up_other_users() {
    // Twenty users whose first message fails (and then waits a minute before its retry), with a
    // good message behind it; one more user with only a good message. That user must not wait
    // for the others' backoff.
    let fake = FakeLlm::start(script).await;
    let server = TestServer::start_with(
        |c| {
            llm_config(c, &fake.url);
            c.extraction_retry_base_ms = 60_000;
            c.extraction_retry_max_ms = 60_000;
        },
        None,
    )
    .await;
    let (_, client) = server.tenant("t", pb::KeyRole::Writer).await;
    for u in 0..20 {
        ingest(
            &client,
            &format!("blocked{u}"),
            vec![user("here is some garbage"), user("I like tea.")],
            false,
        )
        .await;
    }
    ingest(&client, "free", vec![user("I like coffee.")], false).await;
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    while !remembers(&client, "free", "Likes coffee").await {
        assert!(
            tokio::time::Instant::now() < until,
            "a user with nothing failing waited behind users in backoff"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !remembers(&client, "blocked0", "Likes tea").await,
        "per-user order: the good message waits for the failing one before it"
    );
}
