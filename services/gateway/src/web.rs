//! The web page at `GET /`: a page to try every capability of the gateway's HTTP API from a
//! browser (generate with streamed progress and previews, variations, interpolation, text diffs,
//! inpainting with a painted mask). Its files (`services/gateway/web/`) are plain HTML, CSS and
//! JavaScript embedded in the binary: no build step, nothing fetched from elsewhere at run time.
//!
//! Every answer carries a strong `ETag` (a hash of the file) and `Cache-Control: no-cache`, so a
//! browser revalidates and gets `304 Not Modified` while the binary is the same; and a strict
//! `Content-Security-Policy`: scripts, styles and fetches from this origin only, images from this
//! origin and from `data:`/`blob:` URLs (results arrive as base64), no inline script or style, no
//! framing.

use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

/// The policy every answer of the page carries.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; font-src 'self'; \
     manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file.
#[derive(Debug)]
struct Asset {
    /// Its name under `/web/` (`index.html` is also `/`).
    name: &'static str,
    /// What `Content-Type` says it is.
    content_type: &'static str,
    /// Its bytes, in the binary.
    body: &'static [u8],
}

/// The page's files.
const FILES: [Asset; 4] = [
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../web/index.html"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../web/app.css"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../web/app.js"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../web/icon.svg"),
    },
];

/// Each file's `ETag` (quoted, strong), computed once.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    FILES
        .iter()
        .map(|asset| {
            let digest = Sha256::digest(asset.body);
            let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
            HeaderValue::from_str(&format!("\"{hex}\"")).expect("hex is a valid header value")
        })
        .collect()
});

/// The page's routes: `GET /` (the page) and `GET /web/{file}` (its assets); `HEAD` too.
pub fn router() -> Router {
    Router::new()
        .route("/", get(|headers: HeaderMap| async move { answer("index.html", &headers) }))
        .route(
            "/web/{file}",
            get(|Path(file): Path<String>, headers: HeaderMap| async move {
                answer(&file, &headers)
            }),
        )
}

/// The answer to a request for the file `name` with request headers `headers`: the file, `304`
/// when `If-None-Match` names its current ETag, or `404`.
fn answer(name: &str, headers: &HeaderMap) -> Response {
    let Some(index) = FILES.iter().position(|asset| asset.name == name) else {
        let mut response = (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("no file {name:?} in the web page's assets\n"),
        )
            .into_response();
        security_headers(response.headers_mut());
        return response;
    };
    let asset = &FILES[index];
    let etag = &ETAGS[index];
    let mut response = if matches(headers, etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response()
    };
    let out = response.headers_mut();
    out.insert(header::ETAG, etag.clone());
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    security_headers(out);
    response
}

/// Whether `If-None-Match` in `headers` names `etag` (or is `*`); weak tags compare by their
/// value, as RFC 9110 asks for this header.
fn matches(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    let want = etag.to_str().unwrap_or_default();
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == want)
}

/// The headers that keep the page to its own origin.
fn security_headers(headers: &mut HeaderMap) {
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
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

#[cfg(test)]
mod tests {
    use axum::body::{Body, to_bytes};
    use axum::http::{Method, Request};
    use tower::ServiceExt;

    use super::*;

    async fn get(path: &str, if_none_match: Option<&str>) -> (StatusCode, HeaderMap, Vec<u8>) {
        request(Method::GET, path, if_none_match).await
    }

    async fn request(
        method: Method,
        path: &str,
        if_none_match: Option<&str>,
    ) -> (StatusCode, HeaderMap, Vec<u8>) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(tag) = if_none_match {
            request = request.header(header::IF_NONE_MATCH, tag);
        }
        let response = router()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, headers, body.to_vec())
    }

    fn value_of(headers: &HeaderMap, name: header::HeaderName) -> &str {
        headers
            .get(&name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }

    /// `/` is the HTML page, which loads its script and style from `/web/`; each asset comes
    /// with its own content type and its embedded bytes.
    #[tokio::test]
    async fn serves_every_file_with_its_content_type() {
        let (status, headers, body) = get("/", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            value_of(&headers, header::CONTENT_TYPE),
            "text/html; charset=utf-8"
        );
        let html = String::from_utf8(body).unwrap();
        assert!(html.contains(r#"<script src="/web/app.js" defer></script>"#));
        assert!(html.contains(r#"href="/web/app.css""#));
        for (path, content_type, starts) in [
            (
                "/web/index.html",
                "text/html; charset=utf-8",
                "<!doctype html>",
            ),
            ("/web/app.css", "text/css; charset=utf-8", "/*"),
            ("/web/app.js", "text/javascript; charset=utf-8", "//"),
            ("/web/icon.svg", "image/svg+xml", "<svg"),
        ] {
            let (status, headers, body) = get(path, None).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert_eq!(
                value_of(&headers, header::CONTENT_TYPE),
                content_type,
                "{path}"
            );
            assert!(
                String::from_utf8(body).unwrap().starts_with(starts),
                "{path} starts with {starts:?}"
            );
        }
        let (status, _, body) = request(Method::HEAD, "/web/app.js", None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.is_empty(), "HEAD answers no body");
    }

    /// Every file has its own strong ETag; `If-None-Match` with it (alone, in a list, weak, or
    /// `*`) answers 304 with no body; a stale tag answers the file again.
    #[tokio::test]
    async fn etag_and_not_modified() {
        let (_, headers, _) = get("/web/app.css", None).await;
        let etag = value_of(&headers, header::ETAG).to_string();
        assert!(
            etag.starts_with('"') && etag.ends_with('"') && etag.len() == 26,
            "{etag}"
        );
        assert_eq!(value_of(&headers, header::CACHE_CONTROL), "no-cache");
        let (_, other, _) = get("/web/app.js", None).await;
        assert_ne!(
            value_of(&other, header::ETAG),
            etag,
            "each file has its own tag"
        );

        for tag in [
            etag.clone(),
            format!("\"stale\", {etag}"),
            format!("W/{etag}"),
            "*".to_string(),
        ] {
            let (status, headers, body) = get("/web/app.css", Some(&tag)).await;
            assert_eq!(status, StatusCode::NOT_MODIFIED, "If-None-Match: {tag}");
            assert!(body.is_empty());
            assert_eq!(value_of(&headers, header::ETAG), etag);
            assert!(headers.contains_key(header::CONTENT_SECURITY_POLICY));
        }
        let (status, _, body) = get("/web/app.css", Some("\"stale\"")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, FILES[1].body);
    }

    /// The page and its assets carry the strict policy (no inline script, only this origin)
    /// and the other hardening headers; so does a 404, which names the missing file.
    #[tokio::test]
    async fn content_security_policy() {
        for path in ["/", "/web/app.js", "/web/nope.js"] {
            let (_, headers, _) = get(path, None).await;
            let csp = value_of(&headers, header::CONTENT_SECURITY_POLICY);
            assert!(csp.starts_with("default-src 'none';"), "{path}: {csp}");
            assert!(csp.contains("script-src 'self';"), "{path}: {csp}");
            assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
            assert!(csp.contains("frame-ancestors 'none'"));
            assert_eq!(
                value_of(&headers, header::X_CONTENT_TYPE_OPTIONS),
                "nosniff"
            );
            assert_eq!(value_of(&headers, header::X_FRAME_OPTIONS), "DENY");
        }
        let (status, _, body) = get("/web/nope.js", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(String::from_utf8(body).unwrap().contains("\"nope.js\""));
    }

    /// The HTML uses no inline script, inline style or event-handler attribute (the policy
    /// would block them) and loads nothing from another origin.
    #[test]
    fn page_needs_nothing_the_policy_blocks() {
        let html = std::str::from_utf8(FILES[0].body).unwrap();
        for tag in html.split("<script").skip(1) {
            let open = &tag[..tag.find('>').unwrap()];
            assert!(
                open.contains("src=\"/web/"),
                "inline script: <script{open}>"
            );
        }
        assert!(!html.contains("<style"), "inline <style>");
        assert!(!html.contains(" style=\""), "a style attribute");
        assert!(!html.contains(" onclick=") && !html.contains(" onload="));
        for asset in FILES.iter().filter(|a| !a.name.ends_with(".svg")) {
            let text = std::str::from_utf8(asset.body).unwrap();
            assert!(
                !text.contains("http://") && !text.contains("https://"),
                "{} names another origin",
                asset.name
            );
        }
    }
}
