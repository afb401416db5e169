//! A Rust client for Mémoire.
//!
//! Today: a [`Client`] built with [`ClientBuilder`] (endpoint, API key, timeouts) that connects
//! lazily — building it never fails because the service is down — and hands out the generated
//! `memoire.v1` stubs with the API key attached to every call.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use memoire_sdk::{pb, Client};
//! let client = Client::builder("http://127.0.0.1:50051").api_key("mem_...").build()?;
//! let reply = client
//!     .memory()
//!     .get_memory(pb::GetMemoryRequest { memory_id: "0190f6c8-...".into() })
//!     .await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

pub use memoire_proto::v1 as pb;

/// Errors building a client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The endpoint is not a valid URI.
    #[error("invalid endpoint '{endpoint}': {reason}")]
    InvalidEndpoint {
        /// What was given.
        endpoint: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The API key cannot be sent as metadata (it contains characters other than visible ASCII).
    #[error("the API key is not valid gRPC metadata")]
    InvalidApiKey,
}

/// Adds `authorization: Bearer <key>` to every request.
#[derive(Debug, Clone)]
pub struct ApiKeyInterceptor(Option<MetadataValue<Ascii>>);

impl Interceptor for ApiKeyInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// The memory service stub with the API key attached.
pub type MemoryClient =
    pb::memory_service_client::MemoryServiceClient<InterceptedService<Channel, ApiKeyInterceptor>>;
/// The admin service stub with the API key attached.
pub type AdminClient =
    pb::admin_service_client::AdminServiceClient<InterceptedService<Channel, ApiKeyInterceptor>>;

/// Builds a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    endpoint: String,
    api_key: Option<String>,
    connect_timeout: Duration,
    timeout: Option<Duration>,
}

impl ClientBuilder {
    /// The API key sent with every call.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// How long to wait for a connection (default 5 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// A deadline for every call (default: none).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }

    /// The client. Connects lazily, on the first call.
    pub fn build(self) -> Result<Client, Error> {
        let invalid = |reason: String| Error::InvalidEndpoint {
            endpoint: self.endpoint.clone(),
            reason,
        };
        let mut endpoint = Endpoint::from_shared(self.endpoint.clone())
            .map_err(|e| invalid(e.to_string()))?
            .connect_timeout(self.connect_timeout);
        if let Some(t) = self.timeout {
            endpoint = endpoint.timeout(t);
        }
        let auth = self
            .api_key
            .as_deref()
            .map(|k| format!("Bearer {k}").parse::<MetadataValue<Ascii>>())
            .transpose()
            .map_err(|_| Error::InvalidApiKey)?;
        Ok(Client {
            channel: endpoint.connect_lazy(),
            auth: ApiKeyInterceptor(auth),
        })
    }
}

/// A Mémoire client: cheap to clone, one HTTP/2 connection shared by clones.
#[derive(Debug, Clone)]
pub struct Client {
    channel: Channel,
    auth: ApiKeyInterceptor,
}

impl Client {
    /// A builder for `endpoint`, e.g. `http://127.0.0.1:50051`.
    pub fn builder(endpoint: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            endpoint: endpoint.into(),
            api_key: None,
            connect_timeout: Duration::from_secs(5),
            timeout: None,
        }
    }

    /// The memory service.
    pub fn memory(&self) -> MemoryClient {
        pb::memory_service_client::MemoryServiceClient::with_interceptor(
            self.channel.clone(),
            self.auth.clone(),
        )
    }

    /// The admin service.
    pub fn admin(&self) -> AdminClient {
        pb::admin_service_client::AdminServiceClient::with_interceptor(
            self.channel.clone(),
            self.auth.clone(),
        )
    }

    /// The same client with another API key (sharing the connection).
    pub fn with_api_key(&self, key: &str) -> Result<Client, Error> {
        let v = format!("Bearer {key}")
            .parse()
            .map_err(|_| Error::InvalidApiKey)?;
        Ok(Client {
            channel: self.channel.clone(),
            auth: ApiKeyInterceptor(Some(v)),
        })
    }

    /// The underlying channel (for health checks and other services).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn building_never_needs_the_service() {
        // Nothing listens on port 9; a lazy client builds anyway and fails only when called.
        let client = Client::builder("http://127.0.0.1:9")
            .api_key("mem_x")
            .build()
            .expect("builds");
        let err = client
            .memory()
            .get_memory(pb::GetMemoryRequest {
                memory_id: "x".into(),
            })
            .await
            .expect_err("nothing listens");
        assert_eq!(err.code(), tonic::Code::Unavailable);
    }

    #[test]
    fn bad_endpoint_and_key_are_reported() {
        assert!(matches!(
            Client::builder("not a uri").build(),
            Err(Error::InvalidEndpoint { .. })
        ));
        assert!(matches!(
            Client::builder("http://x").api_key("bad\nkey").build(),
            Err(Error::InvalidApiKey)
        ));
    }
}
