//! Chat: the message stored and extracted, the prompt built from the memory as it then is, the
//! configured chat model asked with exactly that prompt, its reply stored as the assistant's turn.

use memoire_core::chat::MEMORY_HEADER;
use memoire_tests::fake_llm::{FakeLlm, Reply};
use memoire_tests::{TestServer, current_contents, proto as pb, violated_field};
use tonic::Code;

fn turn(content: &str) -> pb::ChatRequest {
    pb::ChatRequest {
        user_id: "u".into(),
        session_id: "s1".into(),
        content: content.into(),
        ..Default::default()
    }
}

async fn turns(client: &memoire_sdk::Client) -> Vec<(i32, String)> {
    client
        .memory()
        .list_episodes(pb::ListEpisodesRequest {
            user_id: "u".into(),
            session_id: "s1".into(),
            ..Default::default()
        })
        .await
        .expect("episodes")
        .into_inner()
        .episodes
        .into_iter()
        .map(|e| (e.role, e.content))
        .collect()
}

#[tokio::test]
async fn chat_builds_the_prompt_from_memory_asks_the_model_and_stores_both_turns() {
    let fake = FakeLlm::start(|_, _| Reply::Content("Enjoy Lisbon!".into())).await;
    let server = TestServer::start_with(
        |c| {
            c.chat_model = Some("fake-chat".into());
            c.llm_base_url = fake.url.clone();
        },
        None,
    )
    .await;
    let (tenant, client) = server.tenant("t", pb::KeyRole::Writer).await;
    let mut m = client.memory();
    m.teach(pb::TeachRequest {
        user_id: "u".into(),
        kind: pb::MemoryKind::Fact as i32,
        content: "Lives in Porto".into(),
        slot: Some("user.home_city".into()),
        ..Default::default()
    })
    .await
    .expect("teach");

    // A dry run, with a reader key: the prompt, nothing stored, no model asked.
    let reader = server.client(Some(&server.key(&tenant, pb::KeyRole::Reader).await));
    let dry = reader
        .memory()
        .chat(pb::ChatRequest {
            dry_run: true,
            ..turn("Plan my Saturday")
        })
        .await
        .expect("dry run")
        .into_inner();
    assert_eq!(dry.prompt.len(), 2, "{dry:?}");
    assert_eq!(dry.prompt[0].role, pb::MessageRole::System as i32);
    assert!(dry.prompt[0].content.starts_with(MEMORY_HEADER));
    assert!(dry.prompt[0].content.contains("Lives in Porto"));
    assert_eq!(
        (dry.prompt[1].role, dry.prompt[1].content.as_str()),
        (pb::MessageRole::User as i32, "Plan my Saturday")
    );
    assert!(dry.reply.is_empty() && dry.episode_id.is_empty());
    assert!(fake.requests().is_empty(), "a dry run asks no model");
    assert!(turns(&client).await.is_empty(), "a dry run stores nothing");
    // A reader cannot take a turn.
    let refused = reader
        .memory()
        .chat(turn("I moved to Lisbon"))
        .await
        .expect_err("a reader's turn");
    assert_eq!(refused.code(), Code::PermissionDenied);

    // A turn: the prompt from the memory before the message; the message stored and extracted
    // (Lisbon supersedes Porto) by the time the reply comes.
    let r = m
        .chat(pb::ChatRequest {
            message_id: Some("m-1".into()),
            ..turn("I moved to Lisbon")
        })
        .await
        .expect("chat")
        .into_inner();
    assert_eq!(r.extraction, pb::ExtractionState::Completed as i32);
    let system = &r.prompt[0].content;
    assert!(system.contains("Lives in Porto"), "{system}");
    assert!(
        !system.contains("I moved to Lisbon"),
        "the message is the user's turn, not memory: {system}"
    );
    assert_eq!(
        (r.reply.as_str(), r.model.as_str()),
        ("Enjoy Lisbon!", "fake-chat")
    );
    assert_eq!(current_contents(&client, "u").await, ["Lives in Lisbon"]);
    // The model got exactly that prompt.
    let asked = fake.requests();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0]["model"], "fake-chat");
    let sent: Vec<(String, String)> = asked[0]["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap_or_default().to_owned(),
                m["content"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        sent,
        [
            ("system".to_owned(), system.clone()),
            ("user".to_owned(), "I moved to Lisbon".to_owned())
        ]
    );
    // Both turns are in the session, in order.
    let user = pb::MessageRole::User as i32;
    let assistant = pb::MessageRole::Assistant as i32;
    assert_eq!(
        turns(&client).await,
        [
            (user, "I moved to Lisbon".to_owned()),
            (assistant, "Enjoy Lisbon!".to_owned())
        ]
    );
    assert!(!r.episode_id.is_empty() && !r.reply_episode_id.is_empty());

    // A retry with the same message id stores nothing new and returns the stored reply; the
    // model is not asked again.
    fake.set_script(|_, _| Reply::Content("A different answer".into()));
    let again = m
        .chat(pb::ChatRequest {
            message_id: Some("m-1".into()),
            ..turn("I moved to Lisbon")
        })
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(again.reply, "Enjoy Lisbon!");
    assert_eq!(
        (again.episode_id.as_str(), again.reply_episode_id.as_str()),
        (r.episode_id.as_str(), r.reply_episode_id.as_str())
    );
    assert_eq!(fake.requests().len(), 1);
    assert_eq!(turns(&client).await.len(), 2);

    // Bad input names the field and stores nothing.
    for (req, field) in [
        (turn("  "), "content"),
        (
            pb::ChatRequest {
                session_id: String::new(),
                ..turn("hi")
            },
            "session_id",
        ),
        (
            pb::ChatRequest {
                k: 100_000,
                ..turn("hi")
            },
            "k",
        ),
    ] {
        let e = m.chat(req).await.expect_err(field);
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert_eq!(violated_field(&e).as_deref(), Some(field));
    }
}

#[tokio::test]
async fn without_a_chat_model_chat_returns_the_prompt_and_no_reply() {
    let server = TestServer::start().await;
    let (_, client) = server.tenant("t", pb::KeyRole::Writer).await;
    let r = client
        .memory()
        .chat(turn("I live in Lisbon"))
        .await
        .expect("chat")
        .into_inner();
    assert_eq!(r.extraction, pb::ExtractionState::Completed as i32);
    assert!(r.reply.is_empty() && r.model.is_empty() && r.reply_episode_id.is_empty());
    // Nothing was remembered before the first message: the prompt is the message alone.
    assert_eq!(r.prompt.len(), 1, "{:?}", r.prompt);
    assert_eq!(turns(&client).await.len(), 1);
    // The next one gets what the first taught.
    let next = client
        .memory()
        .chat(turn("Where should I eat?"))
        .await
        .expect("chat")
        .into_inner();
    assert!(
        next.prompt[0].content.contains("Lives in Lisbon"),
        "{:?}",
        next.prompt
    );
}
