//! Any OpenAI-compatible embeddings endpoint (`POST {base_url}/embeddings`): OpenAI, Azure-style
//! gateways, OpenRouter, Ollama, vLLM, …

use std::time::Duration;

use memoire_core::embed::{BoxFuture, Embedder};
use memoire_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::http::post_json;

/// Settings of an OpenAI-compatible embedder.
#[derive(Clone)]
pub struct OpenAiSettings {
    /// e.g. `https://api.openai.com/v1` or `http://127.0.0.1:11434/v1`.
    pub base_url: String,
    /// The model name the endpoint knows (also the model id stored with vectors).
    pub model: String,
    /// Bearer key; `None` for endpoints that need none.
    pub api_key: Option<String>,
    /// Requested (and checked) dimension.
    pub dims: usize,
    /// Send `dimensions` in the request (OpenAI's text-embedding-3 models accept it; many
    /// servers reject it).
    pub send_dimensions: bool,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Retries on 429 and 5xx (honouring `Retry-After`, capped at 10 s).
    pub max_retries: u32,
}

impl std::fmt::Debug for OpenAiSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiSettings")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("dims", &self.dims)
            .finish()
    }
}

/// The OpenAI-compatible embedder.
#[derive(Debug, Clone)]
pub struct OpenAiEmbedder {
    settings: OpenAiSettings,
    http: reqwest::Client,
}

#[derive(Serialize)]
struct Request<'a> {
    model: &'a str,
    input: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    dimensions: Option<usize>,
    encoding_format: &'static str,
}

#[derive(Deserialize)]
struct Response {
    data: Vec<Datum>,
}

#[derive(Deserialize)]
struct Datum {
    index: usize,
    embedding: Vec<f32>,
}

/// Texts per request: OpenAI accepts 2048; smaller requests fail and retry cheaper.
const BATCH: usize = 256;

impl OpenAiEmbedder {
    /// An embedder for `settings`.
    pub fn new(settings: OpenAiSettings) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .build()
            .map_err(|e| Error::Provider(format!("http client: {e}")))?;
        Ok(OpenAiEmbedder { settings, http })
    }

    async fn request(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let s = &self.settings;
        let url = format!("{}/embeddings", s.base_url.trim_end_matches('/'));
        let body = Request {
            model: &s.model,
            input: texts,
            dimensions: s.send_dimensions.then_some(s.dims),
            encoding_format: "float",
        };
        let resp = post_json(
            &self.http,
            &url,
            s.api_key.as_deref(),
            &body,
            s.max_retries,
            "embeddings",
        )
        .await
        .map_err(|e| Error::Provider(format!("embeddings endpoint {url} {e}")))?;
        let parsed: Response = resp.json().await.map_err(|e| {
            Error::Provider(format!("embeddings endpoint sent an unreadable reply: {e}"))
        })?;
        self.check(parsed, texts.len())
    }

    fn check(&self, mut parsed: Response, expected: usize) -> Result<Vec<Vec<f32>>> {
        if parsed.data.len() != expected {
            return Err(Error::Provider(format!(
                "embeddings endpoint returned {} vectors for {expected} inputs",
                parsed.data.len()
            )));
        }
        parsed.data.sort_by_key(|d| d.index);
        parsed
            .data
            .into_iter()
            .enumerate()
            .map(|(i, d)| {
                if d.index != i {
                    return Err(Error::Provider(
                        "embeddings endpoint returned duplicate indexes".into(),
                    ));
                }
                if d.embedding.len() != self.settings.dims {
                    return Err(Error::Provider(format!(
                        "embeddings endpoint returned {} dimensions; embedding_dims is {}",
                        d.embedding.len(),
                        self.settings.dims
                    )));
                }
                Ok(normalize(d.embedding))
            })
            .collect()
    }
}

/// Unit length, so that cosine similarity and pgvector's cosine distance agree with local vectors.
fn normalize(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
    v
}

impl Embedder for OpenAiEmbedder {
    fn model_id(&self) -> &str {
        &self.settings.model
    }

    fn dims(&self) -> usize {
        self.settings.dims
    }

    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(texts.len());
            for chunk in texts.chunks(BATCH) {
                out.extend(self.request(chunk).await?);
            }
            Ok(out)
        })
    }
}
