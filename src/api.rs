//! HTTP and WebSocket routes: thin handlers that check input, ask the hub, and shape answers.
//!
//! `App` mounts [`configure`]; every error is an [`ApiError`] with a JSON body. The WebSocket
//! route upgrades the connection and starts a [`Viewer`] actor for it.

use std::num::NonZeroU32;
use std::rc::Rc;
use std::sync::Arc;

use actix::Addr;
use actix_web::http::header::{self, EntityTag, IfNoneMatch};
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::admission::Admit;
use crate::cache::RaceCache;
use crate::error::ApiError;
use crate::feed::Mode;
use crate::frame_guard::{self, FrameGuard};
use crate::hub::{
    CreateSession, DeleteSession, FindSession, GetRace, GetSession, Hub, ImportRace, ListRaces,
    ListSessions, LoadRace,
};
use crate::ids::{random_token, same_secret, RaceId};
use crate::metrics::Metrics;
use crate::replication::Replication;
use crate::viewer::{Access, Connection, Viewer, ViewerLimits};
use crate::window_codec::WindowEncoding;
use crate::writer::{Wire, Writer};

/// What every handler shares: the hub's address and the limits from the config.
#[derive(Clone)]
pub struct ApiState {
    pub hub: Addr<Hub>,
    pub admin_token: String,
    pub viewer_limits: ViewerLimits,
    /// Pages that may open WebSockets.
    pub origins: crate::admission::OriginPolicy,
    /// Connection slots per client address.
    pub admissions: Addr<crate::admission::Admissions>,
    /// The header carrying the client's address behind a proxy.
    pub client_ip_header: Option<String>,
    pub max_message_bytes: usize,
    pub max_frames_per_request: u32,
    pub max_upload_bytes: u64,
    /// Where uploads are staged and kept.
    pub data_dir: std::path::PathBuf,
    /// Read for readiness only; the hub does the caching.
    pub cache: Option<Arc<RaceCache>>,
    pub metrics: Arc<Metrics>,
    pub broker: Option<Arc<Replication>>,
    /// Set on shutdown: readiness turns false before viewers are closed.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .service(
            web::scope("/api")
                .route("/races", web::get().to(list_races))
                // Before `/races/{race}`, which would otherwise take the path.
                .route("/races/rescan", web::post().to(rescan_races))
                .route("/races/{race}", web::get().to(race_meta))
                .route("/races/{race}", web::put().to(upload_race))
                .route("/races/{race}/frames", web::get().to(race_frames))
                .route("/races/{race}/events", web::get().to(race_events))
                .route("/sessions", web::get().to(list_sessions))
                .route("/sessions", web::post().to(create_session))
                .route("/sessions/{id}", web::get().to(get_session))
                .route("/sessions/{id}", web::delete().to(delete_session)),
        )
        .route("/ws/sessions/{id}", web::get().to(websocket))
        .configure(crate::pages::configure)
        .default_service(web::to(not_found));
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}

/// Proof that the request carries the admin token. Taken as a handler's first argument, so
/// the check happens before the body is read or parsed.
pub struct Admin;

impl actix_web::FromRequest for Admin {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let result = match req.app_data::<web::Data<ApiState>>() {
            Some(state) => require_admin(req, state).map(|()| Admin),
            None => Err(ApiError::Internal("no API state".into())),
        };
        std::future::ready(result)
    }
}

/// Turns extractor failures (bad JSON body, bad query string) into the same JSON error shape.
pub fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(limit)
        .error_handler(|err, _| ApiError::BadRequest(format!("bad JSON body: {err}")).into())
}

pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default()
        .error_handler(|err, _| ApiError::BadRequest(format!("bad query string: {err}")).into())
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Prometheus text exposition of every metric.
async fn metrics(state: web::Data<ApiState>) -> HttpResponse {
    if let Some(cache) = &state.cache {
        state
            .metrics
            .cache_up
            .with_label_values(&[cache.backend()])
            .set(i64::from(cache.is_ready()));
    }
    if let Some(broker) = &state.broker {
        state.metrics.broker_up.set(i64::from(broker.is_ready()));
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}

/// Ready while the hub can serve its sessions, which it does from files, memory and its local
/// timelines even when Redis is away: only shutting down makes it unready. An unreachable cache
/// or broker is reported as `degraded` (and in the `cache_up`/`broker_up` metrics) instead, so
/// that one Redis outage does not take every replica out of its Service at once.
async fn readyz(state: web::Data<ApiState>) -> HttpResponse {
    let cache = state.cache.as_ref().map(|c| {
        json!({
            "backend": c.backend(),
            "ready": c.is_ready(),
            "stats": c.stats.snapshot(),
        })
    });
    let draining = state.draining.load(std::sync::atomic::Ordering::Relaxed);
    let broker = state
        .broker
        .as_ref()
        .map(|b| json!({"ready": b.is_ready()}));
    let mut degraded = Vec::new();
    if state.cache.as_ref().is_some_and(|c| !c.is_ready()) {
        degraded.push("cache");
    }
    if state.broker.as_ref().is_some_and(|b| !b.is_ready()) {
        degraded.push("broker");
    }
    let ready = !draining;
    let body = json!({
        "ready": ready,
        "draining": draining,
        "degraded": degraded,
        "cache": cache,
        "broker": broker,
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Adds or replaces a race: the body (a race file) is streamed to a staging file under the
/// size limit, then validated and encoded by the hub before it is kept or cached.
async fn upload_race(
    _: Admin,
    race: web::Path<String>,
    mut body: web::Payload,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let id = race.into_inner();
    if let Err(err) = RaceId::parse(id.as_str()) {
        return Err(ApiError::BadRequest(err.to_string()));
    }
    let upload = state
        .data_dir
        .join(format!(".{id}.{}.upload", random_token(4)));
    let staged = stage_upload(&mut body, &upload, state.max_upload_bytes).await;
    if let Err(err) = staged {
        let _ = tokio::fs::remove_file(&upload).await;
        return Err(err);
    }
    let imported = state.hub.send(ImportRace { id, upload }).await??;
    let mut response = if imported.created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(response.json(imported.race))
}

async fn stage_upload(
    body: &mut web::Payload,
    path: &std::path::Path,
    limit: u64,
) -> Result<(), ApiError> {
    let internal = |e: std::io::Error| ApiError::Internal(format!("staging the upload: {e}"));
    let mut file = tokio::fs::File::create(path).await.map_err(internal)?;
    let mut received = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("upload interrupted: {e}")))?;
        received += chunk.len() as u64;
        if received > limit {
            return Err(ApiError::TooLarge(format!(
                "race file over the limit of {limit} bytes"
            )));
        }
        file.write_all(&chunk).await.map_err(internal)?;
    }
    file.flush().await.map_err(internal)?;
    if received == 0 {
        return Err(ApiError::BadRequest(
            "empty body: send the race file".into(),
        ));
    }
    Ok(())
}

/// Lists the data directory again at once (the watcher does so on its own within seconds).
async fn rescan_races(_: Admin, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let report = crate::datadir::rescan(&state.data_dir, &state.hub)
        .await
        .map_err(|err| match err {
            crate::datadir::RescanError::Hub(err) => ApiError::from(err),
            err => ApiError::Internal(err.to_string()),
        })?;
    Ok(HttpResponse::Ok().json(report))
}

async fn list_races(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.hub.send(ListRaces).await?))
}

/// A race's catalogue entry (metadata, its JSON and ETags), without loading its frames.
async fn race_entry(state: &ApiState, race: &str) -> Result<crate::hub::RaceEntry, ApiError> {
    state
        .hub
        .send(GetRace(race.to_owned()))
        .await?
        .ok_or_else(|| ApiError::from(crate::hub::HubError::RaceNotFound(race.to_owned())))
}

async fn race_meta(
    req: HttpRequest,
    race: web::Path<String>,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let race = race.into_inner();
    let entry = race_entry(&state, &race).await?;
    Ok(revalidated(&req, &entry.etag, entry.meta_json))
}

/// The race's timeline (events and weather), cached and revalidated like its metadata.
async fn race_events(
    req: HttpRequest,
    race: web::Path<String>,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let race = race.into_inner();
    let entry = race_entry(&state, &race).await?;
    Ok(revalidated(&req, &entry.events_etag, entry.events_json))
}

/// A JSON body that never changes for a given strong `etag`: 304 when the client has it.
fn revalidated(req: &HttpRequest, etag: &str, body: bytes::Bytes) -> HttpResponse {
    let tag = EntityTag::new_strong(etag.trim_matches('"').to_owned());
    let not_modified = match req.headers().get(header::IF_NONE_MATCH) {
        Some(_) => match header::Header::parse(req) {
            Ok(IfNoneMatch::Any) => true,
            Ok(IfNoneMatch::Items(items)) => items.iter().any(|t| t.weak_eq(&tag)),
            Err(_) => false,
        },
        None => false,
    };
    let mut response = if not_modified {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header(header::ETag(tag))
        .insert_header((header::CACHE_CONTROL, "public, max-age=86400"));
    if not_modified {
        return response.finish();
    }
    response.content_type("application/json").body(body)
}

#[derive(Deserialize)]
struct FrameRange {
    from: u32,
    to: u32,
    /// `qdelta1`: the frames as one compact window (epoch 0) instead of a msgpack array.
    enc: Option<String>,
}

async fn race_frames(
    race: web::Path<String>,
    range: web::Query<FrameRange>,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    // The range is checked against the metadata first: a bad request loads nothing.
    let race = race.into_inner();
    let entry = race_entry(&state, &race).await?;
    let FrameRange { from, to, enc } = range.into_inner();
    let compact = match enc.as_deref() {
        None | Some("msgpack") => false,
        Some("qdelta1") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "enc={other:?} is not msgpack or qdelta1"
            )))
        }
    };
    let total = entry.meta.total_frames;
    let max = state.max_frames_per_request;
    if from >= to || to > total {
        return Err(ApiError::BadRequest(format!(
            "bad range from={from} to={to}: need 0 <= from < to <= {total} (to is exclusive)"
        )));
    }
    if to - from > max {
        return Err(ApiError::BadRequest(format!(
            "range of {} frames is over the limit of {max} per request",
            to - from
        )));
    }
    let window_limit = crate::window_codec::DecodeLimits::default().max_frames as u32;
    if compact && to - from > window_limit {
        return Err(ApiError::BadRequest(format!(
            "range of {} frames is over the limit of {window_limit} per compact window",
            to - from
        )));
    }
    let encoded = state.hub.send(LoadRace(race)).await??;
    if encoded.total_frames() != total {
        return Err(ApiError::Internal(format!(
            "race {:?} changed while it loaded; ask again",
            encoded.id()
        )));
    }
    if compact {
        let indices: Vec<u32> = (from..to).collect();
        let body = web::block(move || crate::window_codec::encode_frames(&encoded, 0, &indices))
            .await
            .map_err(|e| ApiError::Internal(format!("compact window: {e}")))?
            .map_err(|e| ApiError::Internal(format!("compact window: {e}")))?;
        return Ok(HttpResponse::Ok()
            .content_type("application/octet-stream")
            .insert_header((header::CACHE_CONTROL, "public, max-age=86400"))
            .body(body));
    }
    Ok(HttpResponse::Ok()
        .content_type("application/msgpack")
        .insert_header((header::CACHE_CONTROL, "public, max-age=86400"))
        .body(encoded.frames_msgpack(from, to)))
}

async fn list_sessions(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.hub.send(ListSessions).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSession {
    race: String,
    id: Option<String>,
    #[serde(default = "yes")]
    autoplay: bool,
    /// Play again from the start a little after the finish.
    #[serde(default, rename = "loop")]
    looping: bool,
}

fn yes() -> bool {
    true
}

async fn create_session(
    _: Admin,
    req: HttpRequest,
    body: web::Json<NewSession>,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let NewSession {
        race,
        id,
        autoplay,
        looping,
    } = body.into_inner();
    let created = state
        .hub
        .send(CreateSession {
            race,
            id,
            autoplay,
            looping,
        })
        .await??;
    let urls = SessionUrls::new(&req, &created.id, &created.control_token);
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/api/sessions/{}", created.id)))
        .json(json!({
            "id": created.id,
            "race": created.race,
            "control_token": created.control_token,
            "loop": looping,
            "watch_url": urls.watch,
            "control_page_url": urls.control_page,
            "ws_url": urls.ws,
            "control_url": urls.control_ws,
        })))
}

/// Where a new session is watched and controlled: the pages, and the WebSocket URLs behind
/// them. The scheme and host are the ones the client used, as `ConnectionInfo` reads them
/// (`Forwarded`, `X-Forwarded-Proto`/`-Host`, else the request): behind TLS the pages are
/// `https` and the sockets `wss`.
struct SessionUrls {
    watch: String,
    control_page: String,
    ws: String,
    control_ws: String,
}

impl SessionUrls {
    fn new(req: &HttpRequest, id: &str, token: &str) -> Self {
        let info = req.connection_info();
        let secure = info.scheme().eq_ignore_ascii_case("https");
        let (http, ws) = if secure {
            ("https", "wss")
        } else {
            ("http", "ws")
        };
        let host = info.host();
        let watch = format!("{http}://{host}/sessions/{id}");
        let ws = format!("{ws}://{host}/ws/sessions/{id}");
        Self {
            control_page: format!("{watch}?token={token}"),
            control_ws: format!("{ws}?token={token}"),
            watch,
            ws,
        }
    }
}

async fn get_session(
    id: web::Path<String>,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let info = state
        .hub
        .send(GetSession(id.clone()))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no session {id:?}")))?;
    Ok(HttpResponse::Ok().json(info))
}

async fn delete_session(
    _: Admin,
    id: web::Path<String>,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    state
        .hub
        .send(DeleteSession {
            id: id.into_inner(),
        })
        .await??;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize)]
struct WsQuery {
    token: Option<String>,
    #[serde(default)]
    mode: Mode,
    /// Look-ahead window encodings the client accepts, in its order of preference.
    enc: Option<String>,
}

async fn websocket(
    req: HttpRequest,
    body: web::Payload,
    id: web::Path<String>,
    query: web::Query<WsQuery>,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, actix_web::Error> {
    let id = id.into_inner();
    let encoding = match query.enc.as_deref() {
        None => WindowEncoding::default(),
        Some(accepted) => WindowEncoding::negotiate(accepted).ok_or_else(|| {
            let known: Vec<&str> = WindowEncoding::ALL.iter().map(|e| e.as_str()).collect();
            ApiError::BadRequest(format!(
                "enc={accepted:?} names no window encoding this hub speaks; it speaks {}",
                known.join(", ")
            ))
        })?,
    };
    // A browser says which site's page opens a socket; only allowed pages may (a page elsewhere
    // could otherwise drive a session with a control URL it learned).
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        let info = req.connection_info();
        if !state.origins.allows(origin, Some(info.host())) {
            state
                .metrics
                .ws_refused
                .with_label_values(&["origin"])
                .inc();
            return Err(ApiError::Forbidden(format!(
                "pages from {origin:?} may not open this hub's WebSockets (allow them with --allowed-origins)"
            ))
            .into());
        }
    }
    let ip = client_ip(&req, state.client_ip_header.as_deref());
    let ticket = match state.admissions.send(Admit { ip }).await {
        Ok(Ok(ticket)) => ticket,
        Ok(Err(full)) => {
            state
                .metrics
                .ws_refused
                .with_label_values(&["per_ip"])
                .inc();
            return Err(ApiError::TooManyRequests(full.to_string()).into());
        }
        Err(err) => return Err(ApiError::from(err).into()),
    };
    let (session, token_sha256) = state
        .hub
        .send(FindSession(id.clone()))
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::NotFound(format!("no session {id:?}")))?;
    let can_control = query
        .token
        .as_deref()
        .is_some_and(|t| token_sha256.matches(t));
    // actix-ws does the handshake and parses what the client sends; what the hub sends goes
    // through its own writer, which writes bytes framed once per session instead of per viewer.
    // Frame headers are checked as bytes arrive, before actix-ws buffers a frame's payload.
    let verdict = frame_guard::Verdict::default();
    let guarded = FrameGuard::new(body.into_inner(), state.max_message_bytes, verdict.clone());
    let mut guarded =
        actix_web::dev::Payload::from(Box::pin(guarded) as actix_http::BoxedPayloadStream);
    let body = web::Payload::from_request(&req, &mut guarded).await?;
    let (response, _, stream) = actix_ws::handle(&req, body)
        .map_err(|e| ApiError::BadRequest(format!("not a WebSocket upgrade: {e}")))?;
    let stream = stream
        .max_frame_size(state.max_message_bytes)
        .aggregate_continuations()
        .max_continuation_size(state.max_message_bytes);
    let wire = Rc::new(Wire::default());
    Viewer::start(
        session,
        state.metrics.clone(),
        Access {
            can_control,
            token_sha256,
            mode: query.mode,
            encoding,
        },
        state.viewer_limits.clone(),
        Connection {
            stream,
            wire: wire.clone(),
            verdict,
            ticket,
        },
    );
    Ok(response
        .map_body(|_, body| Writer::new(wire, body))
        .map_into_boxed_body())
}

/// The client's address: from `header` behind a proxy (its first address), else the peer's.
fn client_ip(req: &HttpRequest, header: Option<&str>) -> std::net::IpAddr {
    let forwarded = header
        .and_then(|name| req.headers().get(name))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|first| first.trim().parse().ok());
    forwarded
        .or_else(|| req.peer_addr().map(|a| a.ip()))
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

fn require_admin(req: &HttpRequest, state: &ApiState) -> Result<(), ApiError> {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(token) if same_secret(token.trim(), &state.admin_token) => Ok(()),
        _ => Err(ApiError::Unauthorized),
    }
}

/// Rate limit from the config, which clap keeps at 1 or more.
pub fn commands_per_second(value: u32) -> NonZeroU32 {
    NonZeroU32::new(value).unwrap_or(NonZeroU32::MIN)
}
