//! Mémoire's configuration: one typed struct, every setting named once in [`SETTINGS`] with its
//! default and its `MEMOIRE_*` variable, layered defaults → TOML file → environment → flags, and
//! validated at start-up with a message that names the setting and how to fix it.
//!
//! Tests build a [`Config`] value directly; nothing here reads the environment except
//! [`Config::load`].

mod reference;

pub use reference::reference_markdown;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The prefix of every environment variable.
pub const ENV_PREFIX: &str = "MEMOIRE_";

/// The URL schemes `redis_url` may use: one server, a Redis Cluster, each with or without TLS.
const REDIS_SCHEMES: &[&str] = &[
    "redis://",
    "rediss://",
    "redis-cluster://",
    "rediss-cluster://",
    "unix://",
];

/// Every setting, with what it does. The environment variable is `MEMOIRE_` + the key in upper
/// case; the file key is the key itself. (A test checks this table against [`Config`].)
pub const SETTINGS: &[(&str, &str)] = &[
    ("grpc_addr", "address the gRPC server listens on"),
    (
        "tls_cert_path",
        "PEM certificate chain the gRPC port serves TLS with (with tls_key_path; unset: plaintext)",
    ),
    ("tls_key_path", "PEM private key of tls_cert_path"),
    (
        "tls_client_ca_path",
        "PEM CA certificates: when set, the gRPC port requires client certificates they issued (mTLS)",
    ),
    (
        "http_addr",
        "address of the HTTP server for /metrics, /healthz and /readyz (and, with ui_enabled, the Inspector and gRPC-Web)",
    ),
    (
        "ui_enabled",
        "serve the Memory Inspector at /ui/ and memoire.v1 over gRPC-Web (API keys required as on the gRPC port) on http_addr; only when the gRPC port is plaintext (with TLS they stay off: the HTTP port has no TLS)",
    ),
    (
        "database_url",
        "PostgreSQL connection URL (the source of truth)",
    ),
    (
        "database_max_connections",
        "size of the Postgres connection pool",
    ),
    (
        "database_acquire_timeout_ms",
        "how long a request waits for a pooled connection before UNAVAILABLE",
    ),
    (
        "database_row_level_security",
        "scope every connection to the caller's tenant for Postgres row-level security (a second wall behind the queries' own filters; its SET, one round trip per connection taken, replaces the pool's own liveness check). Off: connections see every tenant from their start-up options, for poolers that do not keep session settings (see docs/operations.md)",
    ),
    (
        "database_read_url",
        "PostgreSQL URL of a streaming replica (hot standby) for reads: Recall, GetMemory, ListMemories and History go there once it has replayed this process's last write for the caller's tenant; writes, Conscious and everything else stay on database_url. Unset: all on database_url (see docs/scaling.md)",
    ),
    (
        "database_read_max_lag_ms",
        "a read replica last seen caught up with the primary longer ago than this is not read from",
    ),
    (
        "redis_url",
        "Redis URL (working memory, caches, rate limits; losing it loses nothing): `redis://` (or `rediss://`) for one server, `redis-cluster://host:port?node=host2:port2&node=…` for a Redis Cluster (see docs/operations.md)",
    ),
    (
        "admin_key",
        "bootstrap admin API key (secret; at least 16 characters); unset closes the admin service",
    ),
    (
        "page_token_secret",
        "key that page tokens are sealed with (secret; at least 16 characters); set the same on every replica — unset, each process makes its own and tokens do not survive a restart",
    ),
    (
        "dev_mode",
        "accept requests without an API key, as the admin of a single tenant named 'dev' (local use only)",
    ),
    (
        "migrate_on_start",
        "apply database migrations when the server starts",
    ),
    (
        "embedding_provider",
        "'local' (in-process model, no API key) or 'openai' (any OpenAI-compatible endpoint)",
    ),
    (
        "embedding_model",
        "id of the embedding model; stored with every vector (for 'openai': the model name)",
    ),
    (
        "embedding_dims",
        "dimension of the embedding model's vectors",
    ),
    (
        "embedding_model_dir",
        "directory of the local model (config.json, tokenizer.json, model.safetensors)",
    ),
    (
        "embedding_base_url",
        "base URL of the OpenAI-compatible embeddings endpoint (e.g. https://api.openai.com/v1)",
    ),
    (
        "embedding_api_key",
        "API key of the embeddings endpoint (secret)",
    ),
    (
        "embedding_send_dimensions",
        "send `dimensions` in embedding requests (OpenAI text-embedding-3 models)",
    ),
    ("embedding_timeout_ms", "timeout of one embeddings request"),
    (
        "query_cache_ttl_secs",
        "how long a query's embedding stays cached in Redis (0: no cache)",
    ),
    (
        "recall_default_k",
        "items Recall returns when the request does not say",
    ),
    (
        "recall_default_token_budget",
        "token budget of the packed context when the request does not say",
    ),
    (
        "recall_candidates",
        "candidates taken from each of full-text and vector search before fusion (a larger k takes k: a Recall's first items are the same for every k up to this)",
    ),
    (
        "recall_fusion",
        "'weighted' (normalized BM25 and cosine scores) or 'rrf' (reciprocal rank fusion)",
    ),
    (
        "recall_subject_weight",
        "penalty for memories about someone (their subject) the query does not name",
    ),
    (
        "recall_text_weight",
        "weight of full-text (BM25) relevance in fusion",
    ),
    (
        "recall_vector_weight",
        "weight of vector (cosine) relevance in fusion",
    ),
    (
        "recall_speaker_weight",
        "boost of a conversation turn whose speaker, or a memory whose subject, the query names: x(1 + w)",
    ),
    (
        "recall_context_weight",
        "weight of an episode's neighbouring turns' relevance (its context) in its score",
    ),
    (
        "recall_rrf_k",
        "the k of reciprocal rank fusion, 1/(k + rank)",
    ),
    (
        "recall_importance_weight",
        "how much importance scales relevance: x(1 + w(importance - 0.5))",
    ),
    (
        "recall_confidence_weight",
        "exponent of confidence applied to relevance (0: ignore confidence)",
    ),
    (
        "recall_recency_weight",
        "additive weight of recency (a gentle tie-breaker)",
    ),
    (
        "recall_recency_half_life_days",
        "age at which recency counts half",
    ),
    (
        "recall_exact_search_max_scope",
        "scopes with at most this many vectors are searched exactly; larger ones use HNSW",
    ),
    (
        "recall_exact_text_max_scope",
        "scopes with at most this many documents get the exact full-text top; in larger ones a query of common words takes the best of its terms' top postings instead of scoring them all",
    ),
    (
        "recall_vector_cache_mb",
        "megabytes of the exactly searched scopes' vectors a server keeps in memory to search them there (0: every exact search reads them in Postgres)",
    ),
    (
        "recall_hnsw_ef_search",
        "hnsw.ef_search for approximate vector search (iterative scans on)",
    ),
    (
        "log",
        "log filter, in tracing's EnvFilter syntax (e.g. 'info,memoire_server=debug'); RUST_LOG overrides it",
    ),
    ("log_format", "'text' or 'json'"),
    (
        "otlp_endpoint",
        "OpenTelemetry collector (OTLP over gRPC, e.g. http://127.0.0.1:4317) to send traces to: a span per RPC, per Recall stage, per extraction step and per job (INFO spans: the `log` filter must admit them, as its default does); unset (the default): no traces, nothing sent anywhere",
    ),
    (
        "otlp_sample_ratio",
        "share of new traces recorded (0 < r <= 1); a call whose caller's traceparent says sampled is always recorded",
    ),
    (
        "max_request_bytes",
        "largest gRPC request message, in bytes",
    ),
    (
        "max_content_bytes",
        "largest memory or message content, in bytes",
    ),
    ("max_batch_ids", "most memory ids in one Forget"),
    ("max_batch_messages", "most messages in one Ingest"),
    ("max_page_size", "largest page of ListMemories"),
    ("max_query_bytes", "largest Recall query, in bytes"),
    ("max_k", "most items one Recall returns"),
    (
        "max_extraction_backlog",
        "messages a tenant may have waiting for extraction; past it Ingest answers RESOURCE_EXHAUSTED with a retry delay (0: no bound)",
    ),
    (
        "max_token_budget",
        "largest token budget of a packed context",
    ),
    ("request_timeout_ms", "server-side deadline of one RPC"),
    ("max_concurrent_requests", "RPCs served at once; more wait"),
    (
        "worker_embedded",
        "run the background worker inside the server process",
    ),
    (
        "expiry_sweep_interval_secs",
        "how often the worker marks memories past their expiry as expired",
    ),
    (
        "shutdown_grace_secs",
        "how long shutdown waits for in-flight requests and jobs",
    ),
    (
        "extractor",
        "'rules' (built-in, offline) or 'llm' (an OpenAI-compatible chat model)",
    ),
    (
        "llm_base_url",
        "base URL of the OpenAI-compatible chat endpoint (e.g. http://127.0.0.1:11434/v1)",
    ),
    (
        "llm_model",
        "the chat model extraction asks (required with extractor = 'llm')",
    ),
    ("llm_api_key", "API key of the chat endpoint (secret)"),
    (
        "chat_model",
        "the chat model that answers the Chat RPC (the Inspector's chat), at llm_base_url with llm_api_key; unset: Chat returns the prompt and no reply",
    ),
    (
        "llm_json_mode",
        "'schema' (structured outputs, strict JSON schema) or 'object' (plain JSON mode)",
    ),
    ("llm_timeout_ms", "timeout of one chat request"),
    (
        "llm_max_retries",
        "retries of one chat request on 429 / 5xx / timeouts (honouring Retry-After)",
    ),
    (
        "extraction_context_turns",
        "earlier turns of the session the LLM extractor sees",
    ),
    (
        "extraction_known_memories",
        "related current memories the LLM extractor sees (so it can update or delete them)",
    ),
    (
        "extraction_max_attempts",
        "attempts before an extraction or embedding job goes to the dead-letter queue",
    ),
    (
        "extraction_retry_base_ms",
        "delay before the first retry; each next retry doubles it",
    ),
    ("extraction_retry_max_ms", "longest delay between retries"),
    (
        "resolver_update_threshold",
        "similarity at or above which an extracted memory updates an existing one",
    ),
    (
        "resolver_merge_threshold",
        "similarity at or above which it merges into one with partial identity overlap",
    ),
    (
        "worker_http_addr",
        "address of memoire-worker's /metrics, /healthz and /readyz (the server's worker uses http_addr)",
    ),
    (
        "worker_concurrency",
        "users whose episodes one worker extracts at once",
    ),
    (
        "worker_poll_interval_ms",
        "how often the worker's reconciler scans for pending episodes (notifications wake it sooner)",
    ),
    ("embed_batch_size", "episodes embedded in one model call"),
    (
        "conscious_max_essential",
        "most essential memories per user and namespace (Conscious, and the optimizer's bound)",
    ),
    (
        "conscious_recent_turns",
        "most recent turns of the session Conscious returns",
    ),
    (
        "conscious_session_ttl_secs",
        "turns older than this are not part of the session's working set",
    ),
    (
        "conscious_cache_ttl_secs",
        "how long a Conscious entry lives in Redis (every write invalidates it anyway)",
    ),
    (
        "decay_half_life_days",
        "confidence halves over this many days without an update or a recall (pinned memories never decay)",
    ),
    (
        "decay_floor",
        "memories whose confidence decays below this leave recall and Conscious (history keeps them)",
    ),
    (
        "optimize_schedule",
        "when the worker recomputes essential memories: a cron expression in UTC with seconds (sec min hour day-of-month month day-of-week); empty: only when triggered",
    ),
    (
        "decay_schedule",
        "when the worker applies decay: a cron expression in UTC with seconds (sec min hour day-of-month month day-of-week); empty: only when triggered",
    ),
    (
        "reflect_schedule",
        "when the worker summarizes quiet sessions: a cron expression in UTC with seconds (sec min hour day-of-month month day-of-week); empty: only when triggered",
    ),
    (
        "retention_schedule",
        "when the worker applies retention policies: a cron expression in UTC with seconds (sec min hour day-of-month month day-of-week); empty: only when triggered",
    ),
    (
        "reembed_schedule",
        "when the worker looks for vectors of another model to re-embed: a cron expression in UTC with seconds (sec min hour day-of-month month day-of-week); empty: only when triggered",
    ),
    (
        "reflect_min_turns",
        "sessions with at least this many turns get a summary",
    ),
    (
        "reflect_idle_secs",
        "a session is summarized once it has been quiet this long",
    ),
    (
        "reflect_max_turns",
        "most turns quoted in one session summary",
    ),
];

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where embeddings come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingProvider {
    /// The in-process model in `embedding_model_dir`.
    Local,
    /// An OpenAI-compatible endpoint at `embedding_base_url`.
    Openai,
}

/// How Recall fuses full-text and vector results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fusion {
    /// Normalized weighted sum of scores.
    Weighted,
    /// Reciprocal rank fusion.
    Rrf,
}

/// Which extractor turns episodes into memories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExtractorKind {
    /// The built-in deterministic rules.
    Rules,
    /// An OpenAI-compatible chat model.
    Llm,
}

/// How the LLM's JSON reply is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LlmJsonMode {
    /// Structured outputs with a strict JSON schema.
    Schema,
    /// Plain JSON mode; the schema is described in the prompt.
    Object,
}

/// The configuration. See [`SETTINGS`] for what each field does.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Config {
    pub grpc_addr: SocketAddr,
    pub tls_cert_path: Option<PathBuf>,
    pub tls_key_path: Option<PathBuf>,
    pub tls_client_ca_path: Option<PathBuf>,
    pub http_addr: SocketAddr,
    pub ui_enabled: bool,
    pub database_url: String,
    pub database_max_connections: u32,
    pub database_acquire_timeout_ms: u64,
    pub database_row_level_security: bool,
    pub database_read_url: Option<String>,
    pub database_read_max_lag_ms: u64,
    pub redis_url: String,
    pub admin_key: Option<String>,
    pub page_token_secret: Option<String>,
    pub dev_mode: bool,
    pub migrate_on_start: bool,
    pub embedding_provider: EmbeddingProvider,
    pub embedding_model: String,
    pub embedding_dims: u32,
    pub embedding_model_dir: PathBuf,
    pub embedding_base_url: String,
    pub embedding_api_key: Option<String>,
    pub embedding_send_dimensions: bool,
    pub embedding_timeout_ms: u64,
    pub query_cache_ttl_secs: u64,
    pub recall_default_k: usize,
    pub recall_default_token_budget: usize,
    pub recall_candidates: usize,
    pub recall_fusion: Fusion,
    pub recall_subject_weight: f32,
    pub recall_text_weight: f32,
    pub recall_vector_weight: f32,
    pub recall_context_weight: f32,
    pub recall_speaker_weight: f32,
    pub recall_rrf_k: f32,
    pub recall_importance_weight: f32,
    pub recall_confidence_weight: f32,
    pub recall_recency_weight: f32,
    pub recall_recency_half_life_days: f32,
    pub recall_exact_search_max_scope: u64,
    pub recall_exact_text_max_scope: u64,
    pub recall_vector_cache_mb: u64,
    pub recall_hnsw_ef_search: u32,
    pub log: String,
    pub log_format: LogFormat,
    pub otlp_endpoint: Option<String>,
    pub otlp_sample_ratio: f64,
    pub max_request_bytes: usize,
    pub max_content_bytes: usize,
    pub max_batch_ids: usize,
    pub max_batch_messages: usize,
    pub max_page_size: usize,
    pub max_query_bytes: usize,
    pub max_k: usize,
    pub max_extraction_backlog: u64,
    pub max_token_budget: usize,
    pub request_timeout_ms: u64,
    pub max_concurrent_requests: usize,
    pub worker_embedded: bool,
    pub expiry_sweep_interval_secs: u64,
    pub shutdown_grace_secs: u64,
    pub extractor: ExtractorKind,
    pub llm_base_url: String,
    pub llm_model: String,
    pub chat_model: Option<String>,
    pub llm_api_key: Option<String>,
    pub llm_json_mode: LlmJsonMode,
    pub llm_timeout_ms: u64,
    pub llm_max_retries: u32,
    pub extraction_context_turns: u32,
    pub extraction_known_memories: u32,
    pub extraction_max_attempts: u32,
    pub extraction_retry_base_ms: u64,
    pub extraction_retry_max_ms: u64,
    pub resolver_update_threshold: f32,
    pub resolver_merge_threshold: f32,
    pub worker_http_addr: SocketAddr,
    pub worker_concurrency: usize,
    pub worker_poll_interval_ms: u64,
    pub embed_batch_size: u32,
    pub conscious_max_essential: usize,
    pub conscious_recent_turns: usize,
    pub conscious_session_ttl_secs: u64,
    pub conscious_cache_ttl_secs: u64,
    pub decay_half_life_days: f32,
    pub decay_floor: f32,
    pub optimize_schedule: String,
    pub decay_schedule: String,
    pub reflect_schedule: String,
    pub retention_schedule: String,
    pub reembed_schedule: String,
    pub reflect_min_turns: u32,
    pub reflect_idle_secs: u64,
    pub reflect_max_turns: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 9464)),
            ui_enabled: true,
            database_url: "postgres://memoire:memoire@127.0.0.1:5432/memoire".into(),
            database_max_connections: 16,
            database_acquire_timeout_ms: 5_000,
            database_row_level_security: true,
            database_read_url: None,
            database_read_max_lag_ms: 5_000,
            redis_url: "redis://127.0.0.1:6379".into(),
            admin_key: None,
            page_token_secret: None,
            dev_mode: false,
            migrate_on_start: true,
            embedding_provider: EmbeddingProvider::Local,
            embedding_model: "all-MiniLM-L6-v2".into(),
            embedding_dims: 384,
            embedding_model_dir: PathBuf::from(".models/all-MiniLM-L6-v2"),
            embedding_base_url: "https://api.openai.com/v1".into(),
            embedding_api_key: None,
            tls_cert_path: None,
            tls_key_path: None,
            tls_client_ca_path: None,
            embedding_send_dimensions: false,
            embedding_timeout_ms: 10_000,
            query_cache_ttl_secs: 7 * 24 * 3600,
            recall_default_k: 10,
            recall_default_token_budget: 512,
            recall_candidates: 50,
            recall_fusion: Fusion::Weighted,
            recall_subject_weight: 0.3,
            recall_text_weight: 0.25,
            recall_vector_weight: 0.75,
            recall_context_weight: 0.2,
            recall_speaker_weight: 1.5,
            recall_rrf_k: 60.0,
            recall_importance_weight: 0.2,
            recall_confidence_weight: 1.0,
            recall_recency_weight: 0.01,
            recall_recency_half_life_days: 30.0,
            recall_exact_search_max_scope: 10_000,
            recall_exact_text_max_scope: 20_000,
            recall_vector_cache_mb: 256,
            recall_hnsw_ef_search: 100,
            log: "info,sqlx=warn".into(),
            log_format: LogFormat::Text,
            otlp_endpoint: None,
            otlp_sample_ratio: 1.0,
            max_request_bytes: 4 * 1024 * 1024,
            max_content_bytes: 16 * 1024,
            max_batch_ids: 1000,
            max_batch_messages: 100,
            max_page_size: 500,
            max_query_bytes: 4096,
            max_k: 100,
            // About an hour of a worker's extraction at this machine's measured drain: generous
            // enough for an import, and a bound on work acknowledged but not done for hours.
            max_extraction_backlog: 1_000_000,
            max_token_budget: 32_000,
            request_timeout_ms: 30_000,
            max_concurrent_requests: 512,
            worker_embedded: true,
            expiry_sweep_interval_secs: 60,
            shutdown_grace_secs: 30,
            extractor: ExtractorKind::Rules,
            llm_base_url: "https://api.openai.com/v1".into(),
            llm_model: String::new(),
            chat_model: None,
            llm_api_key: None,
            llm_json_mode: LlmJsonMode::Schema,
            llm_timeout_ms: 30_000,
            llm_max_retries: 2,
            extraction_context_turns: 6,
            extraction_known_memories: 20,
            extraction_max_attempts: 5,
            extraction_retry_base_ms: 1_000,
            extraction_retry_max_ms: 300_000,
            resolver_update_threshold: 0.80,
            resolver_merge_threshold: 0.55,
            worker_http_addr: SocketAddr::from(([127, 0, 0, 1], 9465)),
            worker_concurrency: 2,
            worker_poll_interval_ms: 1_000,
            embed_batch_size: 64,
            conscious_max_essential: 24,
            conscious_recent_turns: 8,
            conscious_session_ttl_secs: 3_600,
            conscious_cache_ttl_secs: 3_600,
            decay_half_life_days: 180.0,
            decay_floor: 0.2,
            optimize_schedule: "0 0 * * * *".into(),
            decay_schedule: "0 15 * * * *".into(),
            reflect_schedule: "0 */10 * * * *".into(),
            retention_schedule: "0 30 * * * *".into(),
            reembed_schedule: "0 */5 * * * *".into(),
            reflect_min_turns: 8,
            reflect_idle_secs: 1_800,
            reflect_max_turns: 8,
        }
    }
}

/// Hides the password of a URL (`scheme://user:***@host/...`).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

// Secrets never reach logs: Debug redacts them.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// A configuration problem, naming the setting, its variable, and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub Vec<String>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration:")?;
        for p in &self.0 {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

fn setting(key: &str) -> String {
    format!("`{key}` ({ENV_PREFIX}{})", key.to_uppercase())
}

/// Flags shared by `memoire-server` and `memoire-worker`. A flag beats the environment, which
/// beats the file, which beats the defaults.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Flags {
    /// TOML file with settings (keys as in the configuration reference).
    #[arg(long, env = "MEMOIRE_CONFIG", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// gRPC listen address.
    #[arg(long, value_name = "ADDR", global = true)]
    pub grpc_addr: Option<String>,
    /// HTTP (metrics, health) listen address.
    #[arg(long, value_name = "ADDR", global = true)]
    pub http_addr: Option<String>,
    /// PostgreSQL URL.
    #[arg(long, value_name = "URL", global = true)]
    pub database_url: Option<String>,
    /// Redis URL.
    #[arg(long, value_name = "URL", global = true)]
    pub redis_url: Option<String>,
    /// Log filter.
    #[arg(long, value_name = "FILTER", global = true)]
    pub log: Option<String>,
    /// Any setting, as KEY=VALUE (repeatable), e.g. `--set max_k=50`.
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    pub set: Vec<String>,
}

impl Config {
    /// Loads defaults, then `flags.config` (a TOML file), then `MEMOIRE_*` variables, then flags;
    /// and validates the result.
    pub fn load(flags: &Flags) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = &flags.config {
            fig = fig.merge(Toml::file_exact(path));
            if !path.exists() {
                return Err(ConfigError(vec![format!(
                    "the configuration file {} does not exist (from --config or {ENV_PREFIX}CONFIG)",
                    path.display()
                )]));
            }
        }
        let keys: Vec<&str> = SETTINGS.iter().map(|(k, _)| *k).collect();
        // Names only (figment reads the values): a variable that is not UTF-8 is not ours.
        let stale: Vec<String> = std::env::vars_os()
            .filter_map(|(name, _)| name.into_string().ok())
            .filter_map(|name| {
                name.starts_with(ENV_PREFIX)
                    .then(|| renamed(&name))
                    .flatten()
            })
            .collect();
        if !stale.is_empty() {
            return Err(ConfigError(stale));
        }
        fig = fig.merge(Env::prefixed(ENV_PREFIX).only(&keys));
        for (key, value) in [
            ("grpc_addr", &flags.grpc_addr),
            ("http_addr", &flags.http_addr),
            ("database_url", &flags.database_url),
            ("redis_url", &flags.redis_url),
            ("log", &flags.log),
        ] {
            if let Some(v) = value {
                fig = fig.merge(Serialized::default(key, v));
            }
        }
        for kv in &flags.set {
            let Some((key, value)) = kv.split_once('=') else {
                return Err(ConfigError(vec![format!("--set '{kv}' is not KEY=VALUE")]));
            };
            let key = key.trim();
            if let Some(why) = renamed(key) {
                return Err(ConfigError(vec![format!("--set: {why}")]));
            }
            if !keys.contains(&key) {
                return Err(ConfigError(vec![format!("--set: unknown setting '{key}'")]));
            }
            // A TOML value when it parses as one (numbers, booleans), else a string.
            let doc = format!("{key} = {value}");
            let doc = if doc.parse::<toml_probe::Doc>().is_ok() {
                doc
            } else {
                format!("{key} = {}", toml_probe::quote(value))
            };
            fig = fig.merge(Toml::string(&doc));
        }
        let config: Config = fig.extract().map_err(|e| {
            ConfigError(
                e.into_iter()
                    .map(|e| {
                        let replaced = match &e.kind {
                            figment::error::Kind::UnknownField(key, _) => renamed(key),
                            _ => None,
                        };
                        match (replaced, e.path.last()) {
                            (Some(why), _) => why,
                            (None, Some(key)) => format!("{}: {}", setting(key), e.kind),
                            (None, None) => e.to_string(),
                        }
                    })
                    .collect(),
            )
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every setting; reports all problems at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut bad = |key: &str, why: String| problems.push(format!("{}: {why}", setting(key)));
        if !(self.database_url.starts_with("postgres://")
            || self.database_url.starts_with("postgresql://"))
        {
            bad(
                "database_url",
                format!(
                    "'{}' is not a postgres:// URL",
                    redact_url(&self.database_url)
                ),
            );
        }
        if let Some(url) = &self.database_read_url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            bad(
                "database_read_url",
                format!("'{}' is not a postgres:// URL", redact_url(url)),
            );
        }
        if self.database_read_max_lag_ms == 0 {
            bad(
                "database_read_max_lag_ms",
                "is 0: the replica would never be read".into(),
            );
        }
        if !REDIS_SCHEMES.iter().any(|s| self.redis_url.starts_with(s)) {
            bad(
                "redis_url",
                format!(
                    "'{}' is not a Redis URL ({})",
                    redact_url(&self.redis_url),
                    REDIS_SCHEMES.join(", ")
                ),
            );
        }
        if let Some(endpoint) = &self.otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            bad(
                "otlp_endpoint",
                format!(
                    "'{endpoint}' is not an http:// or https:// URL (an OTLP/gRPC collector, e.g. http://127.0.0.1:4317)"
                ),
            );
        }
        if !(self.otlp_sample_ratio > 0.0 && self.otlp_sample_ratio <= 1.0) {
            bad(
                "otlp_sample_ratio",
                format!("{} is not in (0, 1]", self.otlp_sample_ratio),
            );
        }
        match (&self.tls_cert_path, &self.tls_key_path) {
            (Some(_), None) => bad("tls_key_path", "must be set with tls_cert_path".into()),
            (None, Some(_)) => bad("tls_cert_path", "must be set with tls_key_path".into()),
            _ => {}
        }
        if self.tls_client_ca_path.is_some() && self.tls_cert_path.is_none() {
            bad(
                "tls_client_ca_path",
                "client certificates need TLS: set tls_cert_path and tls_key_path".into(),
            );
        }
        for (key, path) in [
            ("tls_cert_path", &self.tls_cert_path),
            ("tls_key_path", &self.tls_key_path),
            ("tls_client_ca_path", &self.tls_client_ca_path),
        ] {
            if let Some(path) = path
                && !path.is_file()
            {
                bad(key, format!("{} is not a readable file", path.display()));
            }
        }
        if let Some(key) = &self.admin_key
            && (key.len() < 16 || key.chars().any(char::is_whitespace))
        {
            bad(
                    "admin_key",
                    "must be at least 16 characters without spaces; generate one with `openssl rand -hex 24`".into(),
                );
        }
        if let Some(secret) = &self.page_token_secret
            && secret.len() < 16
        {
            bad(
                "page_token_secret",
                "must be at least 16 characters; generate one with `openssl rand -hex 24`".into(),
            );
        }
        if self.grpc_addr == self.http_addr && self.grpc_addr.port() != 0 {
            bad(
                "http_addr",
                format!("is the same address as grpc_addr ({})", self.grpc_addr),
            );
        }
        if self.embedding_model.is_empty()
            || !self
                .embedding_model
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':'))
        {
            bad(
                "embedding_model",
                "may contain only ASCII letters, digits, '-', '_', '.', '/' and ':'".into(),
            );
        }
        if self.embedding_provider == EmbeddingProvider::Openai
            && !(self.embedding_base_url.starts_with("http://")
                || self.embedding_base_url.starts_with("https://"))
        {
            bad(
                "embedding_base_url",
                "must be an http:// or https:// URL".into(),
            );
        }
        let chat = self
            .chat_model
            .as_deref()
            .is_some_and(|m| !m.trim().is_empty());
        if chat
            && self.extractor != ExtractorKind::Llm
            && !(self.llm_base_url.starts_with("http://")
                || self.llm_base_url.starts_with("https://"))
        {
            bad(
                "llm_base_url",
                "must be an http:// or https:// URL when chat_model is set".into(),
            );
        }
        if self.extractor == ExtractorKind::Llm {
            if self.llm_model.trim().is_empty() {
                bad(
                    "llm_model",
                    "is required when extractor = 'llm' (e.g. gpt-4o-mini, llama3.1)".into(),
                );
            }
            if !(self.llm_base_url.starts_with("http://")
                || self.llm_base_url.starts_with("https://"))
            {
                bad("llm_base_url", "must be an http:// or https:// URL".into());
            }
        }
        let (update, merge) = (
            self.resolver_update_threshold,
            self.resolver_merge_threshold,
        );
        if !(update.is_finite() && (0.0..=1.0).contains(&update)) {
            bad(
                "resolver_update_threshold",
                format!("is {update}; it must be between 0 and 1"),
            );
        }
        if !(merge.is_finite() && (0.0..=1.0).contains(&merge) && merge <= update) {
            bad(
                "resolver_merge_threshold",
                format!(
                    "is {merge}; it must be between 0 and resolver_update_threshold ({update})"
                ),
            );
        }
        if !(self.decay_half_life_days.is_finite() && self.decay_half_life_days >= 1.0) {
            bad(
                "decay_half_life_days",
                format!("is {}; it must be at least 1", self.decay_half_life_days),
            );
        }
        if !(self.decay_floor.is_finite() && (0.0..1.0).contains(&self.decay_floor)) {
            bad(
                "decay_floor",
                format!("is {}; it must be at least 0 and below 1", self.decay_floor),
            );
        }
        // Each user a worker extracts holds one connection for its claim and needs another to
        // write; the server's requests need some too.
        let needed = self.worker_concurrency as u64 * 2 + 4;
        if self.worker_embedded && (self.database_max_connections as u64) < needed {
            bad(
                "database_max_connections",
                format!(
                    "is {}; with the embedded worker at worker_concurrency = {} it must be at least {needed}",
                    self.database_max_connections, self.worker_concurrency
                ),
            );
        }
        if self.extraction_retry_base_ms > self.extraction_retry_max_ms {
            bad(
                "extraction_retry_base_ms",
                "must not exceed extraction_retry_max_ms".into(),
            );
        }
        for (key, w) in [
            ("recall_text_weight", self.recall_text_weight),
            ("recall_vector_weight", self.recall_vector_weight),
            ("recall_importance_weight", self.recall_importance_weight),
            ("recall_confidence_weight", self.recall_confidence_weight),
            ("recall_recency_weight", self.recall_recency_weight),
            ("recall_subject_weight", self.recall_subject_weight.min(1.0)),
            ("recall_context_weight", self.recall_context_weight),
            ("recall_speaker_weight", self.recall_speaker_weight),
        ] {
            if !(w.is_finite() && (0.0..=10.0).contains(&w)) {
                bad(key, format!("is {w}; it must be between 0 and 10"));
            }
        }
        if self.recall_text_weight + self.recall_vector_weight <= 0.0 {
            bad(
                "recall_vector_weight",
                "recall_text_weight + recall_vector_weight must be positive".into(),
            );
        }
        if !(self.recall_rrf_k.is_finite() && self.recall_rrf_k >= 0.0) {
            bad("recall_rrf_k", "must be a non-negative number".into());
        }
        if !(self.recall_recency_half_life_days.is_finite()
            && self.recall_recency_half_life_days > 0.0)
        {
            bad("recall_recency_half_life_days", "must be positive".into());
        }
        let ranges: [(&str, u64, u64, u64); 41] = [
            (
                "embedding_timeout_ms",
                self.embedding_timeout_ms,
                1,
                600_000,
            ),
            (
                "max_extraction_backlog",
                self.max_extraction_backlog,
                0,
                1_000_000_000,
            ),
            (
                "recall_default_k",
                self.recall_default_k as u64,
                1,
                self.max_k as u64,
            ),
            (
                "recall_default_token_budget",
                self.recall_default_token_budget as u64,
                1,
                self.max_token_budget as u64,
            ),
            (
                "recall_candidates",
                self.recall_candidates as u64,
                1,
                10_000,
            ),
            (
                "recall_vector_cache_mb",
                self.recall_vector_cache_mb,
                0,
                1 << 20,
            ),
            (
                "recall_hnsw_ef_search",
                self.recall_hnsw_ef_search.into(),
                1,
                1_000,
            ),
            (
                "query_cache_ttl_secs",
                self.query_cache_ttl_secs,
                0,
                365 * 24 * 3600,
            ),
            ("embedding_dims", self.embedding_dims.into(), 1, 16_000),
            (
                "database_max_connections",
                self.database_max_connections.into(),
                1,
                1_000,
            ),
            (
                "database_acquire_timeout_ms",
                self.database_acquire_timeout_ms,
                1,
                600_000,
            ),
            (
                "max_request_bytes",
                self.max_request_bytes as u64,
                1024,
                256 * 1024 * 1024,
            ),
            (
                "max_content_bytes",
                self.max_content_bytes as u64,
                1,
                16 * 1024 * 1024,
            ),
            ("max_batch_ids", self.max_batch_ids as u64, 1, 100_000),
            (
                "max_batch_messages",
                self.max_batch_messages as u64,
                1,
                10_000,
            ),
            ("max_page_size", self.max_page_size as u64, 1, 10_000),
            (
                "max_query_bytes",
                self.max_query_bytes as u64,
                1,
                1024 * 1024,
            ),
            ("max_k", self.max_k as u64, 1, 10_000),
            (
                "max_token_budget",
                self.max_token_budget as u64,
                1,
                1_000_000,
            ),
            ("request_timeout_ms", self.request_timeout_ms, 1, 3_600_000),
            (
                "max_concurrent_requests",
                self.max_concurrent_requests as u64,
                1,
                1_000_000,
            ),
            (
                "expiry_sweep_interval_secs",
                self.expiry_sweep_interval_secs,
                1,
                86_400,
            ),
            ("shutdown_grace_secs", self.shutdown_grace_secs, 0, 3_600),
            ("llm_timeout_ms", self.llm_timeout_ms, 100, 600_000),
            ("llm_max_retries", self.llm_max_retries as u64, 0, 10),
            (
                "extraction_context_turns",
                self.extraction_context_turns as u64,
                0,
                100,
            ),
            (
                "extraction_known_memories",
                self.extraction_known_memories as u64,
                0,
                200,
            ),
            (
                "extraction_max_attempts",
                self.extraction_max_attempts as u64,
                1,
                100,
            ),
            (
                "extraction_retry_base_ms",
                self.extraction_retry_base_ms,
                1,
                86_400_000,
            ),
            (
                "extraction_retry_max_ms",
                self.extraction_retry_max_ms,
                1,
                86_400_000,
            ),
            ("worker_concurrency", self.worker_concurrency as u64, 1, 256),
            (
                "worker_poll_interval_ms",
                self.worker_poll_interval_ms,
                10,
                3_600_000,
            ),
            ("embed_batch_size", self.embed_batch_size as u64, 1, 1_024),
            (
                "conscious_max_essential",
                self.conscious_max_essential as u64,
                1,
                1_000,
            ),
            (
                "conscious_recent_turns",
                self.conscious_recent_turns as u64,
                0,
                200,
            ),
            (
                "conscious_session_ttl_secs",
                self.conscious_session_ttl_secs,
                1,
                30 * 86_400,
            ),
            (
                "conscious_cache_ttl_secs",
                self.conscious_cache_ttl_secs,
                1,
                7 * 86_400,
            ),
            (
                "reflect_min_turns",
                self.reflect_min_turns as u64,
                2,
                100_000,
            ),
            ("reflect_idle_secs", self.reflect_idle_secs, 0, 30 * 86_400),
            ("reflect_max_turns", self.reflect_max_turns as u64, 1, 100),
            (
                "max_content_bytes",
                self.max_content_bytes as u64,
                1,
                self.max_request_bytes as u64,
            ),
        ];
        for (key, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                bad(
                    key,
                    format!("is {value}; it must be between {min} and {max}"),
                );
            }
        }
        for (key, expr) in self.job_schedules() {
            if let Err(why) = parse_schedule(expr) {
                bad(key, why);
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(problems))
        }
    }

    /// Each periodic job's schedule setting and its cron expression (see [`parse_schedule`]).
    pub fn job_schedules(&self) -> [(&'static str, &str); 5] {
        [
            ("optimize_schedule", &self.optimize_schedule),
            ("decay_schedule", &self.decay_schedule),
            ("reflect_schedule", &self.reflect_schedule),
            ("retention_schedule", &self.retention_schedule),
            ("reembed_schedule", &self.reembed_schedule),
        ]
    }

    /// Every setting as `key = value` lines, secrets hidden: safe to print and log.
    pub fn redacted(&self) -> String {
        let mut shown = self.clone();
        shown.admin_key = shown.admin_key.map(|_| "***".into());
        shown.embedding_api_key = shown.embedding_api_key.map(|_| "***".into());
        shown.llm_api_key = shown.llm_api_key.map(|_| "***".into());
        shown.page_token_secret = shown.page_token_secret.map(|_| "***".into());
        shown.database_url = redact_url(&shown.database_url);
        shown.redis_url = redact_url(&shown.redis_url);
        shown.database_read_url = shown.database_read_url.map(|u| redact_url(&u));
        let data = serde_json::to_value(&shown).unwrap_or_default();
        SETTINGS
            .iter()
            .map(|(key, _)| match data.get(key) {
                Some(serde_json::Value::Null) | None => format!("{key} = (unset)"),
                Some(value) => format!("{key} = {value}"),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A job's schedule from its setting: a cron expression in UTC whose first field is the second
/// (`sec min hour day-of-month month day-of-week [year]`, or `@hourly`, `@daily`, ...); `None`
/// when empty (the job runs only when triggered).
pub fn parse_schedule(expr: &str) -> Result<Option<cron::Schedule>, String> {
    let expr = expr.trim();
    if expr.is_empty() {
        return Ok(None);
    }
    let schedule: cron::Schedule = expr.parse().map_err(|_| {
        let hint = if expr.split_whitespace().count() == 5 {
            "; it has 5 fields, and the first of 6 is the second: '0 */10 * * * *' is every ten minutes"
        } else {
            ""
        };
        format!(
            "'{expr}' is not a cron expression (sec min hour day-of-month month day-of-week [year], \
             or @hourly, @daily, @weekly, @monthly, @yearly){hint}"
        )
    })?;
    if schedule.upcoming(chrono::Utc).next().is_none() {
        return Err(format!("'{expr}' never fires again"));
    }
    Ok(Some(schedule))
}

/// Settings that were renamed, and what replaced them: named in the error when still set.
const RENAMED: [(&str, &str); 5] = [
    ("optimize_interval_secs", "optimize_schedule"),
    ("decay_interval_secs", "decay_schedule"),
    ("reflect_interval_secs", "reflect_schedule"),
    ("retention_interval_secs", "retention_schedule"),
    ("reembed_interval_secs", "reembed_schedule"),
];

/// The error for a renamed setting `old` (file key, variable or `--set`), if it is one.
fn renamed(old: &str) -> Option<String> {
    let old = old.trim().to_ascii_lowercase();
    let old = old
        .strip_prefix(&ENV_PREFIX.to_ascii_lowercase())
        .unwrap_or(&old);
    RENAMED.iter().find(|(o, _)| *o == old).map(|(o, new)| {
        format!(
            "{o} was replaced by {new}, a cron expression with seconds (see docs/configuration.md)"
        )
    })
}

/// Just enough TOML to tell whether `--set` got a typed value.
mod toml_probe {
    /// A one-line TOML document `key = value`.
    pub struct Doc;

    impl std::str::FromStr for Doc {
        type Err = ();

        fn from_str(s: &str) -> Result<Self, ()> {
            let value = s.split_once('=').map(|(_, v)| v.trim()).ok_or(())?;
            let typed = value == "true"
                || value == "false"
                || value.parse::<i64>().is_ok()
                || value.parse::<f64>().is_ok()
                || (value.starts_with('"') && value.ends_with('"') && value.len() >= 2);
            if typed { Ok(Doc) } else { Err(()) }
        }
    }

    /// A TOML basic string.
    pub fn quote(s: &str) -> String {
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
mod tests {
    use super::*;
    use figment::Provider as _;

    #[test]
    fn settings_table_names_every_field_once() {
        let data = Figment::from(Serialized::defaults(Config::default()));
        let dict = data.data().expect("data");
        let fields: std::collections::BTreeSet<String> =
            dict.values().flat_map(|d| d.keys().cloned()).collect();
        let listed: std::collections::BTreeSet<String> =
            SETTINGS.iter().map(|(k, _)| k.to_string()).collect();
        // Secrets are None by default and so absent from the serialized defaults.
        let mut expected = fields.clone();
        expected.insert("admin_key".into());
        expected.insert("embedding_api_key".into());
        expected.insert("llm_api_key".into());
        assert_eq!(listed, expected);
        assert_eq!(listed.len(), SETTINGS.len(), "a setting is listed twice");
    }

    #[test]
    fn defaults_are_valid_and_use_the_fixed_ports() {
        let c = Config::default();
        c.validate().expect("defaults validate");
        assert_eq!(c.grpc_addr.to_string(), "127.0.0.1:50051");
        assert_eq!(c.http_addr.to_string(), "127.0.0.1:9464");
    }

    #[test]
    fn layers_file_then_env_then_flags_and_names_bad_settings() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("m.toml", "max_k = 17\nlog = \"debug\"\nembedding_dims = 8")?;
            jail.set_env("MEMOIRE_MAX_K", "19");
            jail.set_env("MEMOIRE_UNRELATED_THING", "ignored");
            let flags = Flags {
                config: Some("m.toml".into()),
                set: vec!["embedding_dims=16".into()],
                ..Flags::default()
            };
            let c = Config::load(&flags).expect("loads");
            assert_eq!(c.max_k, 19, "env beats file");
            assert_eq!(c.log, "debug", "file beats default");
            assert_eq!(c.embedding_dims, 16, "flag beats file");

            jail.set_env("MEMOIRE_MAX_K", "lots");
            let err = Config::load(&flags).unwrap_err().to_string();
            assert!(err.contains("`max_k` (MEMOIRE_MAX_K)"), "{err}");

            jail.set_env("MEMOIRE_MAX_K", "0");
            jail.set_env("MEMOIRE_ADMIN_KEY", "short");
            let err = Config::load(&flags).unwrap_err().to_string();
            assert!(err.contains("`max_k` (MEMOIRE_MAX_K): is 0"), "{err}");
            assert!(err.contains("`admin_key` (MEMOIRE_ADMIN_KEY)"), "{err}");
            assert!(!err.contains("short"), "the secret is not echoed: {err}");
            Ok(())
        });
    }

    #[test]
    fn redis_cluster_urls_otlp_and_read_replica_settings_are_checked() {
        let c = Config {
            redis_url: "redis-cluster://127.0.0.1:7001?node=127.0.0.1:7002".into(),
            otlp_endpoint: Some("http://127.0.0.1:4317".into()),
            otlp_sample_ratio: 0.1,
            ..Config::default()
        };
        c.validate().expect("a cluster URL and a collector");
        let c = Config {
            redis_url: "memcached://127.0.0.1".into(),
            otlp_endpoint: Some("127.0.0.1:4317".into()),
            otlp_sample_ratio: 0.0,
            database_read_url: Some("mysql://replica/memoire".into()),
            database_read_max_lag_ms: 0,
            ..Config::default()
        };
        let err = c.validate().unwrap_err().to_string();
        for name in [
            "`redis_url`",
            "`otlp_endpoint`",
            "`otlp_sample_ratio`",
            "`database_read_url`",
            "`database_read_max_lag_ms`",
        ] {
            assert!(err.contains(name), "{name}: {err}");
        }
    }

    #[test]
    fn secrets_are_redacted() {
        let c = Config {
            admin_key: Some("super-secret-admin-key".into()),
            database_url: "postgres://u:hunter2@db:5432/m".into(),
            ..Config::default()
        };
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("super-secret") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert!(shown.contains("postgres://u:***@db:5432/m"), "{shown}");
    }

    #[test]
    fn job_schedules_are_cron_expressions_with_seconds() {
        let mut c = Config::default();
        assert!(c.validate().is_ok());
        for (_, expr) in c.job_schedules() {
            assert!(parse_schedule(expr).expect("default").is_some(), "{expr}");
        }
        c.reflect_schedule = String::new();
        assert!(c.validate().is_ok(), "empty: only when triggered");
        c.optimize_schedule = "*/10 * * * *".into();
        c.decay_schedule = "every hour".into();
        c.retention_schedule = "0 0 0 1 1 * 2001".into();
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("optimize_schedule") && err.contains("5 fields"),
            "{err}"
        );
        assert!(
            err.contains("decay_schedule") && err.contains("not a cron"),
            "{err}"
        );
        assert!(
            err.contains("retention_schedule") && err.contains("never fires"),
            "{err}"
        );
        assert!(!err.contains("reflect_schedule"), "{err}");
    }

    #[test]
    fn renamed_settings_name_their_replacement() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("m.toml", "reflect_interval_secs = 60")?;
            let flags = Flags {
                config: Some("m.toml".into()),
                ..Flags::default()
            };
            let err = Config::load(&flags).unwrap_err().to_string();
            assert!(err.contains("replaced by reflect_schedule"), "{err}");
            let flags = Flags {
                set: vec!["decay_interval_secs=5".into()],
                ..Flags::default()
            };
            let err = Config::load(&flags).unwrap_err().to_string();
            assert!(err.contains("replaced by decay_schedule"), "{err}");
            jail.set_env("MEMOIRE_OPTIMIZE_INTERVAL_SECS", "60");
            let err = Config::load(&Flags::default()).unwrap_err().to_string();
            assert!(err.contains("replaced by optimize_schedule"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("m.toml", "max_kk = 7")?;
            let flags = Flags {
                config: Some("m.toml".into()),
                ..Flags::default()
            };
            let err = Config::load(&flags).unwrap_err().to_string();
            assert!(err.contains("max_kk"), "{err}");
            Ok(())
        });
    }
}
