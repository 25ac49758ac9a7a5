//! The read-only web dashboard: `GET /` (and `GET /dashboard`, the same page) and its script, style sheet and icon, embedded in
//! the binary. The page holds no data and needs no token; its script asks the `/v1` API and
//! `/metrics` with the bearer token the user pastes into it (kept in `sessionStorage`), so it sees
//! exactly what that token may see. See docs/dashboard.md.

use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

/// No inline script or style, no third party: everything the page loads comes from this node.
/// `form-action 'none'` keeps a sign-in form submitted without the script from sending the token
/// anywhere, and `frame-ancestors 'none'` keeps other sites from framing the page.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// One embedded file: its bytes and content type.
struct Asset {
    body: &'static [u8],
    content_type: &'static str,
}

const INDEX: Asset = Asset {
    body: include_bytes!("dashboard/index.html"),
    content_type: "text/html; charset=utf-8",
};
const SCRIPT: Asset = Asset {
    body: include_bytes!("dashboard/app.js"),
    content_type: "text/javascript; charset=utf-8",
};
const STYLE: Asset = Asset {
    body: include_bytes!("dashboard/style.css"),
    content_type: "text/css; charset=utf-8",
};
const ICON: Asset = Asset {
    body: include_bytes!("dashboard/favicon.svg"),
    content_type: "image/svg+xml",
};

/// The dashboard's routes, merged into the API's router. They take no state and no token. The page
/// is served at `/` and at `/dashboard` alike; its files stay under `/dashboard/`, which the page
/// names by absolute path, so both addresses load them.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| serve(&INDEX)))
        .route("/dashboard", get(|| serve(&INDEX)))
        .route(
            "/dashboard/",
            get(|| async { Redirect::permanent("/dashboard") }),
        )
        .route("/dashboard/app.js", get(|| serve(&SCRIPT)))
        .route("/dashboard/style.css", get(|| serve(&STYLE)))
        .route("/dashboard/favicon.svg", get(|| serve(&ICON)))
}

/// An asset with its content type and the page's security headers.
async fn serve(asset: &'static Asset) -> Response {
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        ),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ),
    ];
    (headers, asset.body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    async fn get_path(path: &str) -> Response {
        let req = Request::get(path).body(Body::empty()).unwrap();
        routes::<()>().oneshot(req).await.unwrap()
    }

    fn header_of(res: &Response, name: header::HeaderName) -> &str {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    #[tokio::test]
    async fn every_asset_is_served_with_its_type_and_the_strict_headers() {
        let cases = [
            ("/", "text/html"),
            ("/dashboard", "text/html"),
            ("/dashboard/app.js", "text/javascript"),
            ("/dashboard/style.css", "text/css"),
            ("/dashboard/favicon.svg", "image/svg+xml"),
        ];
        for (path, kind) in cases {
            let res = get_path(path).await;
            assert_eq!(res.status(), StatusCode::OK, "{path}");
            assert!(
                header_of(&res, header::CONTENT_TYPE).starts_with(kind),
                "{path}"
            );
            assert_eq!(header_of(&res, header::CONTENT_SECURITY_POLICY), CSP);
            assert_eq!(header_of(&res, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
            assert_eq!(header_of(&res, header::CACHE_CONTROL), "no-cache");
        }
    }

    #[tokio::test]
    async fn a_trailing_slash_leads_to_the_page() {
        let res = get_path("/dashboard/").await;
        assert_eq!(res.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(header_of(&res, header::LOCATION), "/dashboard");
    }

    #[test]
    fn the_policy_allows_nothing_inline_and_nothing_foreign() {
        assert!(CSP.starts_with("default-src 'self';"));
        assert!(!CSP.contains("unsafe"), "{CSP}");
        assert!(!CSP.contains("http"), "{CSP}");
    }

    #[test]
    fn the_page_carries_no_inline_script_or_style() {
        let page = std::str::from_utf8(INDEX.body).unwrap();
        assert!(page.contains(r#"<script src="/dashboard/app.js""#));
        assert!(!page.contains("<script>") && !page.contains("<style"));
        assert!(!page.contains("style=") && !page.contains("onclick"));
    }
}
