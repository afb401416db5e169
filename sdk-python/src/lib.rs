//! `memoire._native`: the Rust half of the Python SDK, a thin layer over `sdk-rust`.
//!
//! Python encodes `memoire.v1` messages (with the descriptors this module exports) and calls
//! [`NativeClient::call`] (blocking, with the GIL released) or [`NativeClient::call_async`]
//! (returns at once; a callback resolves an asyncio future from a tokio task). Deadlines and
//! retries are enforced here, in Rust.
//!
//! The module owns its tokio runtime — not a library-global one, which crashes at interpreter
//! exit in a large share of runs — and rebuilds it, and every client's channel, when the process
//! id changes (a forked child cannot use its parent's threads). [`shutdown`] stops it from
//! Python's `atexit`, with the GIL released, before the interpreter finalizes.

mod replies;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use memoire_sdk::{Client, Error, RetryPolicy, TraceContext};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use tokio::runtime::Runtime;

pyo3::create_exception!(
    _native,
    CallError,
    pyo3::exceptions::PyException,
    "A failed call: args are (kind, message, field)."
);

/// The process's runtime, with the pid it was built in.
static RUNTIME: Mutex<Option<(u32, Arc<Runtime>)>> = Mutex::new(None);

fn runtime() -> PyResult<Arc<Runtime>> {
    let pid = std::process::id();
    let mut slot = RUNTIME
        .lock()
        .map_err(|_| PyValueError::new_err("runtime lock poisoned"))?;
    if let Some((owner, rt)) = slot.as_ref()
        && *owner == pid
    {
        return Ok(rt.clone());
    }
    if let Some((_, stale)) = slot.take() {
        // A runtime inherited through fork(): its threads do not exist here; dropping it would
        // wait for them forever.
        std::mem::forget(stale);
    }
    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("memoire-sdk")
            .enable_all()
            .build()
            .map_err(|e| PyValueError::new_err(format!("cannot start the runtime: {e}")))?,
    );
    *slot = Some((pid, rt.clone()));
    Ok(rt)
}

/// Stops the runtime (from `atexit`): in-flight calls are abandoned, no callback runs after it.
#[pyfunction]
fn shutdown(py: Python<'_>) {
    let taken = RUNTIME.lock().ok().and_then(|mut s| s.take());
    if let Some((pid, rt)) = taken {
        if pid != std::process::id() {
            std::mem::forget(rt);
            return;
        }
        if let Ok(rt) = Arc::try_unwrap(rt) {
            py.detach(|| rt.shutdown_timeout(Duration::from_secs(1)));
        }
    }
}

/// The `memoire.v1` file descriptor set (with imports), for encoding messages in Python.
#[pyfunction]
fn file_descriptor_set(py: Python<'_>) -> Bound<'_, PyBytes> {
    PyBytes::new(py, memoire_proto::FILE_DESCRIPTOR_SET)
}

/// (kind, message, field) of an error, for Python to raise as its own exception class.
fn describe(e: &Error) -> (&'static str, String, Option<String>) {
    let kind = match e {
        Error::InvalidEndpoint { .. } | Error::InvalidApiKey => "configuration",
        Error::Timeout(_) => "timeout",
        Error::Unavailable(_) => "unavailable",
        Error::InvalidArgument { .. } => "invalid_argument",
        Error::Unauthenticated(_) => "unauthenticated",
        Error::PermissionDenied(_) => "permission_denied",
        Error::NotFound(_) => "not_found",
        Error::AlreadyExists(_) => "already_exists",
        Error::FailedPrecondition(_) => "failed_precondition",
        Error::ResourceExhausted(_) => "resource_exhausted",
        Error::Unimplemented(_) => "unimplemented",
        Error::Other { .. } => "other",
    };
    let field = match e {
        Error::InvalidArgument { field, .. } => field.clone(),
        _ => None,
    };
    (kind, e.to_string(), field)
}

/// A connection to Mémoire. Calls take encoded request messages and return encoded replies.
#[pyclass(module = "memoire._native")]
struct NativeClient {
    endpoint: String,
    api_key: Option<String>,
    tls_ca: Option<Vec<u8>>,
    tls_identity: Option<(Vec<u8>, Vec<u8>)>,
    timeout: Duration,
    retry: RetryPolicy,
    client: Mutex<Option<(u32, Client)>>,
}

impl NativeClient {
    /// Builds the client inside the runtime (its channel's worker task lives there).
    fn build(&self) -> PyResult<Client> {
        let rt = runtime()?;
        let _inside = rt.enter();
        self.build_client().map_err(|e| error(&e))
    }

    fn build_client(&self) -> Result<Client, Error> {
        let mut b = Client::builder(self.endpoint.clone())
            .timeout(self.timeout)
            .connect_timeout(self.timeout.min(Duration::from_secs(5)))
            .retry(self.retry);
        if let Some(k) = &self.api_key {
            b = b.api_key(k.clone());
        }
        if let Some(ca) = &self.tls_ca {
            b = b.tls_ca_pem(ca.clone());
        }
        if let Some((cert, key)) = &self.tls_identity {
            b = b.tls_identity_pem(cert.clone(), key.clone());
        }
        b.build()
    }

    /// This process's client (rebuilt after a fork).
    fn client(&self, timeout: Option<f64>) -> PyResult<Client> {
        let pid = std::process::id();
        let mut slot = self
            .client
            .lock()
            .map_err(|_| PyValueError::new_err("client lock poisoned"))?;
        let client = match slot.as_ref() {
            Some((owner, c)) if *owner == pid => c.clone(),
            _ => {
                if let Some(stale) = slot.take() {
                    std::mem::forget(stale);
                }
                let c = self.build()?;
                *slot = Some((pid, c.clone()));
                c
            }
        };
        Ok(match timeout {
            Some(t) => client.with_timeout(seconds(t)?),
            None => client,
        })
    }
}

fn seconds(t: f64) -> PyResult<Duration> {
    if !(t.is_finite() && t > 0.0) {
        return Err(PyValueError::new_err(format!(
            "timeout must be a positive number of seconds, not {t}"
        )));
    }
    Ok(Duration::from_secs_f64(t))
}

fn error(e: &Error) -> PyErr {
    let (kind, message, field) = describe(e);
    CallError::new_err((kind, message, field))
}

#[pymethods]
impl NativeClient {
    /// A client for `endpoint` (`http://…` plaintext, `https://…` TLS with the system's roots,
    /// plus `tls_ca_file`, and `tls_cert_file` + `tls_key_file` for mTLS); connects on first use.
    #[new]
    #[pyo3(signature = (endpoint, api_key=None, timeout=10.0, max_retries=2, tls_ca_file=None, tls_cert_file=None, tls_key_file=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        endpoint: String,
        api_key: Option<String>,
        timeout: f64,
        max_retries: u32,
        tls_ca_file: Option<std::path::PathBuf>,
        tls_cert_file: Option<std::path::PathBuf>,
        tls_key_file: Option<std::path::PathBuf>,
    ) -> PyResult<Self> {
        let read = |field: &str, path: &Option<std::path::PathBuf>| -> PyResult<Option<Vec<u8>>> {
            path.as_ref()
                .map(|p| {
                    std::fs::read(p).map_err(|e| {
                        CallError::new_err((
                            "configuration",
                            format!("{field}: cannot read {}: {e}", p.display()),
                            Some(field.to_owned()),
                        ))
                    })
                })
                .transpose()
        };
        let tls_identity = match (
            read("tls_cert_file", &tls_cert_file)?,
            read("tls_key_file", &tls_key_file)?,
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(CallError::new_err((
                    "configuration",
                    "tls_cert_file and tls_key_file go together (a client certificate and its key)",
                    Some("tls_cert_file".to_owned()),
                )));
            }
        };
        let c = NativeClient {
            endpoint,
            api_key,
            tls_ca: read("tls_ca_file", &tls_ca_file)?,
            tls_identity,
            timeout: seconds(timeout)?,
            retry: RetryPolicy {
                max_retries,
                ..RetryPolicy::default()
            },
            client: Mutex::new(None),
        };
        // Validate the endpoint and key now; nothing is dialled until a call.
        c.build()?;
        Ok(c)
    }

    /// Calls the unary RPC at `path` and returns the encoded reply; blocks with the GIL released.
    /// `traceparent` (and `tracestate`): the caller's W3C trace context, sent with the call.
    #[pyo3(signature = (path, body, idempotent, timeout=None, traceparent=None, tracestate=None))]
    #[allow(clippy::too_many_arguments)]
    fn call<'py>(
        &self,
        py: Python<'py>,
        path: &str,
        body: Vec<u8>,
        idempotent: bool,
        timeout: Option<f64>,
        traceparent: Option<String>,
        tracestate: Option<String>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let client = self.client(timeout)?;
        let rt = runtime()?;
        let path = path.to_owned();
        let trace = trace_context(traceparent, tracestate);
        let out =
            py.detach(|| rt.block_on(client.call_raw(&path, body, idempotent, trace.as_ref())));
        match out {
            Ok(bytes) => Ok(PyBytes::new(py, &bytes)),
            Err(e) => Err(error(&e)),
        }
    }

    /// Starts the call and returns at once; `callback(reply_bytes, None)` or
    /// `callback(None, (kind, message, field))` runs on a runtime thread when it is done.
    #[pyo3(signature = (path, body, idempotent, callback, timeout=None, traceparent=None, tracestate=None))]
    #[allow(clippy::too_many_arguments)]
    fn call_async(
        &self,
        path: &str,
        body: Vec<u8>,
        idempotent: bool,
        callback: Py<PyAny>,
        timeout: Option<f64>,
        traceparent: Option<String>,
        tracestate: Option<String>,
    ) -> PyResult<()> {
        let client = self.client(timeout)?;
        let rt = runtime()?;
        let path = path.to_owned();
        let trace = trace_context(traceparent, tracestate);
        rt.spawn(async move {
            let out = client
                .call_raw(&path, body, idempotent, trace.as_ref())
                .await;
            // Never during interpreter shutdown: try_attach declines then.
            let _ = Python::try_attach(|py| {
                let result = match out {
                    Ok(bytes) => callback.call1(py, (PyBytes::new(py, &bytes), py.None())),
                    Err(e) => callback.call1(py, (py.None(), describe(&e))),
                };
                if let Err(err) = result {
                    err.write_unraisable(py, None);
                }
            });
        });
        Ok(())
    }
}

/// The trace context a Python caller passed (its OpenTelemetry span's), if any.
fn trace_context(traceparent: Option<String>, tracestate: Option<String>) -> Option<TraceContext> {
    traceparent.map(|traceparent| TraceContext {
        traceparent,
        tracestate,
    })
}

/// The native module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NativeClient>()?;
    m.add_function(wrap_pyfunction!(shutdown, m)?)?;
    m.add_function(wrap_pyfunction!(file_descriptor_set, m)?)?;
    m.add_function(wrap_pyfunction!(replies::decode_reply, m)?)?;
    m.add("CallError", m.py().get_type::<CallError>())?;
    Ok(())
}
