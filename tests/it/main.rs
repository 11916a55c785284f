//! The integration tests, one binary (one link) with a module per area. Each starts the real hub
//! (on port 0, in-process through `common::TestHub`, or the built binary) and speaks to it with
//! real HTTP and WebSocket clients; Redis-backed tests use the local Redis with a unique key
//! prefix per test, or a `redis-server` of their own when they stop or stall it.
//!
//! Run one area with `cargo test --test it ws::` (the module name is the file name).

mod common;

mod api;
mod cache;
mod circuits;
mod cli;
mod compact_windows;
mod datadir;
mod events;
mod hardening;
mod import_openf1;
mod layout;
mod lookahead;
mod looping;
mod observability;
mod properties;
mod replicas;
mod restart;
mod ws;
