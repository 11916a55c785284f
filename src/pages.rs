//! The browser viewer's pages and scripts, embedded in the binary: pages and styles from
//! `web/src/`, scripts from `web/dist/` (bundled by `web/build.mjs` and committed), so running the
//! hub needs no front-end build.
//! `api::configure` mounts [`configure`]: `/` lists sessions, `/sessions/{id}` watches one,
//! `/favicon.ico` points at the icon.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

use crate::error::ApiError;

/// Name, content type and contents of every asset.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/dist/app.js"),
    ),
    (
        "worker.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/dist/worker.js"),
    ),
    (
        "sessions.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/dist/sessions.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../web/src/style.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("../web/src/favicon.svg"),
    ),
];

const INDEX: &str = include_str!("../web/src/index.html");
const SESSION: &str = include_str!("../web/src/session.html");

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(|| page(INDEX)))
        .route("/sessions/{id}", web::get().to(|| page(SESSION)))
        .route("/assets/{name}", web::get().to(asset))
        // For clients that ask without reading the pages' icon link.
        .route("/favicon.ico", web::get().to(favicon));
}

async fn favicon() -> HttpResponse {
    HttpResponse::MovedPermanently()
        .insert_header((header::LOCATION, "/assets/favicon.svg"))
        .finish()
}

async fn page(html: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(html)
}

async fn asset(name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let (_, content_type, body) = ASSETS
        .iter()
        .find(|(n, _, _)| *n == name.as_str())
        .ok_or_else(|| ApiError::NotFound(format!("no asset {name:?}")))?;
    // Revalidated on every load, so a new hub version is picked up at once.
    Ok(HttpResponse::Ok()
        .content_type(*content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(*body))
}
