//! The auth layer: every `memoire.v1` call's `authorization` metadata is resolved to a
//! [`Principal`] (see `memoire_usecases::auth`) before the call is decoded, and put into the
//! request's extensions; a caller that cannot be resolved is answered `UNAUTHENTICATED` here.
//! Each adapter then asks the principal for the role its call needs ([`caller`]). Health and
//! reflection stay open. The call is then counted against the caller's rate limits: over one,
//! it is answered `RESOURCE_EXHAUSTED` with a `RetryInfo`; under them, the reply carries
//! `x-ratelimit-remaining` (calls still admissible at once) when a limit applies.
//!
//! The limits are decided in Redis, one round trip. Calls that change nothing ([`SPECULATIVE`])
//! start meanwhile, and their result is dropped if the call is refused; Teach starts too and
//! waits for the decision before it writes ([`permit`]); every other call waits for it first.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use futures::future::Either;
use memoire_core::command::Principal;
use memoire_usecases::{Authenticator, Permit, RateLimiter};
use tonic::{Request, Status};

use crate::error::status;

/// The gRPC paths that need a caller.
const AUTHENTICATED_PREFIX: &str = "/memoire.v1.";

/// The calls that may start before the rate limits have decided: they change nothing (Recall's
/// access statistics wait for the decision), or wait for it before they write (Teach).
const SPECULATIVE: &[&str] = &[
    "/memoire.v1.MemoryService/Recall",
    "/memoire.v1.MemoryService/Conscious",
    "/memoire.v1.MemoryService/GetMemory",
    "/memoire.v1.MemoryService/ListMemories",
    "/memoire.v1.MemoryService/History",
    "/memoire.v1.MemoryService/WhoAmI",
    "/memoire.v1.MemoryService/ListUsers",
    "/memoire.v1.MemoryService/ListEpisodes",
    "/memoire.v1.MemoryService/Teach",
];

/// Marks a request that must carry an API key even in dev mode (gRPC-Web calls from browsers).
#[derive(Debug, Clone, Copy)]
pub struct KeyRequired;

/// The response metadata with the calls a caller may still make at once.
pub const REMAINING_HEADER: &str = "x-ratelimit-remaining";

/// Resolves callers for the services it wraps.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    auth: Authenticator,
    limiter: RateLimiter,
}

impl AuthLayer {
    /// The layer over `auth`, counting calls with `limiter`.
    pub fn new(auth: Authenticator, limiter: RateLimiter) -> Self {
        AuthLayer { auth, limiter }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            auth: self.auth.clone(),
            limiter: self.limiter.clone(),
        }
    }
}

/// The service [`AuthLayer`] makes.
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    auth: Authenticator,
    limiter: RateLimiter,
}

impl<S, B> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // The clone that was polled ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if !req.uri().path().starts_with(AUTHENTICATED_PREFIX) {
            return Box::pin(inner.call(req));
        }
        let auth = self.auth.clone();
        let limiter = self.limiter.clone();
        Box::pin(async move {
            let header = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| v.to_str().map_err(|_| ()));
            if header.is_none() && req.extensions().get::<KeyRequired>().is_some() {
                return Ok(Status::unauthenticated(
                    "this call needs an API key (`authorization: Bearer <key>`), also in dev_mode",
                )
                .into_http());
            }
            let principal = match auth.principal(header).await {
                Ok(principal) => principal,
                Err(e) => return Ok(status(e).into_http()),
            };
            let permit = limiter.start_call(&principal);
            if let Some(Err(e)) = permit.now() {
                return Ok(rate_limited(e).into_http());
            }
            let speculative = SPECULATIVE.contains(&req.uri().path());
            req.extensions_mut().insert(principal);
            req.extensions_mut().insert(permit.clone());
            let decided = if speculative {
                speculate(inner.call(req), &permit).await
            } else {
                match permit.granted().await {
                    Ok(remaining) => Ok((remaining, inner.call(req).await)),
                    Err(e) => Err(e),
                }
            };
            let (remaining, response) = match decided {
                Ok(decided) => decided,
                Err(e) => return Ok(rate_limited(e).into_http()),
            };
            let mut response = response?;
            if let Some(remaining) = remaining {
                response
                    .headers_mut()
                    .insert(REMAINING_HEADER, http::HeaderValue::from(remaining));
            }
            Ok(response)
        })
    }
}

/// Runs `call` while `permit` is decided: its result when the call is admitted; when it is
/// refused, the call is dropped unfinished (or its result discarded) and the refusal returned.
async fn speculate<R>(
    call: impl Future<Output = R>,
    permit: &Permit,
) -> memoire_core::Result<(Option<u32>, R)> {
    let (call, granted) = (pin!(call), pin!(permit.granted()));
    match futures::future::select(call, granted).await {
        Either::Left((result, granted)) => Ok((granted.await?, result)),
        Either::Right((granted, call)) => {
            let remaining = granted?;
            Ok((remaining, call.await))
        }
    }
}

/// The status of a call refused by a rate limit: the error, and nothing remaining.
pub fn rate_limited(e: memoire_core::Error) -> Status {
    let mut refused = status(e);
    refused
        .metadata_mut()
        .insert(REMAINING_HEADER, tonic::metadata::MetadataValue::from(0u32));
    refused
}

/// The rate limits' decision on a request that passed the auth layer: what a call that started
/// before it was known awaits before it writes.
pub fn permit<T>(req: &Request<T>) -> Result<Permit, Status> {
    req.extensions()
        .get::<Permit>()
        .cloned()
        .ok_or_else(|| Status::internal("the auth layer did not run for this call"))
}

/// The caller of a request that passed the auth layer.
pub fn caller<T>(req: &Request<T>) -> Result<&Principal, Status> {
    req.extensions()
        .get::<Principal>()
        .ok_or_else(|| Status::internal("the auth layer did not run for this call"))
}
