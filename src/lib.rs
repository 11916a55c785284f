//! replay-hub: broadcasts Formula 1 race replays to many synchronised viewers.
//!
//! [`startup::App`] is the composition root: it builds the hub, its actors and the HTTP server,
//! and runs them until [`shutdown`]. `main` parses the command line ([`config`]) and runs the
//! server or one of the [`cli`] subcommands. `docs/ARCHITECTURE.md` says what each module owns
//! and traces a frame from race file to viewer socket.

pub(crate) mod admission;
pub(crate) mod api;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod config;
pub(crate) mod datadir;
pub mod encode;
pub(crate) mod error;
pub mod fd_limit;
pub mod feed;
pub mod frame_guard;
pub mod hub;
pub mod ids;
pub mod import;
pub mod loader;
pub mod metrics;
pub(crate) mod pages;
pub mod race;
pub(crate) mod replication;
pub mod session;
pub(crate) mod session_store;
pub mod shutdown;
pub(crate) mod startup;
pub(crate) mod viewer;
pub mod window_codec;
pub mod writer;

pub use crate::datadir::scan_races;
pub use crate::startup::{App, StartError};
