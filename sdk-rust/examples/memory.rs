//! Every memory-service RPC through the typed client, in the order an application meets them.
//! Run against `make run`: `MEMOIRE_KEY=mem_... cargo run -p memoire-sdk --example memory`.

use memoire_sdk::{Client, Error, pb};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let key = std::env::var("MEMOIRE_KEY").unwrap_or_default();
    let client = Client::builder("http://127.0.0.1:50051")
        .api_key(key)
        .default_user("dana")
        .build()?;

    // Ingest: conversation turns; with a message id per turn a retry stores nothing twice.
    let ingested = client
        .ingest(pb::IngestRequest {
            session_id: "chat-1".into(),
            messages: vec![pb::Message {
                role: pb::MessageRole::User as i32,
                content: "Hi, I'm Dana. I live in San Francisco.".into(),
                message_id: Some("chat-1/1".into()),
                ..Default::default()
            }],
            wait_for_extraction: true,
            ..Default::default()
        })
        .await?;
    println!("ingest: {:?}", ingested.extraction());

    // Teach: a direct, labeled memory (a new value for a slot supersedes the old one).
    let taught = client
        .teach(pb::TeachRequest {
            kind: pb::MemoryKind::Fact as i32,
            content: "Lives in Dallas".into(),
            slot: Some("user.home_city".into()),
            ..Default::default()
        })
        .await?;
    let outcome = taught.outcome();
    let memory = taught.memory.expect("the memory written");
    println!("teach: {outcome:?} {}", memory.id);

    // Recall: query-aware retrieval, packed for a prompt.
    let recalled = client
        .recall(pb::RecallRequest {
            query: "where does the user live?".into(),
            k: 5,
            ..Default::default()
        })
        .await?;
    println!("recall:\n{}", recalled.context);

    // Conscious: the working memory at the start of a session.
    let conscious = client
        .conscious(pb::ConsciousRequest {
            session_id: Some("chat-1".into()),
            ..Default::default()
        })
        .await?;
    println!(
        "conscious ({:?}):\n{}",
        conscious.source(),
        conscious.context
    );

    // GetMemory, ListMemories, History.
    println!("get: {}", client.get_memory(&memory.id).await?.content);
    let page = client
        .list_memories(pb::ListMemoriesRequest {
            include_superseded: true,
            ..Default::default()
        })
        .await?;
    println!("list: {} memories", page.memories.len());
    for v in client.history(&memory.id).await? {
        println!("history: v{} {:?} ({:?})", v.version, v.op(), v.basis());
    }

    // Forget: a tombstone by id (mode PURGE erases; dry_run reports first).
    let forgotten = client
        .forget(pb::ForgetRequest {
            memory_ids: vec![memory.id],
            ..Default::default()
        })
        .await?;
    println!("forget: {} memories", forgotten.memories);
    Ok(())
}
