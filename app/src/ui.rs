//! The Memory Inspector on the HTTP port (`ui_enabled`): its assets under `/ui/`, embedded at
//! build time (`app/build.rs`), and `memoire.v1` over gRPC-Web, the one API the browser app
//! speaks — same keys, roles, limits and errors as the gRPC port.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use memoire_server::GrpcWeb;

mod assets {
    include!(concat!(env!("OUT_DIR"), "/ui_assets.rs"));
}

/// What the browser may load: this origin only, nothing inline, never framed.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The page served when the binary was built without `make ui`.
const NOT_BUILT: &str = "The Memory Inspector was not built into this binary.\n\
     Build it with `make ui` (needs Node.js and npm) and rebuild the server, or use `make run`.\n";

/// The Inspector's routes: `/ui/…` and the gRPC-Web paths of `memoire.v1`.
pub fn routes(web: GrpcWeb) -> Router {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(|| asset(Path(String::new()))))
        .route("/ui/{*path}", get(asset))
        .route("/memoire.v1.MemoryService/{method}", post(grpc_web))
        .route("/memoire.v1.AdminService/{method}", post(grpc_web))
        .with_state(web)
}

async fn grpc_web(State(web): State<GrpcWeb>, req: Request) -> Response {
    web.call(req).await.into_response()
}

async fn asset(Path(path): Path<String>) -> Response {
    let path = if path.is_empty() {
        "index.html"
    } else {
        path.as_str()
    };
    let Some((_, content_type, bytes)) = assets::ASSETS.iter().find(|(p, _, _)| *p == path) else {
        return if assets::ASSETS.is_empty() {
            (StatusCode::NOT_FOUND, NOT_BUILT).into_response()
        } else {
            (StatusCode::NOT_FOUND, "not found\n").into_response()
        };
    };
    let mut response = Response::new(Body::from(*bytes));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The asset names carry no hash: the browser revalidates, so a new binary's UI shows at once.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}
