//! The auth layer: every `memoire.v1` call's `authorization` metadata is resolved to a
//! [`Principal`] (see `memoire_usecases::auth`) before the call is decoded, and put into the
//! request's extensions; a caller that cannot be resolved is answered `UNAUTHENTICATED` here.
//! Each adapter then asks the principal for the role its call needs ([`caller`]). Health and
//! reflection stay open.

use std::task::{Context, Poll};

use futures::future::BoxFuture;
use memoire_core::command::Principal;
use memoire_usecases::Authenticator;
use tonic::{Request, Status};

use crate::error::status;

/// The gRPC paths that need a caller.
const AUTHENTICATED_PREFIX: &str = "/memoire.v1.";

/// Resolves callers for the services it wraps.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    auth: Authenticator,
}

impl AuthLayer {
    /// The layer over `auth`.
    pub fn new(auth: Authenticator) -> Self {
        AuthLayer { auth }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// The service [`AuthLayer`] makes.
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    auth: Authenticator,
}

impl<S, B> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
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
        Box::pin(async move {
            let header = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| v.to_str().map_err(|_| ()));
            match auth.principal(header).await {
                Ok(principal) => {
                    req.extensions_mut().insert(principal);
                    inner.call(req).await
                }
                Err(e) => Ok(status(e).into_http()),
            }
        })
    }
}

/// The caller of a request that passed the auth layer.
pub fn caller<T>(req: &Request<T>) -> Result<&Principal, Status> {
    req.extensions()
        .get::<Principal>()
        .ok_or_else(|| Status::internal("the auth layer did not run for this call"))
}
