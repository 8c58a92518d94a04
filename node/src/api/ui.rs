//! The fleet page (`/ui/`): three static files compiled into the binary, so every node serves
//! it on an air-gapped host. The page reads and steers the node through the public API only,
//! with the caller's own credentials (`docs/ui.md`, D76 in `docs/decisions.md`).
//!
//! **API Boundary:** the files hold no data and need no credentials; every call the page makes
//! goes through `access::authorize` like any other client's.

use std::sync::LazyLock;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use sha2::{Digest, Sha256};

/// One embedded file with its content type and strong `ETag`.
struct Asset {
    body: &'static [u8],
    content_type: &'static str,
    etag: String,
}

impl Asset {
    fn new(body: &'static [u8], content_type: &'static str) -> Asset {
        let digest = hex::encode(Sha256::digest(body));
        Asset { body, content_type, etag: format!("\"{}\"", &digest[..32]) }
    }
}

static INDEX: LazyLock<Asset> =
    LazyLock::new(|| Asset::new(include_bytes!("ui/index.html"), "text/html; charset=utf-8"));
static SCRIPT: LazyLock<Asset> =
    LazyLock::new(|| Asset::new(include_bytes!("ui/app.js"), "text/javascript; charset=utf-8"));
static STYLE: LazyLock<Asset> = LazyLock::new(|| Asset::new(include_bytes!("ui/style.css"), "text/css; charset=utf-8"));

/// Only the node's own files and API: no inline script or style, no other origin, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// `GET /ui`: the page lives at `/ui/`, so that its relative links resolve under it.
pub async fn redirect() -> Redirect {
    Redirect::permanent("/ui/")
}

pub async fn index(headers: HeaderMap) -> Response {
    serve(&INDEX, &headers)
}

pub async fn script(headers: HeaderMap) -> Response {
    serve(&SCRIPT, &headers)
}

pub async fn style(headers: HeaderMap) -> Response {
    serve(&STYLE, &headers)
}

/// The file, or `304` when the client's `If-None-Match` names its tag. `no-cache`: a browser
/// asks again each time (cheap, with the tag), so a node upgraded in place serves its own page.
fn serve(asset: &Asset, headers: &HeaderMap) -> Response {
    let not_modified = super::if_none_match(headers, &asset.etag);
    let status = if not_modified { StatusCode::NOT_MODIFIED } else { StatusCode::OK };
    let body = if not_modified { &[][..] } else { asset.body };
    let mut response = (status, body).into_response();
    let answer = response.headers_mut();
    answer.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    answer.insert(header::ETAG, HeaderValue::from_str(&asset.etag).expect("a hex tag is a header value"));
    answer.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    answer.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    answer.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    answer.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    answer.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_served_with_its_type_a_strict_policy_and_a_tag_that_answers_304() {
        let first = serve(&SCRIPT, &HeaderMap::new());
        assert_eq!(first.status(), StatusCode::OK);
        assert_eq!(first.headers()[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
        let policy = first.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(policy.starts_with("default-src 'self'") && !policy.contains("unsafe"), "{policy}");
        let mut again = HeaderMap::new();
        again.insert(header::IF_NONE_MATCH, first.headers()[header::ETAG].clone());
        assert_eq!(serve(&SCRIPT, &again).status(), StatusCode::NOT_MODIFIED);
        assert_ne!(INDEX.etag, SCRIPT.etag);
    }

    #[test]
    fn the_page_loads_nothing_from_another_origin() {
        for file in [INDEX.body, SCRIPT.body, STYLE.body] {
            let text = std::str::from_utf8(file).unwrap();
            assert!(!text.contains("http://") && !text.contains("https://"), "an absolute URL in a page file");
        }
    }
}
