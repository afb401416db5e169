//! A typed Rust client for Mémoire.
//!
//! [`Client`] is built with [`ClientBuilder`]: endpoint, API key, a default user and namespace,
//! a per-call deadline, and retries with backoff and jitter for idempotent calls. Building never
//! fails because the service is down (the connection is made lazily, on the first call), and
//! every RPC is a typed method whose errors are an [`Error`] enum — a deadline is
//! [`Error::Timeout`] (tonic reports its own client deadline as `CANCELLED("Timeout expired")`;
//! that is mapped too), bad input is [`Error::InvalidArgument`] with the offending field.
//!
//! ```no_run
//! # async fn demo() -> Result<(), memoire_sdk::Error> {
//! use memoire_sdk::{pb, Client};
//! let client = Client::builder("http://127.0.0.1:50051")
//!     .api_key("mem_...")
//!     .default_user("dana")
//!     .build()?;
//! client
//!     .teach(pb::TeachRequest {
//!         kind: pb::MemoryKind::Fact as i32,
//!         content: "Lives in Dallas".into(),
//!         slot: Some("user.home_city".into()),
//!         ..Default::default()
//!     })
//!     .await?;
//! let found = client
//!     .recall(pb::RecallRequest { query: "where does she live?".into(), ..Default::default() })
//!     .await?;
//! println!("{}", found.context);
//! # Ok(()) }
//! ```
//!
//! The generated stubs stay available ([`Client::memory`], [`Client::admin`]) for anything the
//! typed methods do not cover.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_types::StatusExt as _;

pub use memoire_proto::v1 as pb;

/// What can go wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
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
    /// The call's deadline passed (the client's or the server's).
    #[error("timed out: {0}")]
    Timeout(String),
    /// The service (or its database) cannot be reached; worth retrying later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The request was rejected; `field` names the offending field when the server said.
    #[error("invalid argument{}: {message}", field.as_deref().map(|f| format!(" ({f})")).unwrap_or_default())]
    InvalidArgument {
        /// The field, e.g. `content` or `messages[2].role`.
        field: Option<String>,
        /// Why.
        message: String,
    },
    /// Missing, wrong or revoked API key.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The key's role does not allow the call.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// No such memory, tenant, key …
    #[error("not found: {0}")]
    NotFound(String),
    /// It already exists.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The state does not allow it (e.g. correcting a superseded memory).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// A quota or rate limit.
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    /// The server does not implement it (yet).
    #[error("unimplemented: {0}")]
    Unimplemented(String),
    /// Anything else, with its gRPC code.
    #[error("{code:?}: {message}")]
    Other {
        /// The gRPC code.
        code: tonic::Code,
        /// The message.
        message: String,
    },
}

impl Error {
    /// Whether retrying the same call later can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::Timeout(_))
    }
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        let message = s.message().to_owned();
        match s.code() {
            tonic::Code::DeadlineExceeded => Error::Timeout(message),
            // tonic's own client-side deadline.
            tonic::Code::Cancelled if message.contains("Timeout expired") => {
                Error::Timeout(message)
            }
            tonic::Code::Unavailable => Error::Unavailable(message),
            tonic::Code::InvalidArgument => Error::InvalidArgument {
                field: s
                    .get_details_bad_request()
                    .and_then(|b| b.field_violations.first().map(|v| v.field.clone())),
                message,
            },
            tonic::Code::Unauthenticated => Error::Unauthenticated(message),
            tonic::Code::PermissionDenied => Error::PermissionDenied(message),
            tonic::Code::NotFound => Error::NotFound(message),
            tonic::Code::AlreadyExists => Error::AlreadyExists(message),
            tonic::Code::FailedPrecondition => Error::FailedPrecondition(message),
            tonic::Code::ResourceExhausted => Error::ResourceExhausted(message),
            tonic::Code::Unimplemented => Error::Unimplemented(message),
            code => Error::Other { code, message },
        }
    }
}

/// Adds `authorization: Bearer <key>` to every request, and the caller's trace context
/// ([`TraceContext::current`]) unless the request already carries one.
#[derive(Debug, Clone)]
pub struct ApiKeyInterceptor(Option<MetadataValue<Ascii>>);

impl Interceptor for ApiKeyInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        if !req.metadata().contains_key(TRACEPARENT)
            && let Some(trace) = TraceContext::current()
        {
            trace.attach(req.metadata_mut());
        }
        Ok(req)
    }
}

const TRACEPARENT: &str = "traceparent";

/// A caller's W3C trace context: sent with a call as `traceparent` (and `tracestate`)
/// metadata, so that the server traces the call under the caller's span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// `00-<trace id>-<span id>-<flags>`.
    pub traceparent: String,
    /// Vendor state, passed on as it came.
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// The current OpenTelemetry span's context — the active OpenTelemetry context's span, or
    /// else the current `tracing` span's (through `tracing-opentelemetry`); `None` when neither
    /// is a valid span, as in a program that does not trace.
    pub fn current() -> Option<Self> {
        use opentelemetry::trace::TraceContextExt as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let mut cx = opentelemetry::Context::current();
        if !cx.span().span_context().is_valid() {
            cx = tracing::Span::current().context();
        }
        let span = cx.span();
        let sc = span.span_context();
        if !sc.is_valid() {
            return None;
        }
        let state = sc.trace_state().header();
        Some(TraceContext {
            traceparent: format!(
                "00-{}-{}-{:02x}",
                sc.trace_id(),
                sc.span_id(),
                sc.trace_flags().to_u8()
            ),
            tracestate: (!state.is_empty()).then_some(state),
        })
    }

    /// Puts the context into `metadata` (values that are not valid metadata are left out).
    pub fn attach(&self, metadata: &mut tonic::metadata::MetadataMap) {
        if let Ok(v) = self.traceparent.parse() {
            metadata.insert(TRACEPARENT, v);
        }
        if let Some(Ok(v)) = self.tracestate.as_deref().map(str::parse) {
            metadata.insert("tracestate", v);
        }
    }
}

/// The memory service stub with the API key attached.
pub type MemoryClient =
    pb::memory_service_client::MemoryServiceClient<InterceptedService<Channel, ApiKeyInterceptor>>;
/// The admin service stub with the API key attached.
pub type AdminClient =
    pb::admin_service_client::AdminServiceClient<InterceptedService<Channel, ApiKeyInterceptor>>;

/// Retries of idempotent calls: up to `max_retries` more attempts after `Unavailable` (or a
/// deadline), waiting `base · 2^n` (at most `max`) with ±50 % jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts after the first.
    pub max_retries: u32,
    /// The first wait.
    pub base: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 2,
            base: Duration::from_millis(50),
            max: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    fn wait(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(2u32.saturating_pow(attempt.min(16)))
            .min(self.max);
        // Jitter without a random-number dependency: the clock's nanoseconds are spread enough
        // to keep clients that failed together from retrying together.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let factor = 0.5 + (nanos % 1000) as f64 / 1000.0;
        exp.mul_f64(factor)
    }
}

/// Builds a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    endpoint: String,
    api_key: Option<String>,
    connect_timeout: Duration,
    timeout: Duration,
    retry: RetryPolicy,
    default_user: Option<String>,
    default_namespace: Option<String>,
    tls_ca_pem: Option<Vec<u8>>,
    tls_identity_pem: Option<(Vec<u8>, Vec<u8>)>,
}

impl ClientBuilder {
    /// For `https://` endpoints: trust this CA (PEM) in addition to the system's roots, e.g. a
    /// private CA that issued the server's certificate.
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_ca_pem = Some(pem.into());
        self
    }

    /// For `https://` endpoints whose server asks for client certificates (mTLS): this
    /// certificate chain and its private key (PEM).
    pub fn tls_identity_pem(mut self, cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.tls_identity_pem = Some((cert.into(), key.into()));
        self
    }

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

    /// The deadline of every call (default 10 s); sent to the server too.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// Retries of idempotent calls (default: 2 retries, 50 ms doubling to 1 s, jittered).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The user of calls that do not name one.
    pub fn default_user(mut self, user: impl Into<String>) -> Self {
        self.default_user = Some(user.into());
        self
    }

    /// The namespace of calls that do not name one.
    pub fn default_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.default_namespace = Some(namespace.into());
        self
    }

    /// The client. Connects lazily, on the first call.
    pub fn build(self) -> Result<Client, Error> {
        let invalid = |reason: String| Error::InvalidEndpoint {
            endpoint: self.endpoint.clone(),
            reason,
        };
        // `https://` is TLS (the system's roots, plus a CA and a client certificate when given)
        // and `http://` plaintext; nothing falls back from one to the other, and TLS settings
        // on an `http://` endpoint are an error rather than ignored.
        let tls = match self
            .endpoint
            .split_once("://")
            .map(|(scheme, _)| scheme.to_ascii_lowercase())
        {
            Some(scheme) if scheme == "http" => {
                if self.tls_ca_pem.is_some() || self.tls_identity_pem.is_some() {
                    return Err(invalid(
                        "TLS settings were given for an http:// (plaintext) endpoint; use https://"
                            .into(),
                    ));
                }
                None
            }
            Some(scheme) if scheme == "https" => {
                let mut tls = ClientTlsConfig::new().with_native_roots();
                if let Some(ca) = &self.tls_ca_pem {
                    tls = tls.ca_certificate(Certificate::from_pem(ca));
                }
                if let Some((cert, key)) = &self.tls_identity_pem {
                    tls = tls.identity(Identity::from_pem(cert, key));
                }
                Some(tls)
            }
            _ => {
                return Err(invalid(
                    "needs a scheme and an address, e.g. http://127.0.0.1:50051".into(),
                ));
            }
        };
        let mut endpoint = Endpoint::from_shared(self.endpoint.clone())
            .map_err(|e| invalid(e.to_string()))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true);
        if let Some(tls) = tls {
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| invalid(format!("TLS: {e}")))?;
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
            timeout: self.timeout,
            retry: self.retry,
            default_user: self.default_user.unwrap_or_default(),
            default_namespace: self.default_namespace.unwrap_or_default(),
        })
    }
}

/// A Mémoire client: cheap to clone, one HTTP/2 connection shared by clones.
#[derive(Debug, Clone)]
pub struct Client {
    channel: Channel,
    auth: ApiKeyInterceptor,
    timeout: Duration,
    retry: RetryPolicy,
    default_user: String,
    default_namespace: String,
}

/// Whether a call may be sent again after a failure that may or may not have reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Idempotent {
    Yes,
    No,
}

fn fill(field: &mut String, default: &str) {
    if field.is_empty() {
        default.clone_into(field);
    }
}

impl Client {
    /// A builder for `endpoint`: `http://127.0.0.1:50051` (plaintext) or
    /// `https://memoire.internal:50051` (TLS).
    pub fn builder(endpoint: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            endpoint: endpoint.into(),
            api_key: None,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            default_user: None,
            default_namespace: None,
            tls_ca_pem: None,
            tls_identity_pem: None,
        }
    }

    /// The generated memory-service stub (no deadline or retries added).
    pub fn memory(&self) -> MemoryClient {
        pb::memory_service_client::MemoryServiceClient::with_interceptor(
            self.channel.clone(),
            self.auth.clone(),
        )
    }

    /// The generated admin-service stub (no deadline or retries added).
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
            auth: ApiKeyInterceptor(Some(v)),
            ..self.clone()
        })
    }

    /// The same client with another per-call deadline.
    pub fn with_timeout(&self, timeout: Duration) -> Client {
        Client {
            timeout,
            ..self.clone()
        }
    }

    /// The underlying channel (for health checks and other services).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Runs `call` with the deadline (client-side, and as `grpc-timeout` for the server), and
    /// retries it per the policy when it is idempotent and failed transiently.
    async fn call<Req, Resp, F, Fut>(
        &self,
        req: Req,
        idempotent: Idempotent,
        call: F,
    ) -> Result<Resp, Error>
    where
        Req: Clone,
        F: Fn(tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let mut attempt = 0;
        loop {
            let mut request = tonic::Request::new(req.clone());
            request.set_timeout(self.timeout);
            let outcome = match tokio::time::timeout(self.timeout, call(request)).await {
                Ok(Ok(r)) => return Ok(r.into_inner()),
                Ok(Err(status)) => Error::from(status),
                Err(_) => Error::Timeout(format!("no reply within {:?}", self.timeout)),
            };
            if idempotent == Idempotent::No
                || !outcome.is_transient()
                || attempt >= self.retry.max_retries
            {
                return Err(outcome);
            }
            tokio::time::sleep(self.retry.wait(attempt)).await;
            attempt += 1;
        }
    }

    /// Stores conversation messages (retried only when every message has a `message_id`, which
    /// makes a retry harmless).
    pub async fn ingest(&self, mut req: pb::IngestRequest) -> Result<pb::IngestResponse, Error> {
        fill(&mut req.user_id, &self.default_user);
        fill(&mut req.namespace, &self.default_namespace);
        let idempotent = if !req.messages.is_empty()
            && req
                .messages
                .iter()
                .all(|m| m.message_id.as_deref().is_some_and(|id| !id.is_empty()))
        {
            Idempotent::Yes
        } else {
            Idempotent::No
        };
        let client = self.memory();
        self.call(req, idempotent, |r| {
            let mut c = client.clone();
            async move { c.ingest(r).await }
        })
        .await
    }

    /// Query-aware retrieval, packed for a prompt.
    pub async fn recall(&self, mut req: pb::RecallRequest) -> Result<pb::RecallResponse, Error> {
        fill(&mut req.user_id, &self.default_user);
        if req.namespaces.is_empty() && !self.default_namespace.is_empty() {
            req.namespaces.push(self.default_namespace.clone());
        }
        let client = self.memory();
        self.call(req, Idempotent::Yes, |r| {
            let mut c = client.clone();
            async move { c.recall(r).await }
        })
        .await
    }

    /// The working memory for the start of a session.
    pub async fn conscious(
        &self,
        mut req: pb::ConsciousRequest,
    ) -> Result<pb::ConsciousResponse, Error> {
        fill(&mut req.user_id, &self.default_user);
        fill(&mut req.namespace, &self.default_namespace);
        let client = self.memory();
        self.call(req, Idempotent::Yes, |r| {
            let mut c = client.clone();
            async move { c.conscious(r).await }
        })
        .await
    }

    /// Writes a memory, or corrects one (`memory_id`). Not retried.
    pub async fn teach(&self, mut req: pb::TeachRequest) -> Result<pb::TeachResponse, Error> {
        fill(&mut req.user_id, &self.default_user);
        fill(&mut req.namespace, &self.default_namespace);
        let client = self.memory();
        self.call(req, Idempotent::No, |r| {
            let mut c = client.clone();
            async move { c.teach(r).await }
        })
        .await
    }

    /// Tombstones or purges memories. Not retried.
    pub async fn forget(&self, req: pb::ForgetRequest) -> Result<pb::ForgetResponse, Error> {
        let client = self.memory();
        self.call(req, Idempotent::No, |r| {
            let mut c = client.clone();
            async move { c.forget(r).await }
        })
        .await
    }

    /// One memory.
    pub async fn get_memory(&self, memory_id: &str) -> Result<pb::Memory, Error> {
        let client = self.memory();
        let req = pb::GetMemoryRequest {
            memory_id: memory_id.to_owned(),
        };
        let r = self
            .call(req, Idempotent::Yes, |r| {
                let mut c = client.clone();
                async move { c.get_memory(r).await }
            })
            .await?;
        r.memory
            .ok_or_else(|| Error::NotFound(format!("memory {memory_id}")))
    }

    /// A page of memories.
    pub async fn list_memories(
        &self,
        mut req: pb::ListMemoriesRequest,
    ) -> Result<pb::ListMemoriesResponse, Error> {
        fill(&mut req.user_id, &self.default_user);
        if req.namespaces.is_empty() && !self.default_namespace.is_empty() {
            req.namespaces.push(self.default_namespace.clone());
        }
        let client = self.memory();
        self.call(req, Idempotent::Yes, |r| {
            let mut c = client.clone();
            async move { c.list_memories(r).await }
        })
        .await
    }

    /// A memory's version history, oldest first.
    pub async fn history(&self, memory_id: &str) -> Result<Vec<pb::MemoryVersion>, Error> {
        let client = self.memory();
        let req = pb::HistoryRequest {
            memory_id: memory_id.to_owned(),
        };
        let r = self
            .call(req, Idempotent::Yes, |r| {
                let mut c = client.clone();
                async move { c.history(r).await }
            })
            .await?;
        Ok(r.versions)
    }
}

/// Passes encoded messages through untouched: for bindings (the Python SDK) that encode and
/// decode `memoire.v1` messages themselves.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

#[derive(Debug)]
struct RawEncoder;

#[derive(Debug)]
struct RawDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut as _;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf as _;
        let mut out = vec![0u8; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

impl Client {
    /// Calls the unary RPC at `path` (e.g. `/memoire.v1.MemoryService/Recall`) with an encoded
    /// request and returns the encoded reply — with the client's deadline, API key and retries
    /// (when `idempotent`), and `trace` as the caller's trace context (bindings pass their own
    /// language's; without it, the current Rust one is sent, if any). For language bindings; Rust
    /// code should use the typed methods.
    pub async fn call_raw(
        &self,
        path: &str,
        body: Vec<u8>,
        idempotent: bool,
        trace: Option<&TraceContext>,
    ) -> Result<Vec<u8>, Error> {
        let path: http::uri::PathAndQuery = path.parse().map_err(|_| Error::InvalidArgument {
            field: Some("path".into()),
            message: format!("'{path}' is not an RPC path"),
        })?;
        let service = InterceptedService::new(self.channel.clone(), self.auth.clone());
        let idempotent = if idempotent {
            Idempotent::Yes
        } else {
            Idempotent::No
        };
        self.call(body, idempotent, |mut req| {
            if let Some(trace) = trace {
                trace.attach(req.metadata_mut());
            }
            let mut grpc = tonic::client::Grpc::new(service.clone());
            let path = path.clone();
            async move {
                grpc.ready()
                    .await
                    .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                grpc.unary(req, path, RawCodec).await
            }
        })
        .await
    }
}

/// The admin service's typed methods (an admin or the bootstrap key).
macro_rules! admin_calls {
    ($($(#[$doc:meta])* $name:ident($req:ident) -> $resp:ident, $idem:ident;)+) => {
        impl Client {
            $(
                $(#[$doc])*
                pub async fn $name(&self, req: pb::$req) -> Result<pb::$resp, Error> {
                    let client = self.admin();
                    self.call(req, Idempotent::$idem, |r| {
                        let mut c = client.clone();
                        async move { c.$name(r).await }
                    })
                    .await
                }
            )+
        }
    };
}

admin_calls! {
    /// Creates a tenant (bootstrap key only).
    create_tenant(CreateTenantRequest) -> CreateTenantResponse, No;
    /// Lists tenants.
    list_tenants(ListTenantsRequest) -> ListTenantsResponse, Yes;
    /// Changes a tenant's policies.
    update_tenant(UpdateTenantRequest) -> UpdateTenantResponse, No;
    /// Creates an API key; the secret is in the reply only.
    create_api_key(CreateApiKeyRequest) -> CreateApiKeyResponse, No;
    /// Lists a tenant's keys.
    list_api_keys(ListApiKeysRequest) -> ListApiKeysResponse, Yes;
    /// Revokes a key.
    revoke_api_key(RevokeApiKeyRequest) -> RevokeApiKeyResponse, No;
    /// A tenant's statistics.
    get_stats(GetStatsRequest) -> GetStatsResponse, Yes;
    /// Runs a maintenance job.
    run_maintenance(RunMaintenanceRequest) -> RunMaintenanceResponse, No;
    /// The dead-letter queue.
    list_dead_letters(ListDeadLettersRequest) -> ListDeadLettersResponse, Yes;
    /// Puts dead letters back on the queue.
    replay_dead_letters(ReplayDeadLettersRequest) -> ReplayDeadLettersResponse, No;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn building_never_needs_the_service() {
        // Nothing listens on port 9; a lazy client builds anyway and fails only when called,
        // after its retries, as Unavailable.
        let client = Client::builder("http://127.0.0.1:9")
            .api_key("mem_x")
            .retry(RetryPolicy {
                max_retries: 1,
                base: Duration::from_millis(1),
                max: Duration::from_millis(1),
            })
            .build()
            .expect("builds");
        let err = client.get_memory("x").await.expect_err("nothing listens");
        assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
        assert!(err.is_transient());
    }

    #[test]
    fn bad_endpoint_and_key_are_reported() {
        for bad in ["not a uri", "127.0.0.1:50051", "ftp://x"] {
            assert!(
                matches!(
                    Client::builder(bad).build(),
                    Err(Error::InvalidEndpoint { .. })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            Client::builder("http://x").api_key("bad\nkey").build(),
            Err(Error::InvalidApiKey)
        ));
        // TLS settings never silently apply to plaintext.
        assert!(matches!(
            Client::builder("http://x").tls_ca_pem("pem").build(),
            Err(Error::InvalidEndpoint { .. })
        ));
    }

    #[test]
    fn statuses_map_to_typed_errors() {
        let e = Error::from(tonic::Status::cancelled("Timeout expired"));
        assert!(
            matches!(e, Error::Timeout(_)),
            "tonic's client deadline is a timeout"
        );
        assert!(matches!(
            Error::from(tonic::Status::deadline_exceeded("x")),
            Error::Timeout(_)
        ));
        assert!(matches!(
            Error::from(tonic::Status::cancelled("by the caller")),
            Error::Other {
                code: tonic::Code::Cancelled,
                ..
            }
        ));
        assert!(matches!(
            Error::from(tonic::Status::not_found("x")),
            Error::NotFound(_)
        ));
        let bad = tonic::Status::with_error_details(
            tonic::Code::InvalidArgument,
            "content is required",
            tonic_types::ErrorDetails::with_bad_request_violation("content", "is required"),
        );
        assert_eq!(
            Error::from(bad),
            Error::InvalidArgument {
                field: Some("content".into()),
                message: "content is required".into()
            }
        );
    }

    #[test]
    fn retry_waits_grow_and_stay_bounded() {
        let p = RetryPolicy::default();
        for attempt in 0..10 {
            let w = p.wait(attempt);
            assert!(w <= p.max.mul_f64(1.5), "{w:?}");
            assert!(w >= p.base.mul_f64(0.5), "{w:?}");
        }
    }
}
