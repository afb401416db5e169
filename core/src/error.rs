//! The domain error. The server maps each variant to a gRPC status in one exhaustive `match`.

/// What can go wrong in a domain operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Client input is malformed or out of limits. `field` names the request field
    /// (dotted path, e.g. `selector.user_id` or `messages[3].content`).
    #[error("invalid {field}: {message}")]
    InvalidArgument {
        /// The offending field.
        field: String,
        /// What is wrong with it, and the limit when there is one.
        message: String,
    },
    /// The thing does not exist in the caller's tenant (or is forgotten).
    #[error("{what} {id} not found")]
    NotFound {
        /// What was looked for ("memory", "tenant", "api key").
        what: &'static str,
        /// Its id as the caller gave it.
        id: String,
    },
    /// It already exists (a unique name, for example).
    #[error("{0}")]
    AlreadyExists(String),
    /// The operation does not apply to the thing in its current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// No credentials, or credentials that do not resolve to a live key.
    #[error("{0}")]
    Unauthenticated(String),
    /// The credentials are valid but do not allow this operation.
    #[error("{0}")]
    PermissionDenied(String),
    /// A quota, rate limit or backlog bound was hit; `retry_after` says when trying again
    /// makes sense, when known.
    #[error("{message}")]
    ResourceExhausted {
        /// What was exhausted.
        message: String,
        /// When to retry.
        retry_after: Option<std::time::Duration>,
    },
    /// Postgres is unreachable (or shutting down).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// An embedding or LLM provider failed (the message is safe to show: no secrets).
    #[error("provider error: {0}")]
    Provider(String),
    /// A feature a later release implements.
    #[error("{0}")]
    Unimplemented(String),
    /// A bug or an unexpected storage error. The message is logged, not sent to clients.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// An `InvalidArgument` for `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Result with the domain error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
