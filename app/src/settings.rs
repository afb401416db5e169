//! Each part's settings, built from the one [`Config`]: every setting is read here, once.

use std::sync::Arc;
use std::time::Duration;

use memoire_config::{Config, ExtractorKind, Fusion};
use memoire_core::chat::Responder;
use memoire_core::extract::Summarizer;
use memoire_core::recall::Weights;
use memoire_core::resolve::Thresholds;
use memoire_core::validate::Limits;
use memoire_server::{RecallDefaults, ServerSettings};
use memoire_store::{ConsciousSettings, RetryPolicy, SearchSettings};
use memoire_usecases::jobs::{Job, JobSettings};
use memoire_usecases::{ExtractSettings, RecallSettings, Settings};
use memoire_worker::WorkerSettings;

/// The input limits.
pub fn limits(config: &Config) -> Limits {
    Limits {
        max_content_bytes: config.max_content_bytes,
        max_batch_ids: config.max_batch_ids,
        max_batch_messages: config.max_batch_messages,
        max_page_size: config.max_page_size,
        max_query_bytes: config.max_query_bytes,
        max_k: config.max_k,
        max_token_budget: config.max_token_budget,
    }
}

/// The gRPC server's settings.
pub fn server_settings(config: &Config) -> ServerSettings {
    ServerSettings {
        limits: limits(config),
        recall: RecallDefaults {
            default_k: config.recall_default_k,
            default_token_budget: config.recall_default_token_budget,
        },
        request_timeout: Duration::from_millis(config.request_timeout_ms),
        max_concurrent_requests: config.max_concurrent_requests,
        max_request_bytes: config.max_request_bytes,
        page_token_secret: config.page_token_secret.clone(),
        tls: match (&config.tls_cert_path, &config.tls_key_path) {
            (Some(cert), Some(key)) => Some(memoire_server::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: config.tls_client_ca_path.clone(),
            }),
            _ => None,
        },
    }
}

/// The use-cases' settings, for vectors of `model`; `summarizer` writes abstractive summaries,
/// `chat` answers the Chat RPC.
pub fn usecase_settings(
    config: &Config,
    model: &str,
    summarizer: Option<Arc<dyn Summarizer>>,
    chat: Option<Arc<dyn Responder>>,
) -> Settings {
    Settings {
        recall: RecallSettings {
            weights: Weights {
                fusion: match config.recall_fusion {
                    Fusion::Weighted => memoire_core::recall::Fusion::Weighted,
                    Fusion::Rrf => memoire_core::recall::Fusion::Rrf,
                },
                subject: config.recall_subject_weight,
                context: config.recall_context_weight,
                speaker: config.recall_speaker_weight,
                text: config.recall_text_weight,
                vector: config.recall_vector_weight,
                rrf_k: config.recall_rrf_k,
                importance: config.recall_importance_weight,
                confidence: config.recall_confidence_weight,
                recency: config.recall_recency_weight,
                half_life_days: config.recall_recency_half_life_days,
            },
            search: SearchSettings {
                model: model.to_owned(),
                dims: config.embedding_dims,
                exact_search_max_scope: config.recall_exact_search_max_scope,
                exact_text_max_scope: config.recall_exact_text_max_scope,
                vector_cache_bytes: (config.recall_vector_cache_mb as usize)
                    .saturating_mul(1 << 20),
            },
            // A Recall with a larger k takes k (`UseCases::recall_with`): the first items
            // are the same for every k up to this.
            candidates: config.recall_candidates,
            min_confidence: config.decay_floor,
        },
        conscious: ConsciousSettings {
            max_essential: config.conscious_max_essential,
            recent_turns: config.conscious_recent_turns,
            session_ttl: Duration::from_secs(config.conscious_session_ttl_secs),
            cache_ttl: Duration::from_secs(config.conscious_cache_ttl_secs),
            min_confidence: config.decay_floor,
        },
        jobs: JobSettings {
            summarizer,
            max_essential: config.conscious_max_essential,
            half_life: Duration::from_secs_f64(config.decay_half_life_days as f64 * 86_400.0),
            floor: config.decay_floor,
            reflect_min_turns: config.reflect_min_turns as i64,
            reflect_max_turns: config.reflect_max_turns as usize,
            reflect_idle: Duration::from_secs(config.reflect_idle_secs),
            max_content_bytes: config.max_content_bytes,
        },
        extract: ExtractSettings {
            retry: RetryPolicy {
                max_attempts: config.extraction_max_attempts,
                base_delay: Duration::from_millis(config.extraction_retry_base_ms),
                max_delay: Duration::from_millis(config.extraction_retry_max_ms),
            },
            thresholds: Thresholds {
                update: config.resolver_update_threshold,
                merge: config.resolver_merge_threshold,
            },
            context_turns: config.extraction_context_turns,
            // The rules read one message; related memories only matter to a model.
            known_memories: match config.extractor {
                ExtractorKind::Rules => 0,
                ExtractorKind::Llm => config.extraction_known_memories,
            },
            max_backlog: config.max_extraction_backlog,
            // Every attempt of one embeddings request may take the whole timeout; a minute on
            // top for backoff and the write.
            embed_lease: Duration::from_millis(config.embedding_timeout_ms)
                * (crate::providers::EMBEDDING_MAX_RETRIES + 1)
                + Duration::from_secs(60),
        },
        chat,
    }
}

/// The worker's settings (its schedules were validated when the configuration loaded).
pub fn worker_settings(config: &Config) -> WorkerSettings {
    WorkerSettings {
        expiry_sweep_interval: Duration::from_secs(config.expiry_sweep_interval_secs),
        poll_interval: Duration::from_millis(config.worker_poll_interval_ms),
        concurrency: config.worker_concurrency,
        embed_batch: config.embed_batch_size,
        // In the order of `Config::job_schedules`; validated when the configuration loaded.
        schedules: [
            Job::Optimize,
            Job::Decay,
            Job::Reflect,
            Job::Retention,
            Job::ReEmbed,
        ]
        .into_iter()
        .zip(config.job_schedules())
        .filter_map(|(job, (_, expr))| {
            memoire_config::parse_schedule(expr)
                .ok()
                .flatten()
                .map(|s| (job, s))
        })
        .collect(),
    }
}
