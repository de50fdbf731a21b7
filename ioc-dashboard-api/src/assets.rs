//! The dashboard: its page (`/`) and files (`/assets/`), embedded in the binary so that
//! `ioc up` needs no npm and no network. Its own code is `web/` (no build step); the libraries
//! are `web/vendor/`, copied there by `scripts/update-web-vendor.sh` from `web/package.json`.
//! The page runs under a strict Content-Security-Policy: its own origin, plus the tile server's
//! when one is configured (`api.tile_url`), and nothing else.

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::error::{ApiFailure, ApiResult};
use crate::AppState;

/// Name, content type, bytes.
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("web/app.js"),
    ),
    (
        "i18n.js",
        "text/javascript; charset=utf-8",
        include_bytes!("web/i18n.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("web/app.css"),
    ),
    (
        "province.geojson",
        "application/geo+json",
        include_bytes!("web/province.geojson"),
    ),
    (
        "leaflet.js",
        "text/javascript; charset=utf-8",
        include_bytes!("web/vendor/leaflet.js"),
    ),
    (
        "leaflet.css",
        "text/css; charset=utf-8",
        include_bytes!("web/vendor/leaflet.css"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("web/vendor/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("web/vendor/uPlot.min.css"),
    ),
];

/// The names `/assets/` serves.
pub fn names() -> Vec<&'static str> {
    FILES.iter().map(|(name, _, _)| *name).collect()
}

/// `GET /assets/{file}`.
pub(crate) async fn asset(Path(name): Path<String>) -> ApiResult<Response> {
    let Some((_, kind, bytes)) = FILES.iter().find(|(n, _, _)| *n == name) else {
        return Err(ApiFailure::new(
            axum::http::StatusCode::NOT_FOUND,
            "not_found",
            format!("no asset {name:?}"),
        ));
    };
    Ok((
        [
            (header::CONTENT_TYPE, *kind),
            // Not fingerprinted: a browser checks again rather than keeping an old app.js.
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        *bytes,
    )
        .into_response())
}

/// The page's Content-Security-Policy: only this origin, and the tile server for images.
pub fn content_security_policy(tile_origin: Option<&str>) -> String {
    let tiles = tile_origin.map(|o| format!(" {o}")).unwrap_or_default();
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:{tiles}; \
         connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
         form-action 'self'; frame-ancestors 'none'"
    )
}

fn escape_attribute(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `GET /`: the dashboard page, with the tile URL for the map.
pub(crate) async fn index(State(state): State<AppState>) -> Response {
    let page = include_str!("web/index.html")
        .replace("{{TILE_URL}}", &escape_attribute(&state.config.tile_url));
    let csp = content_security_policy(state.config.tile_origin().as_deref());
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8".to_string()),
            (header::CONTENT_SECURITY_POLICY, csp),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
            (header::REFERRER_POLICY, "no-referrer".to_string()),
        ],
        page,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_may_load_only_from_its_origin_and_the_tile_server() {
        let none = content_security_policy(None);
        assert!(none.contains("script-src 'self';"), "{none}");
        assert!(none.contains("img-src 'self' data:;"), "{none}");
        assert!(!none.contains("unsafe"), "no inline script or eval: {none}");
        let tiles = content_security_policy(Some("https://tiles.daklak.gov.vn"));
        assert!(
            tiles.contains("img-src 'self' data: https://tiles.daklak.gov.vn;"),
            "{tiles}"
        );
        assert_eq!(escape_attribute("a\"<b>&"), "a&quot;&lt;b&gt;&amp;");
    }

    #[test]
    fn every_file_the_page_names_is_served() {
        let page = include_str!("web/index.html");
        for name in page
            .split("/assets/")
            .skip(1)
            .map(|rest| rest.split('"').next().unwrap())
        {
            assert!(names().contains(&name), "{name} is not embedded");
        }
        assert!(!page.contains("<script>"), "no inline script");
        assert!(!page.contains("style="), "no inline style");
    }
}
