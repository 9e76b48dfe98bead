//! The inspector page and its files, compiled into the binary (`include_str!`): nothing is
//! fetched from elsewhere and nothing is built at run time.
//!
//! Each file is served with the inspector's security headers, `Cache-Control: no-cache` and
//! an `ETag` computed at compile time, so a browser revalidates with one small request and
//! gets `304 Not Modified` until the node is upgraded.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use super::secured;

/// One embedded file.
#[derive(Debug)]
pub struct Asset {
    /// Its name under `/admin/`.
    pub name: &'static str,
    /// Its media type.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: &'static str,
    /// Its entity tag, quoted.
    etag: &'static str,
}

/// FNV-1a over `bytes`: a content hash for the entity tag, computed by the compiler.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut at = 0;
    while at < bytes.len() {
        hash ^= bytes[at] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        at += 1;
    }
    hash
}

/// `"<16 hex digits>"`: a quoted entity tag of `body`.
const fn etag(body: &str) -> [u8; 18] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let hash = fnv1a(body.as_bytes());
    let mut tag = [b'"'; 18];
    let mut digit = 0;
    while digit < 16 {
        tag[1 + digit] = HEX[((hash >> (60 - 4 * digit)) & 0xf) as usize];
        digit += 1;
    }
    tag
}

macro_rules! asset {
    ($name:literal, $content_type:literal) => {{
        const BODY: &str = include_str!(concat!("assets/", $name));
        const TAG: [u8; 18] = etag(BODY);
        Asset {
            name: $name,
            content_type: $content_type,
            body: BODY,
            etag: match std::str::from_utf8(&TAG) {
                Ok(tag) => tag,
                Err(_) => panic!("an entity tag is ASCII"),
            },
        }
    }};
}

/// The page.
pub const PAGE: Asset = asset!("index.html", "text/html; charset=utf-8");

/// Everything else, by name under `/admin/`.
pub const FILES: [Asset; 3] = [
    asset!("admin.js", "text/javascript; charset=utf-8"),
    asset!("admin.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
];

/// `asset`, or `304` when the browser holds this version.
fn serve(req: &HttpRequest, asset: &Asset) -> HttpResponse {
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|tag| tag.trim() == asset.etag));
    let mut response = if fresh {
        secured(HttpResponse::NotModified())
    } else {
        secured(HttpResponse::Ok())
    };
    response
        .insert_header((header::ETAG, asset.etag))
        .insert_header((header::CACHE_CONTROL, "no-cache"));
    if fresh {
        return response.finish();
    }
    response
        .insert_header((header::CONTENT_TYPE, asset.content_type))
        .body(asset.body)
}

/// `GET /admin`: the page.
pub(in crate::http) async fn page(req: HttpRequest) -> HttpResponse {
    serve(&req, &PAGE)
}

/// `GET /admin/{file}`: the page's script, style and icon.
pub(in crate::http) async fn file(req: HttpRequest, name: web::Path<String>) -> HttpResponse {
    match FILES.iter().find(|asset| asset.name == name.as_str()) {
        Some(asset) => serve(&req, asset),
        None => secured(HttpResponse::NotFound())
            .content_type("text/plain; charset=utf-8")
            .body("no such file in the inspector\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_tags_follow_the_content() {
        assert_eq!(&etag(""), b"\"cbf29ce484222325\"");
        assert_ne!(PAGE.etag, FILES[0].etag);
    }

    #[test]
    fn the_page_loads_only_its_own_files_and_has_no_inline_code() {
        let page = PAGE.body;
        for asset in &FILES {
            assert!(
                page.contains(&format!("/admin/{}", asset.name)),
                "{}",
                asset.name
            );
        }
        assert!(!page.contains("style="), "inline style");
        for (at, _) in page.match_indices('=') {
            let word = page[..at]
                .rsplit([' ', '<', '\n'])
                .next()
                .unwrap_or_default();
            assert!(!word.starts_with("on"), "inline handler {word}");
        }
        assert_eq!(page.matches("<script").count(), 1);
        assert!(page.contains(r#"<script src="/admin/admin.js" defer></script>"#));
        assert!(!page.contains("http:") && !page.contains("https:"));
    }
}
