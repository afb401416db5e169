//! One HTTP POST with the retry rules every OpenAI-compatible call shares: 429 and 5xx are
//! retried honouring `Retry-After` (capped at 10 s), timeouts and refused connections with
//! exponential backoff, up to `max_retries` times; anything else is returned as it came.

use std::time::Duration;

use serde::Serialize;

/// Why a POST produced no response worth reading.
#[derive(Debug)]
pub enum PostError {
    /// The request failed (after retries): timeout, connection, TLS.
    Transport(reqwest::Error),
    /// The endpoint answered a non-success status (after retries); with the body's start.
    Status(reqwest::StatusCode, String),
}

impl std::fmt::Display for PostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PostError::Transport(e) if e.is_timeout() => write!(f, "timed out: {e}"),
            PostError::Transport(e) => write!(f, "request failed: {e}"),
            PostError::Status(status, body) => write!(f, "answered {status}: {body}"),
        }
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200 * 2u64.pow(attempt.min(6)))
}

/// POSTs `body` as JSON to `url` (bearer `api_key` when given) and returns the successful
/// response. `what` names the endpoint in logs.
pub async fn post_json<B: Serialize + ?Sized>(
    http: &reqwest::Client,
    url: &str,
    api_key: Option<&str>,
    body: &B,
    max_retries: u32,
    what: &str,
) -> Result<reqwest::Response, PostError> {
    let mut attempt = 0;
    loop {
        let mut req = http.post(url).json(body);
        if let Some(key) = api_key {
            req = req.bearer_auth(key);
        }
        let outcome = req.send().await;
        let retry_after = match &outcome {
            Ok(r)
                if r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS
                    || r.status().is_server_error() =>
            {
                Some(
                    r.headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<f64>().ok())
                        .map(|secs| Duration::from_secs_f64(secs.clamp(0.0, 10.0)))
                        .unwrap_or_else(|| backoff(attempt)),
                )
            }
            Err(e) if e.is_timeout() || e.is_connect() => Some(backoff(attempt)),
            _ => None,
        };
        if let (Some(wait), true) = (retry_after, attempt < max_retries) {
            attempt += 1;
            tracing::warn!(
                endpoint = what,
                attempt,
                wait_ms = wait.as_millis() as u64,
                "retrying a provider request"
            );
            tokio::time::sleep(wait).await;
            continue;
        }
        let resp = outcome.map_err(PostError::Transport)?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(PostError::Status(status, text.chars().take(300).collect()));
        }
        return Ok(resp);
    }
}
