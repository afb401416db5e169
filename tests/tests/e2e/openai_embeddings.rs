//! The server configured with an OpenAI-compatible embeddings endpoint (a local fake that returns
//! bag-of-words vectors): Teach stores that model's vectors, Recall searches with them.

use axum::routing::post;
use axum::{Json, Router};
use memoire_config::EmbeddingProvider;
use memoire_tests::{TestServer, proto as pb};
use serde_json::{Value, json};

const DIMS: usize = 384;

fn bag_of_words(text: &str) -> Vec<f32> {
    let mut v = vec![0f32; DIMS];
    for word in text
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() > 2)
    {
        let h = word.bytes().fold(1469598103934665603u64, |h, b| {
            (h ^ b as u64).wrapping_mul(1099511628211)
        });
        v[(h % DIMS as u64) as usize] += 1.0;
    }
    v
}

async fn embeddings(Json(body): Json<Value>) -> Json<Value> {
    let data: Vec<Value> = body["input"]
        .as_array()
        .map(|a| a.iter().enumerate().map(|(i, t)| json!({"index": i, "embedding": bag_of_words(t.as_str().unwrap_or(""))})).collect())
        .unwrap_or_default();
    Json(json!({"data": data, "model": body["model"]}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_compatible_model_embeds_teach_and_recall() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        axum::serve(
            listener,
            Router::new().route("/v1/embeddings", post(embeddings)),
        )
        .await
    });

    let server = TestServer::start_with(
        |c| {
            c.embedding_provider = EmbeddingProvider::Openai;
            c.embedding_base_url = url;
            c.embedding_model = "fake-bow-384".into();
            c.embedding_api_key = Some("sk-fake".into());
        },
        None,
    )
    .await;
    let (_, client) = server.tenant("t", pb::KeyRole::Writer).await;
    let mut m = client.memory();
    for content in [
        "Keeps bees on the rooftop",
        "Collects vintage typewriters",
        "Grows tomatoes in the garden",
    ] {
        let r = m
            .teach(pb::TeachRequest {
                user_id: "u".into(),
                kind: pb::MemoryKind::Fact as i32,
                content: content.into(),
                ..Default::default()
            })
            .await
            .expect("teach")
            .into_inner();
        assert_eq!(r.memory.expect("m").embedding_model, "fake-bow-384");
    }
    let r = m
        .recall(pb::RecallRequest {
            user_id: "u".into(),
            query: "typewriters".into(),
            k: 3,
            explain: true,
            ..Default::default()
        })
        .await
        .expect("recall")
        .into_inner();
    assert_eq!(r.embedding_model, "fake-bow-384");
    let Some(pb::recall_item::Item::Memory(top)) = &r.items[0].item else {
        panic!("a memory")
    };
    assert_eq!(top.content, "Collects vintage typewriters");
    let e = r.items[0].explain.expect("explain");
    assert_eq!(
        e.vector_rank, 1,
        "the fake model's vectors were searched: {e:?}"
    );
    // Its own HNSW index exists, beside the default model's.
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_indexes WHERE tablename = 'memories' AND indexdef LIKE '%fake-bow-384%'")
        .fetch_one(server.pool())
        .await
        .expect("indexes");
    assert_eq!(n, 1);
}
