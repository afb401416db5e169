//! The OpenAI-compatible embedder against a local fake server: good replies, 429 with
//! Retry-After, wrong dimensions, errors and timeouts.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use memoire_core::embed::Embedder;
use memoire_providers::{OpenAiEmbedder, OpenAiSettings};
use serde_json::{Value, json};

#[derive(Clone, Copy)]
enum Mode {
    Good,
    RateLimitedOnce,
    WrongDims,
    ServerError,
    Slow,
}

/// What the fake server saw: the authorization header and the JSON body of each request.
type Seen = Arc<std::sync::Mutex<Vec<(Option<String>, Value)>>>;

#[derive(Clone)]
struct Fake {
    mode: Mode,
    calls: Arc<AtomicUsize>,
    seen: Seen,
}

async fn embeddings(
    State(f): State<Fake>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let n = f.calls.fetch_add(1, Ordering::SeqCst);
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    f.seen.lock().expect("lock").push((auth, body.clone()));
    let dims = match f.mode {
        Mode::WrongDims => 3,
        _ => 4,
    };
    match f.mode {
        Mode::RateLimitedOnce if n == 0 => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "0")],
                "slow down",
            )
                .into_response();
        }
        Mode::ServerError => return (StatusCode::BAD_REQUEST, "model not found").into_response(),
        Mode::Slow => tokio::time::sleep(Duration::from_secs(2)).await,
        _ => {}
    }
    let inputs = body["input"].as_array().cloned().unwrap_or_default();
    // Reverse order, as servers may: the client must sort by index.
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .rev()
        .map(|(i, t)| {
            let len = t.as_str().unwrap_or_default().len() as f32;
            let mut v = vec![0.0f32; dims];
            v[0] = len;
            v[1] = 1.0;
            json!({"object": "embedding", "index": i, "embedding": v})
        })
        .collect();
    Json(json!({"object": "list", "data": data, "model": body["model"]})).into_response()
}

async fn serve(mode: Mode) -> (String, Fake) {
    let fake = Fake {
        mode,
        calls: Arc::new(AtomicUsize::new(0)),
        seen: Arc::default(),
    };
    let app = Router::new()
        .route("/v1/embeddings", post(embeddings))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/v1"), fake)
}

fn settings(base_url: String) -> OpenAiSettings {
    OpenAiSettings {
        base_url,
        model: "text-embedding-fake".into(),
        api_key: Some("sk-test".into()),
        dims: 4,
        send_dimensions: true,
        timeout: Duration::from_millis(500),
        max_retries: 2,
    }
}

fn texts() -> Vec<String> {
    vec!["a".into(), "bbb".into()]
}

#[tokio::test]
async fn embeds_in_order_normalized_with_the_key_and_model() {
    let (url, fake) = serve(Mode::Good).await;
    let e = OpenAiEmbedder::new(settings(url)).expect("embedder");
    let v = e.embed(&texts()).await.expect("embed");
    assert_eq!(v.len(), 2);
    // [len, 1, 0, 0] normalized: "a" → [1,1]/√2, "bbb" → [3,1]/√10.
    assert!((v[0][0] - 1.0 / 2f32.sqrt()).abs() < 1e-6);
    assert!((v[1][0] - 3.0 / 10f32.sqrt()).abs() < 1e-6);
    let seen = fake.seen.lock().expect("lock");
    assert_eq!(seen[0].0.as_deref(), Some("Bearer sk-test"));
    assert_eq!(seen[0].1["model"], "text-embedding-fake");
    assert_eq!(seen[0].1["dimensions"], 4);
    assert_eq!(e.model_id(), "text-embedding-fake");
}

#[tokio::test]
async fn retries_after_a_429() {
    let (url, fake) = serve(Mode::RateLimitedOnce).await;
    let e = OpenAiEmbedder::new(settings(url)).expect("embedder");
    e.embed(&texts()).await.expect("second attempt succeeds");
    assert_eq!(fake.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn wrong_dimensions_errors_and_timeouts_are_reported() {
    let (url, _) = serve(Mode::WrongDims).await;
    let err = OpenAiEmbedder::new(settings(url))
        .expect("e")
        .embed(&texts())
        .await
        .expect_err("dims");
    assert!(err.to_string().contains("dimensions"), "{err}");

    let (url, _) = serve(Mode::ServerError).await;
    let err = OpenAiEmbedder::new(settings(url))
        .expect("e")
        .embed(&texts())
        .await
        .expect_err("400");
    assert!(
        err.to_string().contains("400") && err.to_string().contains("model not found"),
        "{err}"
    );

    let (url, fake) = serve(Mode::Slow).await;
    let s = OpenAiSettings {
        max_retries: 0,
        ..settings(url)
    };
    let err = OpenAiEmbedder::new(s)
        .expect("e")
        .embed(&texts())
        .await
        .expect_err("timeout");
    assert!(err.to_string().contains("timed out"), "{err}");
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1);

    let err = OpenAiEmbedder::new(settings("http://127.0.0.1:9/v1".into()))
        .expect("e")
        .embed(&texts())
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("failed"), "{err}");
}
