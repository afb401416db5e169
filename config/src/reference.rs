//! The configuration reference, `docs/configuration.md`, generated from [`SETTINGS`] (keys and
//! descriptions) and [`Config::default()`] (defaults). A test fails when the committed file
//! differs from what this module renders; `MEMOIRE_UPDATE_DOCS=1 cargo test -p memoire-config`
//! rewrites it.

use crate::{Config, ENV_PREFIX, SETTINGS};

/// The groups of the reference, in order: heading and a one-line introduction.
const GROUPS: &[(&str, &str)] = &[
    (
        "Server and network",
        "Listen addresses, request deadlines and concurrency, shutdown.",
    ),
    (
        "Database",
        "PostgreSQL, the source of truth, and its connection pool.",
    ),
    (
        "Redis",
        "Working memory and caches; losing Redis loses nothing.",
    ),
    (
        "Authentication",
        "The bootstrap admin key and local dev mode.",
    ),
    (
        "Embedding",
        "Where vectors come from: the in-process model or an OpenAI-compatible endpoint.",
    ),
    ("Recall", "Search, fusion and scoring of Recall."),
    (
        "Limits",
        "Largest requests, contents, batches and pages the server accepts.",
    ),
    (
        "Worker and extraction",
        "The background worker and how it turns episodes into memories.",
    ),
    (
        "LLM",
        "The OpenAI-compatible chat model used when `extractor = 'llm'`.",
    ),
    ("Conscious", "The working set Conscious returns."),
    (
        "Background jobs",
        "Periodic jobs of the worker: decay, optimization, reflection, retention, re-embedding.",
    ),
    (
        "Logging and traces",
        "Log filter and output format; OpenTelemetry trace export (off unless a collector is named).",
    ),
];

/// The group of a setting; `None` for a key no rule covers (a test makes that an error).
fn group_of(key: &str) -> Option<&'static str> {
    let group = match key {
        "grpc_addr"
        | "tls_cert_path"
        | "tls_key_path"
        | "tls_client_ca_path"
        | "http_addr"
        | "ui_enabled"
        | "worker_http_addr"
        | "request_timeout_ms"
        | "max_concurrent_requests"
        | "shutdown_grace_secs" => "Server and network",
        "migrate_on_start" => "Database",
        "query_cache_ttl_secs" => "Redis",
        "admin_key" | "dev_mode" | "page_token_secret" => "Authentication",
        "embed_batch_size" => "Embedding",
        "extractor" | "expiry_sweep_interval_secs" => "Worker and extraction",
        "log" | "log_format" | "otlp_endpoint" | "otlp_sample_ratio" => "Logging and traces",
        "decay_half_life_days" | "decay_floor" => "Background jobs",
        _ if key.starts_with("database_") => "Database",
        _ if key.starts_with("redis_") => "Redis",
        _ if key.starts_with("embedding_") => "Embedding",
        _ if key.starts_with("recall_") => "Recall",
        _ if key.starts_with("max_") => "Limits",
        _ if key.starts_with("worker_")
            || key.starts_with("extraction_")
            || key.starts_with("resolver_") =>
        {
            "Worker and extraction"
        }
        _ if key.starts_with("llm_") || key == "chat_model" => "LLM",
        _ if key.starts_with("conscious_") => "Conscious",
        _ if key.ends_with("_schedule") || key.starts_with("reflect_") => "Background jobs",
        _ => return None,
    };
    Some(group)
}

/// Heading of the section that would collect settings no group covers (never rendered when the
/// tests pass).
const OTHER: &str = "Other";

/// A secret: an API key or a signing secret, never given a default and never shown.
fn is_secret(key: &str) -> bool {
    // A `_path` names the file that holds a secret, not the secret.
    !key.ends_with("_path") && key.split('_').any(|word| word == "key" || word == "secret")
}

/// The environment variable of a setting.
fn env_var(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.to_uppercase())
}

/// The defaults as JSON. Serialized to text and parsed back rather than `serde_json::to_value`,
/// which widens `f32` to `f64` (`0.3` would show as `0.30000001192092896`).
fn defaults() -> serde_json::Value {
    serde_json::to_string(&Config::default())
        .and_then(|text| serde_json::from_str(&text))
        .unwrap_or_default()
}

/// One default as a Markdown table cell.
fn render_default(key: &str, value: Option<&serde_json::Value>) -> String {
    use serde_json::Value;
    match value {
        _ if is_secret(key) && !matches!(value, None | Some(Value::Null)) => "set (secret)".into(),
        None | Some(Value::Null) if is_secret(key) => "unset (secret)".into(),
        None | Some(Value::Null) => "unset".into(),
        Some(Value::String(s)) if s.is_empty() => "empty".into(),
        Some(Value::String(s)) => code(s),
        Some(other) => code(&other.to_string()),
    }
}

/// `text` as inline code (longer fences when it contains a backtick).
fn code(text: &str) -> String {
    let text = text.replace('|', "\\|");
    if text.contains('`') {
        format!("`` {text} ``")
    } else {
        format!("`{text}`")
    }
}

/// A description as a table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// The configuration reference as Markdown: how settings are layered, then one table per group
/// with each setting's file key, environment variable, default and description.
pub fn reference_markdown() -> String {
    let defaults = defaults();
    let mut out = String::new();
    out.push_str(
        "# Configuration reference\n\
         \n\
         This file is generated from `config/src/lib.rs` (the `SETTINGS` table: keys and\n\
         descriptions; `Config::default()`: defaults) by `config/src/reference.rs`. Do not edit it\n\
         by hand: `cargo test -p memoire-config` fails when it is stale; regenerate it with\n\
         `MEMOIRE_UPDATE_DOCS=1 cargo test -p memoire-config` and commit the result.\n\
         \n\
         ## How settings are layered\n\
         \n\
         Every setting has a default. Each layer below overrides the ones before it:\n\
         \n\
         1. the defaults in this table;\n\
         2. a TOML file given by `--config FILE` or `MEMOIRE_CONFIG` (keys as in the *Setting*\n   \
         column; unknown keys are errors);\n\
         3. environment variables `MEMOIRE_<KEY>`, the key in upper case (the *Environment\n   \
         variable* column);\n\
         4. flags: `--grpc-addr`, `--http-addr`, `--database-url`, `--redis-url`, `--log`, and\n   \
         `--set KEY=VALUE` (repeatable) for any setting.\n\
         \n\
         For example, `max_k = 50` in the file, `MEMOIRE_MAX_K=50` in the environment and\n\
         `--set max_k=50` on the command line set the same thing. The result is validated at\n\
         start-up; an error names the setting, its variable and the fix. Secrets (API keys) have\n\
         no default and are hidden whenever the configuration is printed.\n",
    );
    let mut groups: Vec<(&str, &str)> = GROUPS.to_vec();
    if SETTINGS.iter().any(|(key, _)| group_of(key).is_none()) {
        groups.push((OTHER, "Settings not yet assigned to a group."));
    }
    for (group, intro) in groups {
        out.push_str(&format!("\n## {group}\n\n{intro}\n\n"));
        out.push_str("| Setting | Environment variable | Default | Description |\n");
        out.push_str("|---|---|---|---|\n");
        for (key, description) in SETTINGS
            .iter()
            .filter(|(key, _)| group_of(key).unwrap_or(OTHER) == group)
        {
            out.push_str(&format!(
                "| `{key}` | `{}` | {} | {} |\n",
                env_var(key),
                render_default(key, defaults.get(key)),
                cell(description),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md");

    #[test]
    fn docs_configuration_md_is_up_to_date() {
        let expected = reference_markdown();
        let committed = std::fs::read_to_string(DOC).unwrap_or_default();
        if committed == expected {
            return;
        }
        if std::env::var("MEMOIRE_UPDATE_DOCS").as_deref() == Ok("1") {
            let path = std::path::Path::new(DOC);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).expect("create docs/");
            }
            std::fs::write(path, expected).expect("write docs/configuration.md");
            return;
        }
        panic!(
            "docs/configuration.md is stale: run `MEMOIRE_UPDATE_DOCS=1 cargo test -p memoire-config` and commit it"
        );
    }

    #[test]
    fn every_setting_lands_in_exactly_one_known_group_and_no_group_is_empty() {
        let names: Vec<&str> = GROUPS.iter().map(|(name, _)| *name).collect();
        for (key, _) in SETTINGS {
            let group = group_of(key).unwrap_or_else(|| {
                panic!(
                    "setting `{key}` has no group: add it to group_of in config/src/reference.rs"
                )
            });
            assert_eq!(
                names.iter().filter(|name| **name == group).count(),
                1,
                "`{key}` maps to group {group:?}, which GROUPS must list exactly once"
            );
        }
        for name in &names {
            assert!(
                SETTINGS.iter().any(|(key, _)| group_of(key) == Some(name)),
                "group {name:?} has no settings"
            );
        }
        assert!(!reference_markdown().contains(&format!("## {OTHER}\n")));
    }

    #[test]
    fn every_setting_is_a_row_of_the_rendered_table() {
        let doc = reference_markdown();
        for (key, _) in SETTINGS {
            let row = format!("| `{key}` | `{}` | ", env_var(key));
            assert_eq!(
                doc.matches(&row).count(),
                1,
                "`{key}` is not exactly one row of the reference"
            );
        }
        let rows = doc.lines().filter(|l| l.starts_with("| `")).count();
        assert_eq!(rows, SETTINGS.len());
    }

    #[test]
    fn defaults_render_as_code_and_secrets_as_unset() {
        let doc = reference_markdown();
        for row in [
            "| `grpc_addr` | `MEMOIRE_GRPC_ADDR` | `127.0.0.1:50051` |",
            "| `max_k` | `MEMOIRE_MAX_K` | `100` |",
            "| `recall_subject_weight` | `MEMOIRE_RECALL_SUBJECT_WEIGHT` | `0.3` |",
            "| `migrate_on_start` | `MEMOIRE_MIGRATE_ON_START` | `true` |",
            "| `embedding_provider` | `MEMOIRE_EMBEDDING_PROVIDER` | `local` |",
            "| `admin_key` | `MEMOIRE_ADMIN_KEY` | unset (secret) |",
            "| `embedding_api_key` | `MEMOIRE_EMBEDDING_API_KEY` | unset (secret) |",
            "| `llm_api_key` | `MEMOIRE_LLM_API_KEY` | unset (secret) |",
            "| `llm_model` | `MEMOIRE_LLM_MODEL` | empty |",
        ] {
            assert!(doc.contains(row), "missing {row}");
        }
        assert_eq!(
            render_default("admin_key", Some(&"s3cret".into())),
            "set (secret)"
        );
    }
}
