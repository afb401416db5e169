//! The LLM extractor (and the Inspector's chat model, [`Responder`]): any OpenAI-compatible chat endpoint (`POST {base_url}/chat/completions`) —
//! OpenAI, OpenRouter, Ollama, vLLM, and the OpenAI-compatible endpoints of Anthropic and Gemini.
//!
//! It asks for a structured-output reply (`response_format: json_schema`, strict) or, for models
//! that only have a plain JSON mode, `json_object` with the schema spelled out in the prompt. The
//! reply is validated by [`memoire_core::llm::parse_reply`]; a reply that cannot be read is an
//! [`ExtractError`] that carries the raw text, so the worker retries it and finally dead-letters
//! it for inspection — never "no memories".

use std::time::{Duration, Instant};

use memoire_core::chat::{PromptMessage, Responder};
use memoire_core::embed::BoxFuture;
use memoire_core::extract::{
    ExtractError, Extraction, ExtractionInput, Extractor, Summarizer, Turn,
};
use memoire_core::llm;
use memoire_core::model::Basis;
use serde::Deserialize;
use serde_json::json;

use crate::http::post_json;

/// How the reply's format is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonMode {
    /// `response_format: {type: json_schema, strict: true}` (OpenAI structured outputs).
    Schema,
    /// `response_format: {type: json_object}`, the schema described in the prompt.
    Object,
}

/// Settings of the LLM extractor.
#[derive(Clone)]
pub struct ChatSettings {
    /// e.g. `https://api.openai.com/v1` or `http://127.0.0.1:11434/v1`.
    pub base_url: String,
    /// The model name.
    pub model: String,
    /// Bearer key; `None` for endpoints that need none.
    pub api_key: Option<String>,
    /// How the JSON reply is asked for.
    pub json_mode: JsonMode,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Retries on 429, 5xx, timeouts (honouring `Retry-After`), inside one extraction attempt.
    pub max_retries: u32,
    /// The longest memory content accepted from the model.
    pub max_content_bytes: usize,
}

impl std::fmt::Debug for ChatSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatSettings")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("json_mode", &self.json_mode)
            .finish()
    }
}

/// The LLM extractor.
#[derive(Debug, Clone)]
pub struct LlmExtractor {
    settings: ChatSettings,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct Completion {
    choices: Vec<Choice>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice {
    message: ReplyMessage,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ReplyMessage {
    content: Option<String>,
    refusal: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
}

impl LlmExtractor {
    /// An extractor for `settings`.
    pub fn new(settings: ChatSettings) -> memoire_core::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .build()
            .map_err(|e| memoire_core::Error::Provider(format!("http client: {e}")))?;
        Ok(LlmExtractor { settings, http })
    }

    fn body(&self, input: &ExtractionInput) -> serde_json::Value {
        let s = &self.settings;
        let response_format = match s.json_mode {
            JsonMode::Schema => json!({
                "type": "json_schema",
                "json_schema": { "name": "memories", "strict": true, "schema": llm::reply_schema() }
            }),
            JsonMode::Object => json!({ "type": "json_object" }),
        };
        json!({
            "model": s.model,
            "temperature": 0,
            "messages": [
                { "role": "system", "content": llm::INSTRUCTIONS },
                { "role": "user", "content": llm::user_prompt(input, s.json_mode == JsonMode::Object) },
            ],
            "response_format": response_format,
        })
    }

    /// Sends one chat request; the reply's text and its token usage.
    async fn ask(
        &self,
        body: serde_json::Value,
    ) -> Result<(String, Option<(u64, u64)>), ExtractError> {
        let s = &self.settings;
        let url = format!("{}/chat/completions", s.base_url.trim_end_matches('/'));
        let started = Instant::now();
        let outcome = post_json(
            &self.http,
            &url,
            s.api_key.as_deref(),
            &body,
            s.max_retries,
            "chat",
        )
        .await;
        metrics::histogram!("memoire_llm_request_seconds").record(started.elapsed().as_secs_f64());
        let resp = outcome.map_err(|e| ExtractError::new(format!("chat endpoint {url} {e}")))?;
        let raw = resp
            .text()
            .await
            .map_err(|e| ExtractError::new(format!("reading the chat reply failed: {e}")))?;
        let completion: Completion = serde_json::from_str(&raw).map_err(|e| ExtractError {
            message: format!("the chat endpoint's reply is not a chat completion: {e}"),
            raw_reply: Some(raw.clone()),
        })?;
        let tokens = completion.usage.map(|u| {
            metrics::counter!("memoire_llm_tokens_total", "kind" => "prompt")
                .increment(u.prompt_tokens);
            metrics::counter!("memoire_llm_tokens_total", "kind" => "completion")
                .increment(u.completion_tokens);
            (u.prompt_tokens, u.completion_tokens)
        });
        let choice = completion
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| ExtractError {
                message: "the chat reply has no choices".into(),
                raw_reply: Some(raw.clone()),
            })?;
        if let Some(refusal) = choice.message.refusal.filter(|r| !r.is_empty()) {
            return Err(ExtractError {
                message: "the model refused".into(),
                raw_reply: Some(refusal),
            });
        }
        let content = choice.message.content.unwrap_or_default();
        if choice.finish_reason.as_deref() == Some("length") {
            return Err(ExtractError {
                message: "the model's reply was cut off (finish_reason: length)".into(),
                raw_reply: Some(content),
            });
        }
        Ok((content, tokens))
    }

    async fn run(&self, input: &ExtractionInput) -> Result<Extraction, ExtractError> {
        let (content, tokens) = self.ask(self.body(input)).await?;
        let parsed = llm::parse_reply(&content, self.settings.max_content_bytes).map_err(|e| {
            ExtractError {
                message: e.0,
                raw_reply: Some(content.clone()),
            }
        })?;
        Ok(Extraction {
            candidates: parsed.candidates,
            rejected: parsed.rejected,
            tokens,
        })
    }

    async fn summary(&self, turns: &[Turn]) -> Result<String, ExtractError> {
        let body = json!({
            "model": self.settings.model,
            "temperature": 0,
            "messages": [
                { "role": "system", "content": llm::SUMMARY_INSTRUCTIONS },
                { "role": "user", "content": llm::summary_prompt(turns) },
            ],
        });
        let (content, _) = self.ask(body).await?;
        llm::parse_summary(&content, self.settings.max_content_bytes).map_err(|e| ExtractError {
            message: e.0,
            raw_reply: Some(content.clone()),
        })
    }
}

impl Responder for LlmExtractor {
    fn model(&self) -> &str {
        &self.settings.model
    }

    fn reply<'a>(
        &'a self,
        prompt: &'a [PromptMessage],
    ) -> BoxFuture<'a, memoire_core::Result<String>> {
        Box::pin(async move {
            let messages: Vec<serde_json::Value> = prompt
                .iter()
                .map(|m| json!({ "role": m.role.as_str(), "content": m.content }))
                .collect();
            let body = json!({ "model": self.settings.model, "messages": messages });
            let (content, _) = self
                .ask(body)
                .await
                .map_err(|e| memoire_core::Error::Provider(e.message))?;
            Ok(content)
        })
    }
}

impl Summarizer for LlmExtractor {
    fn summarize<'a>(&'a self, turns: &'a [Turn]) -> BoxFuture<'a, Result<String, ExtractError>> {
        Box::pin(self.summary(turns))
    }
}

impl Extractor for LlmExtractor {
    fn basis(&self) -> Basis {
        Basis::Llm
    }

    fn extract<'a>(
        &'a self,
        input: &'a ExtractionInput,
    ) -> BoxFuture<'a, Result<Extraction, ExtractError>> {
        Box::pin(self.run(input))
    }
}
