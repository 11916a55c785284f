//! The composition root: [`App::build`] binds the listener, scans the data directory, opens
//! the cache, starts the hub actor (with Redis replication or the local session store), resumes
//! kept sessions, starts the demo session and the HTTP server; [`App::run`] serves until a
//! signal and shuts down through [`crate::shutdown`]. `main`, the integration tests and the
//! benches all start the real server through it.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr, AsyncContext};
use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, HttpServer};

use crate::cache::RaceCache;
use crate::config::Config;
use crate::hub::{CreateSession, Created, Hub, RaceEntry, Shutdown};
use crate::metrics::Metrics;
use crate::race::GenParams;
use crate::replication::{Publisher, Replication};
use crate::session::CloseReason;
use crate::shutdown::{shutdown_signal, Tasks};
use crate::viewer::ViewerLimits;
use crate::{admission, api, datadir, hub, ids, race, session_store};

use crate::datadir::scan_races;

/// Why the hub could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    DataDir(#[from] datadir::ScanError),
    #[error("could not listen on {addr}: the address is already in use by another process; pick another with --bind HOST:PORT (or REPLAY_HUB_BIND)")]
    AddrInUse { addr: SocketAddr },
    #[error("could not generate the demo race: {0}")]
    Demo(String),
    #[error("could not bind {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("could not start the demo session: {0}")]
    DemoSession(String),
}

/// A running hub: bound, with its races scanned and its demo session playing.
pub struct App {
    draining: Arc<AtomicBool>,
    server: Server,
    addr: SocketAddr,
    hub: Addr<Hub>,
    admin_token: String,
    /// True when the admin token was generated here rather than configured.
    admin_token_generated: bool,
    demo: Option<Created>,
    /// Sessions resumed from the data directory, by id.
    resumed: Vec<String>,
    shutdown_timeout: Duration,
    /// Keeps the catalogue in step with the data directory while the hub runs.
    _watcher: datadir::DataDirWatcher,
    /// Background tasks, stopped once the server has.
    tasks: Tasks,
}

/// Binds the listener first, so a taken port fails before any race is loaded.
fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let listener = TcpListener::bind(addr).map_err(|source| match source.kind() {
        io::ErrorKind::AddrInUse => StartError::AddrInUse { addr },
        _ => StartError::Bind { addr, source },
    })?;
    let local = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    Ok((listener, local))
}

impl App {
    /// Starts everything but does not wait: call [`App::run`]. Must run inside an actix system.
    pub async fn build(config: Config) -> Result<Self, StartError> {
        let (listener, addr) = bind(config.bind)?;
        let tasks = Tasks::default();
        let cache = RaceCache::open(
            &config.cache.spec(&config.data_dir),
            &config.cache.cache_prefix,
            config.cache.cache_compression,
            &tasks,
        );
        let mut races = scan_races(&config.data_dir)?;
        datadir::remove_stale_uploads(&config.data_dir);
        let cached = match &cache {
            Some(cache) => cached_race_ids(cache).await,
            None => Vec::new(),
        };
        if races.is_empty() && cached.is_empty() {
            races.push(generate_demo(&config.data_dir, config.demo_laps)?);
        }
        let mut candidates: Vec<String> = races.iter().map(|r| r.meta.id.clone()).collect();
        candidates.extend(cached);
        let metrics = Metrics::new();
        metrics.sample_process(Duration::from_secs(1), &tasks);
        // Without a broker, sessions are kept in the data directory for a restart.
        let store = match &config.broker {
            Some(_) => None,
            None => session_store::SessionStore::open(&config.data_dir)
                .inspect_err(|err| {
                    tracing::warn!(%err, "sessions will not survive a restart");
                })
                .ok(),
        };
        let (broker_url, prefix) = (config.broker.clone(), config.cache.cache_prefix.clone());
        let mut broker = None;
        let local_store = store
            .clone()
            .map(|store| session_store::LocalStore::new(store).start());
        let hub = Hub::create(|ctx| {
            broker = broker_url
                .as_deref()
                .map(|url| Replication::connect(url, &prefix, ctx.address().recipient(), &tasks));
            let mut hub = Hub::new(
                races,
                cache.clone(),
                config.data_dir.clone(),
                config.max_sessions,
                config.max_viewers_per_session,
                config.lookahead_window(),
                metrics.clone(),
            )
            .with_limits(hub::RaceLimits {
                memory_budget: config.race_memory_budget,
                load_retry: Duration::from_millis(config.load_retry_ms),
                session_commands_per_second: api::commands_per_second(
                    config.session_commands_per_second,
                ),
            })
            .with_loop_pause(Duration::from_millis(config.loop_pause_ms));
            if let Some(replication) = &broker {
                let publisher = Publisher::new(replication.clone()).start();
                hub = hub.with_replication(replication.clone(), publisher.recipient());
            }
            if let Some(store) = &local_store {
                hub = hub.with_store(store.clone());
            }
            hub
        });
        let admin_token = config
            .admin_token
            .clone()
            .unwrap_or_else(|| ids::random_token(16));

        if let Some(broker) = &broker {
            // Give Redis a moment, so the first requests see sessions other replicas have.
            broker.wait_ready(Duration::from_secs(2)).await;
        }
        let resumed = match &store {
            Some(store) => resume_sessions(&hub, store, config.max_sessions).await,
            None => Vec::new(),
        };
        let demo = match config.demo_session.as_str() {
            "" => None,
            id => start_demo(&hub, id, candidates).await?,
        };

        let draining = Arc::new(AtomicBool::new(false));
        let state = api::ApiState {
            hub: hub.clone(),
            admin_token: admin_token.clone(),
            viewer_limits: ViewerLimits {
                heartbeat: config.heartbeat(),
                client_timeout: config.client_timeout(),
                stall_timeout: config.stall_timeout(),
                commands_per_second: api::commands_per_second(config.commands_per_second),
            },
            origins: config.allowed_origins.clone(),
            admissions: admission::Admissions::new(config.max_connections_per_ip).start(),
            client_ip_header: config.client_ip_header.clone(),
            max_message_bytes: config.max_message_bytes,
            max_frames_per_request: config.max_frames_per_request,
            max_upload_bytes: config.max_upload_bytes,
            data_dir: config.data_dir.clone(),
            cache,
            metrics,
            broker,
            draining: draining.clone(),
        };
        let max_json = config.max_json_bytes;
        let user_timeout = Duration::from_millis(config.tcp_user_timeout_ms);
        let send_buffer = config.socket_send_buffer;
        let mut server = HttpServer::new(move || {
            actix_web::App::new()
                .app_data(web::Data::new(state.clone()))
                .app_data(api::json_config(max_json))
                .app_data(api::query_config())
                .configure(api::configure)
        })
        .on_connect(move |conn, _| tune_socket(conn, user_timeout, send_buffer))
        // Each frame is one small write that should leave at once, not wait on an ACK (Nagle).
        .tcp_nodelay(true)
        .disable_signals()
        // actix counts whole seconds; `run_until` enforces the exact timeout, this is a backstop.
        .shutdown_timeout(config.shutdown_timeout_ms.div_ceil(1000) + 1);
        if config.workers > 0 {
            server = server.workers(config.workers);
        }
        let server = server
            .listen(listener)
            .map_err(|source| StartError::Bind {
                addr: config.bind,
                source,
            })?
            .run();
        let watcher = datadir::DataDirWatcher::start(
            config.data_dir.clone(),
            hub.clone(),
            config.rescan_interval(),
        );
        Ok(Self {
            _watcher: watcher,
            tasks,
            draining,
            server,
            addr,
            hub,
            admin_token,
            admin_token_generated: config.admin_token.is_none(),
            demo,
            resumed,
            shutdown_timeout: config.shutdown_timeout(),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// True when no admin token was configured and this one was generated at start.
    pub fn admin_token_generated(&self) -> bool {
        self.admin_token_generated
    }

    pub fn hub(&self) -> Addr<Hub> {
        self.hub.clone()
    }

    /// Sessions kept by an earlier run and resumed at start (without a broker).
    pub fn resumed(&self) -> &[String] {
        &self.resumed
    }

    /// The session started at boot, if any.
    pub fn demo(&self) -> Option<&Created> {
        self.demo.as_ref()
    }

    /// Serves until SIGTERM or ctrl-c, then shuts down gracefully.
    pub async fn run(self) -> io::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `stop` completes: viewers are closed with 1001, the listener stops, and
    /// the process is done within the shutdown timeout.
    pub async fn run_until(self, stop: impl Future<Output = ()> + 'static) -> io::Result<()> {
        let handle = self.server.handle();
        let tasks = self.tasks.clone();
        let hub = self.hub.clone();
        let timeout = self.shutdown_timeout;
        let draining = self.draining.clone();
        let (deadline_tx, deadline_rx) = tokio::sync::oneshot::channel::<()>();
        // The server future itself processes stop commands, so it is awaited throughout.
        actix_web::rt::spawn(async move {
            stop.await;
            tracing::info!("shutting down: not ready, closing viewers");
            let deadline = tokio::time::Instant::now() + timeout;
            draining.store(true, Ordering::Relaxed);
            actix_web::rt::spawn(async move { graceful_stop(&hub, &handle, timeout).await });
            tokio::time::sleep_until(deadline).await;
            let _ = deadline_tx.send(());
        });
        // actix-web's own shutdown timeout counts whole seconds: the deadline here is exact.
        let cut_off = async {
            if deadline_rx.await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let served = tokio::select! {
            served = self.server => served,
            () = cut_off => {
                tracing::warn!(timeout_ms = timeout.as_millis() as u64, "shutdown timeout reached: cutting the connections left");
                Ok(())
            }
        };
        if !tasks.stop(Duration::from_millis(500)).await {
            tracing::warn!(
                running = tasks.running(),
                "background tasks did not stop in time"
            );
        }
        served
    }
}

/// Stops the listener, ends every session and waits for the workers, within `timeout`.
async fn graceful_stop(hub: &Addr<Hub>, handle: &ServerHandle, timeout: Duration) {
    // Stop accepting first, so no viewer joins a session that is being closed.
    let stop = handle.stop(true);
    let ended = hub.send(Shutdown {
        reason: CloseReason::ShuttingDown,
    });
    if tokio::time::timeout(timeout / 2, ended).await.is_err() {
        tracing::warn!("sessions did not all end in time");
    }
    // Workers finish once their connections have written their close frames, or at the
    // shutdown timeout for peers that do not read.
    stop.await;
}

/// Starts the demo session over the first race that loads; a broken race file is skipped with
/// an error in the log rather than keeping the hub from starting.
async fn start_demo(
    hub: &Addr<Hub>,
    id: &str,
    races: Vec<String>,
) -> Result<Option<Created>, StartError> {
    for race in races {
        let created = hub
            .send(CreateSession {
                race: race.clone(),
                id: Some(id.to_owned()),
                autoplay: true,
                // A hub left running always shows a race.
                looping: true,
            })
            .await
            .map_err(|e| StartError::DemoSession(e.to_string()))?;
        match created {
            Ok(created) => return Ok(Some(created)),
            Err(err @ hub::HubError::LoadFailed { .. }) => {
                tracing::error!(%err, "demo session: trying the next race");
            }
            // Another replica started it first: it is shared, nothing to do.
            Err(hub::HubError::SessionExists(_)) => {
                tracing::info!(session = id, "demo session already exists");
                return Ok(None);
            }
            Err(err) => return Err(StartError::DemoSession(err.to_string())),
        }
    }
    tracing::warn!("no race could be loaded; starting without a demo session");
    Ok(None)
}

/// Starts the sessions an earlier run kept in `store`; returns the ids that started.
async fn resume_sessions(
    hub: &Addr<Hub>,
    store: &session_store::SessionStore,
    max: usize,
) -> Vec<String> {
    let mut resumed = Vec::new();
    for (id, record) in store.load_all(max) {
        let race = record.race.clone();
        match hub
            .send(hub::ResumeSession {
                id: id.clone(),
                record,
            })
            .await
        {
            Ok(Ok(())) => resumed.push(id),
            Ok(Err(err)) => {
                tracing::warn!(session = %id, %race, %err, "stored session not resumed")
            }
            Err(err) => tracing::warn!(session = %id, %err, "stored session not resumed"),
        }
    }
    if !resumed.is_empty() {
        tracing::info!(sessions = ?resumed, "sessions resumed from the data directory");
    }
    resumed
}

fn tune_socket(conn: &dyn std::any::Any, user_timeout: Duration, send_buffer: usize) {
    let Some(stream) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() else {
        return;
    };
    let socket = socket2::SockRef::from(stream);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if user_timeout > Duration::ZERO {
        if let Err(err) = socket.set_tcp_user_timeout(Some(user_timeout)) {
            tracing::debug!(%err, "TCP_USER_TIMEOUT not set");
        }
    }
    if send_buffer > 0 {
        if let Err(err) = socket.set_send_buffer_size(send_buffer) {
            tracing::debug!(%err, "SO_SNDBUF not set");
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = user_timeout;
}

/// The races a cache holds, asked at start-up. A Redis that is slow to answer is given a
/// moment; after that the hub starts without it and learns of cached races on demand.
async fn cached_race_ids(cache: &RaceCache) -> Vec<String> {
    if !cache.wait_ready(Duration::from_secs(1)).await {
        return Vec::new();
    }
    cache.race_ids().await.unwrap_or_else(|err| {
        tracing::warn!(%err, "could not list cached races");
        Vec::new()
    })
}

/// A short generated race, so a hub with no races still has something to play.
fn generate_demo(dir: &Path, laps: u16) -> Result<RaceEntry, StartError> {
    let path = dir.join("demo.race");
    tracing::info!(path = %path.display(), laps, "no races found; generating a demo race");
    // The demo runs on a real circuit, embedded in the binary.
    let outline = race::circuit::load(race::circuit::DEFAULT_CIRCUIT)
        .map_err(|e| StartError::Demo(e.to_string()))?;
    let params = GenParams {
        laps,
        name: format!("Generated Grand Prix · {}", outline.name),
        ..GenParams::default()
    };
    let meta = race::write_generated(&params, Some(&outline), &path, |_, _| {})
        .map_err(|e| StartError::Demo(e.to_string()))?;
    Ok(RaceEntry::new(Some(path), meta))
}
