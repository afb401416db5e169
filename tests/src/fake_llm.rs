//! A local fake OpenAI-compatible chat endpoint (`POST /v1/chat/completions`): the one boundary
//! the tests fake. A script decides each reply from the request's last turn and how many times
//! that turn was asked about; every request body is kept for inspection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

/// What the fake answers.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A completion whose message content is this text (valid JSON or not).
    Content(String),
    /// An HTTP error status, with `Retry-After` seconds when given.
    Status(u16, Option<f64>),
    /// The reply after a pause (longer than the client's timeout, to test timeouts).
    Delayed(Duration, Box<Reply>),
}

impl Reply {
    /// A well-formed reply holding `memories`.
    pub fn memories(memories: Value) -> Reply {
        Reply::Content(json!({ "memories": memories }).to_string())
    }
}

type Script = dyn Fn(&str, usize) -> Reply + Send + Sync;

struct Inner {
    script: Box<Script>,
    asked: HashMap<String, usize>,
    requests: Vec<Value>,
}

/// The fake server.
#[derive(Clone)]
pub struct FakeLlm {
    /// Its base URL (`http://127.0.0.1:port/v1`).
    pub url: String,
    inner: Arc<Mutex<Inner>>,
}

/// The last turn of an extraction prompt (the text after "LAST <role>: ").
pub fn last_turn(prompt: &str) -> String {
    prompt
        .lines()
        .find_map(|l| l.strip_prefix("LAST ").and_then(|r| r.split_once(": ")))
        .map(|(_, text)| text.to_owned())
        .unwrap_or_default()
}

async fn chat(State(fake): State<FakeLlm>, Json(body): Json<Value>) -> Response {
    let prompt = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned();
    let turn = last_turn(&prompt);
    let reply = {
        let mut inner = fake.inner.lock().expect("lock");
        inner.requests.push(body);
        let n = inner.asked.entry(turn.clone()).or_insert(0);
        *n += 1;
        let n = *n;
        (inner.script)(&turn, n)
    };
    respond(reply).await
}

fn respond(reply: Reply) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>> {
    Box::pin(async move {
        match reply {
            Reply::Content(content) => Json(json!({
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "model": "fake",
                "choices": [{ "index": 0, "finish_reason": "stop",
                              "message": { "role": "assistant", "content": content } }],
                "usage": { "prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120 }
            }))
            .into_response(),
            Reply::Status(code, retry_after) => {
                let mut r = (
                    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    Json(json!({ "error": { "message": "fake error" } })),
                )
                    .into_response();
                if let Some(secs) = retry_after {
                    r.headers_mut().insert(
                        "retry-after",
                        secs.to_string().parse().expect("header value"),
                    );
                }
                r
            }
            Reply::Delayed(pause, then) => {
                tokio::time::sleep(pause).await;
                respond(*then).await
            }
        }
    })
}

impl FakeLlm {
    /// Starts the fake with `script(last_turn, times_asked) -> Reply`.
    pub async fn start(script: impl Fn(&str, usize) -> Reply + Send + Sync + 'static) -> FakeLlm {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let fake = FakeLlm {
            url: format!("http://{}/v1", listener.local_addr().expect("addr")),
            inner: Arc::new(Mutex::new(Inner {
                script: Box::new(script),
                asked: HashMap::new(),
                requests: Vec::new(),
            })),
        };
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        fake
    }

    /// Replaces the script.
    pub fn set_script(&self, script: impl Fn(&str, usize) -> Reply + Send + Sync + 'static) {
        self.inner.lock().expect("lock").script = Box::new(script);
    }

    /// Every request body received so far.
    pub fn requests(&self) -> Vec<Value> {
        self.inner.lock().expect("lock").requests.clone()
    }

    /// How many times a turn containing `needle` was asked about.
    pub fn times_asked(&self, needle: &str) -> usize {
        self.inner
            .lock()
            .expect("lock")
            .asked
            .iter()
            .filter(|(k, _)| k.contains(needle))
            .map(|(_, n)| *n)
            .sum()
    }
}
