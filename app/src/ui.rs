//! The Memory Inspector on the HTTP port (`ui_enabled`): its assets under `/ui/`, embedded at
//! build time (`app/build.rs`), and `memoire.v1` over gRPC-Web, the one API the browser app
//! speaks — same keys, roles, limits and errors as the gRPC port.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
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
        .route("/ui/", get(asset))
        .route("/ui/{*path}", get(asset))
        .route("/memoire.v1.MemoryService/{method}", post(grpc_web))
        .route("/memoire.v1.AdminService/{method}", post(grpc_web))
        .with_state(web)
}

async fn grpc_web(State(web): State<GrpcWeb>, req: Request) -> Response {
    web.call(req).await.into_response()
}

async fn asset(path: Option<Path<String>>, headers: HeaderMap) -> Response {
    let path = match &path {
        Some(Path(p)) if !p.is_empty() => p.as_str(),
        _ => "index.html",
    };
    let find = |name: &str| assets::ASSETS.iter().find(|(p, _, _)| *p == name);
    // The gzip copy (made by ui/build.mjs) to a browser that accepts it: about a third the bytes.
    let gzip = accepts_gzip(&headers)
        .then(|| find(&format!("{path}.gz")))
        .flatten();
    let Some((_, content_type, bytes)) = gzip.or_else(|| find(path)) else {
        return if assets::ASSETS.is_empty() {
            (StatusCode::NOT_FOUND, NOT_BUILT).into_response()
        } else {
            (StatusCode::NOT_FOUND, "not found\n").into_response()
        };
    };
    let mut response = Response::new(Body::from(*bytes));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if gzip.is_some() {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
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

/// Whether the request's `Accept-Encoding` accepts gzip: listed with a weight above zero, or
/// covered by `*` when gzip itself is not listed.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut gzip = None;
    let mut any = None;
    for coding in headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let mut parts = coding.split(';').map(str::trim);
        let name = parts.next().unwrap_or_default();
        let weight = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .map_or(Some(1.0), |(_, q)| q.trim().parse::<f32>().ok())
            .unwrap_or(0.0);
        if name.eq_ignore_ascii_case("gzip") {
            gzip = Some(weight);
        } else if name == "*" {
            any = Some(weight);
        }
    }
    gzip.or(any).is_some_and(|q| q > 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_is_sent_only_to_who_accepts_it() {
        let accepts = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            accepts_gzip(&h)
        };
        assert!(accepts("gzip, deflate, br"));
        assert!(accepts("br;q=1.0, GZIP;q=0.5"));
        assert!(accepts("*"));
        assert!(!accepts("br, deflate"));
        assert!(!accepts("gzip;q=0"));
        assert!(!accepts("gzip;q=0.0, br"));
        assert!(!accepts("gzip; Q=0.000"));
        assert!(!accepts("gzip;q=0, *"), "an explicit refusal beats *");
        assert!(accepts("gzip;q=0.001"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }
}
