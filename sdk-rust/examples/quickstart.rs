//! The README's Rust example (kept compiling by `cargo clippy --all-targets`).
//! Run: `cargo run -p memoire-sdk --example quickstart` against `make run`.

use memoire_sdk::{Client, Error, pb};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let client = Client::builder("http://127.0.0.1:50051")
        .api_key("mem_...")
        .default_user("dana")
        .timeout(std::time::Duration::from_secs(2))
        .build()?; // never fails because the service is down: it connects on first use
    client
        .ingest(pb::IngestRequest {
            session_id: "s1".into(),
            messages: vec![pb::Message {
                role: pb::MessageRole::User as i32,
                content: "I just moved to Dallas.".into(),
                message_id: Some("s1/1".into()),
                ..Default::default()
            }],
            wait_for_extraction: true,
            ..Default::default()
        })
        .await?;
    let found = client
        .recall(pb::RecallRequest {
            query: "where does the user live?".into(),
            ..Default::default()
        })
        .await?;
    println!("{}", found.context);
    match client.get_memory("not-a-uuid").await {
        Err(Error::InvalidArgument { field, .. }) => println!("bad field: {field:?}"),
        other => println!("{other:?}"),
    }
    Ok(())
}
