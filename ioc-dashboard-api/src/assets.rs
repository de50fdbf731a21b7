//! The dashboard: its page (`/`) and files (`/assets/`), embedded in the binary so that
//! `ioc up` needs no npm and no network. Its own code is `web/` (no build step); the libraries
//! are `web/vendor/`, copied there by `scripts/update-web-vendor.sh` from `web/package.json`.
//! The page runs under a strict Content-Security-Policy: its own origin, plus the tile server's
//! when one is configured (`api.tile_url`), and nothing else.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
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

/// Each file gzipped, made once on first request.
static GZIPPED: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).expect("writing to a Vec");
    encoder.finish().expect("writing to a Vec")
}

/// Whether the request's `Accept-Encoding` takes gzip.
fn takes_gzip(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',').any(|e| {
                let mut parts = e.split(';');
                parts.next().is_some_and(|name| name.trim() == "gzip")
                    && !parts.any(|q| q.trim().replace(' ', "") == "q=0")
            })
        })
}

/// `GET /assets/{file}`, gzipped for a client that takes it.
pub(crate) async fn asset(Path(name): Path<String>, headers: HeaderMap) -> ApiResult<Response> {
    let Some(i) = FILES.iter().position(|(n, _, _)| *n == name) else {
        return Err(ApiFailure::new(
            axum::http::StatusCode::NOT_FOUND,
            "not_found",
            format!("no asset {name:?}"),
        ));
    };
    let (_, kind, bytes) = FILES[i];
    let common = [
        (header::CONTENT_TYPE, kind),
        // Not fingerprinted: a browser checks again rather than keeping an old app.js.
        (header::CACHE_CONTROL, "no-cache"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::VARY, "accept-encoding"),
    ];
    if takes_gzip(&headers) {
        let gzipped = GZIPPED.get_or_init(|| FILES.iter().map(|(_, _, b)| gzip(b)).collect());
        let body = gzipped[i].as_slice();
        return Ok((common, [(header::CONTENT_ENCODING, "gzip")], body).into_response());
    }
    Ok((common, bytes).into_response())
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

    /// The keys of one language's block of `i18n.js` (`  vi: {` … `  },`).
    fn words(lang: &str) -> std::collections::BTreeSet<String> {
        let text = include_str!("web/i18n.js");
        let start = text
            .find(&format!("\n  {lang}: {{"))
            .expect("the language's block");
        let block = &text[start..];
        let block = &block[..block.find("\n  },").expect("its end")];
        block
            .split(['\n', ','])
            .filter_map(|part| {
                let (key, _) = part.trim().split_once(": \"")?;
                key.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
                    .then(|| key.to_string())
            })
            .collect()
    }

    /// Every word the page asks for (`data-i18n="key"` in the page, `t("key")` in its script)
    /// is there in both languages, and neither language has a word the other lacks.
    #[test]
    fn every_word_of_the_page_is_in_vietnamese_and_english() {
        let (vi, en) = (words("vi"), words("en"));
        assert!(vi.len() > 50, "{vi:?}");
        assert_eq!(
            vi.symmetric_difference(&en).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "in one language only"
        );
        let mut asked = Vec::new();
        for (text, open) in [
            (include_str!("web/index.html"), "data-i18n=\""),
            (include_str!("web/app.js"), "t(\""),
        ] {
            for (at, _) in text.match_indices(open) {
                // `t("` alone, not the end of `split("` or `set("`.
                let before = text[..at].chars().next_back();
                if open == "t(\"" && before.is_some_and(|c| c.is_alphanumeric() || c == '.') {
                    continue;
                }
                let rest = &text[at + open.len()..];
                asked.push(rest[..rest.find('"').unwrap_or(0)].to_string());
            }
        }
        let missing: Vec<&String> = asked.iter().filter(|k| !vi.contains(*k)).collect();
        assert!(asked.len() > 50, "{asked:?}");
        assert!(missing.is_empty(), "words with no translation: {missing:?}");
    }

    #[test]
    fn a_file_is_gzipped_only_for_a_client_that_takes_it() {
        let asks = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT_ENCODING, v.parse().unwrap());
            takes_gzip(&h)
        };
        assert!(asks("gzip, deflate, br"));
        assert!(asks("br;q=1.0, gzip;q=0.8"));
        assert!(!asks("gzip;q=0"));
        assert!(!asks("br"));
        assert!(!takes_gzip(&HeaderMap::new()));
        let leaflet = FILES.iter().find(|f| f.0 == "leaflet.js").unwrap().2;
        let small = gzip(leaflet);
        assert!(
            small.len() * 2 < leaflet.len(),
            "{} of {}",
            small.len(),
            leaflet.len()
        );
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&small[..]), &mut back)
            .unwrap();
        assert_eq!(back, leaflet);
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
