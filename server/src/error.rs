//! Domain errors to gRPC statuses: one exhaustive `match`, so a new variant cannot silently become
//! `INTERNAL`. `INVALID_ARGUMENT` carries a `google.rpc.BadRequest` naming the field.

use memoire_core::Error;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

/// Converts a domain error into the status a client sees. Internal details are logged, not sent.
pub fn status(e: Error) -> Status {
    match e {
        Error::InvalidArgument { field, message } => Status::with_error_details(
            Code::InvalidArgument,
            format!("invalid {field}: {message}"),
            ErrorDetails::with_bad_request_violation(field, message),
        ),
        Error::NotFound { what, id } => Status::not_found(format!("{what} {id} not found")),
        Error::AlreadyExists(m) => Status::already_exists(m),
        Error::FailedPrecondition(m) => Status::failed_precondition(m),
        Error::Unauthenticated(m) => Status::unauthenticated(m),
        Error::PermissionDenied(m) => Status::permission_denied(m),
        // A rate or a backlog clears with time: RetryInfo says when. A quota does not (it is
        // freed by deleting or by a higher limit), so it carries a QuotaFailure instead — a
        // RetryInfo would tell a client's retry policy to try again.
        Error::ResourceExhausted {
            message,
            retry_after: Some(delay),
        } => Status::with_error_details(
            Code::ResourceExhausted,
            message,
            ErrorDetails::with_retry_info(Some(delay)),
        ),
        Error::ResourceExhausted {
            message,
            retry_after: None,
        } => Status::with_error_details(
            Code::ResourceExhausted,
            message.clone(),
            ErrorDetails::with_quota_failure_violation("tenant", message),
        ),
        Error::Unavailable(m) => {
            tracing::warn!(error = %m, "storage unavailable");
            Status::unavailable("the database is unavailable; retry with backoff")
        }
        Error::Unimplemented(m) => Status::unimplemented(m),
        Error::Provider(m) => {
            tracing::warn!(error = %m, "provider failed");
            Status::internal(format!("provider error: {m}"))
        }
        Error::Internal(m) => {
            tracing::error!(error = %m, "internal error");
            Status::internal("internal error (logged on the server)")
        }
    }
}
