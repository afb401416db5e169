//! sqlx errors, classified by SQLSTATE (never by message text) into the domain error.

use memoire_core::Error;

/// Classifies a sqlx error. Connection-level failures become `Unavailable` (the one case the API
/// reports as `UNAVAILABLE`); constraint violations that reach here are bugs or races the caller
/// did not anticipate, so they keep their SQLSTATE in the (logged, not returned) message.
pub fn db_error(e: sqlx::Error) -> Error {
    match &e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            match code.as_str() {
                "23505" => Error::AlreadyExists(format!(
                    "already exists ({})",
                    db.constraint().unwrap_or("unique constraint")
                )),
                // configuration_limit_exceeded: raised by the quota triggers (migrations 0011
                // and 0013), whose message names the quota.
                "53400" => Error::ResourceExhausted {
                    message: db.message().to_owned(),
                    retry_after: None,
                },
                // connection exceptions, admin/crash shutdown, cannot connect now, too many connections
                c if c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03" | "53300") => {
                    Error::Unavailable(format!("postgres: {e}"))
                }
                _ => Error::Internal(format!("postgres {code}: {e}")),
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Error::Unavailable(format!("postgres: {e}")),
        _ => Error::Internal(format!("postgres: {e}")),
    }
}
