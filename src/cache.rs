//! The encoded-race cache: a race is encoded once, ever, and any hub process (restarted, or
//! another replica) loads the bytes back instead of re-encoding the race file.
//!
//! The hub reads through [`RaceCache`] on every load and writes back in the background; `import`
//! and `PUT /api/races/{id}` write through it. Backends implement the small [`Store`] trait:
//! Redis (shared by replicas) or a directory (the embedded default).

use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::{join_all, BoxFuture};
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};

use tokio::sync::watch;

use crate::encode::{EncodedRace, ENCODING_VERSION};
use crate::race::RaceMeta;
use crate::shutdown::Tasks;

/// Key schema version: bump when the key layout, the manifest or the stored metadata changes
/// (v2: the metadata carries the race's timeline, which v1 readers cannot decode; v3: the
/// manifest carries the metadata's CRC-32).
pub const SCHEMA: &str = "v3";
/// Frames per chunk: about 1 MB of encoded frames per key.
pub const CHUNK_FRAMES: u32 = 1000;
/// Largest cached metadata accepted, as for race files.
const MAX_META_BYTES: usize = crate::race::file::MAX_META_LEN as usize;
/// Largest manifest accepted: about 5 bytes per frame of the longest race allowed.
const MAX_MANIFEST_BYTES: usize = 16 << 20;
/// Chunks fetched per Redis round trip; several round trips run at once.
const CHUNKS_PER_REQUEST: usize = 8;

/// Where encoded races are kept: `redis://host:6379/0`, `dir:PATH` or `none`.
#[derive(Debug, Clone, PartialEq)]
pub enum CacheSpec {
    None,
    Dir(PathBuf),
    Redis(String),
}

/// A `--cache` value that names no cache.
#[derive(Debug, thiserror::Error)]
pub enum BadCacheSpec {
    #[error("dir: needs a path, e.g. dir:/var/cache/replay-hub")]
    NoPath,
    #[error("bad Redis URL {url:?}: {source}")]
    RedisUrl {
        url: String,
        source: redis::RedisError,
    },
    #[error("unknown cache {0:?}: use redis://host:port/db, dir:PATH or none")]
    Unknown(String),
}

impl FromStr for CacheSpec {
    type Err = BadCacheSpec;
    fn from_str(s: &str) -> Result<Self, BadCacheSpec> {
        if s == "none" {
            Ok(Self::None)
        } else if let Some(path) = s.strip_prefix("dir:") {
            if path.is_empty() {
                return Err(BadCacheSpec::NoPath);
            }
            Ok(Self::Dir(PathBuf::from(path)))
        } else if s.starts_with("redis://") || s.starts_with("rediss://") {
            redis::Client::open(s).map_err(|source| BadCacheSpec::RedisUrl {
                url: s.to_owned(),
                source,
            })?;
            Ok(Self::Redis(s.to_owned()))
        } else {
            Err(BadCacheSpec::Unknown(s.to_owned()))
        }
    }
}

/// How chunks are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Zstd,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache backend not connected")]
    NotReady,
    #[error("cache I/O: {0}")]
    Io(#[from] io::Error),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("corrupt cache entry {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

/// A key-value store for cache entries. Implementations never block the caller's thread.
pub trait Store: Send + Sync {
    /// "redis" or "dir", for logs and readiness.
    fn backend(&self) -> &'static str;
    /// Whether the backend answers now.
    fn is_ready(&self) -> bool;
    /// Follows [`Store::is_ready`], for waiting until the backend answers.
    fn readiness(&self) -> watch::Receiver<bool>;
    /// The values of `keys`; a value longer than `max_len` is a `Corrupt` error, found out
    /// before it is read whole.
    fn get(
        &self,
        keys: Vec<String>,
        max_len: usize,
    ) -> BoxFuture<'_, Result<Vec<Option<Bytes>>, CacheError>>;
    /// Writes all items; a reader sees each item whole or not at all.
    fn set(&self, items: Vec<(String, Bytes)>) -> BoxFuture<'_, Result<(), CacheError>>;
    fn delete(&self, keys: Vec<String>) -> BoxFuture<'_, Result<(), CacheError>>;
    fn add_member(&self, set: String, member: String) -> BoxFuture<'_, Result<(), CacheError>>;
    fn members(&self, set: String) -> BoxFuture<'_, Result<Vec<String>, CacheError>>;
}

/// Cache counters, read by the readiness endpoint and the metrics.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub corrupt: AtomicU64,
    pub errors: AtomicU64,
    pub writes: AtomicU64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct StatsSnapshot {
    pub hits: u64,
    pub misses: u64,
    pub corrupt: u64,
    pub errors: u64,
    pub writes: u64,
}

impl CacheStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            hits: get(&self.hits),
            misses: get(&self.misses),
            corrupt: get(&self.corrupt),
            errors: get(&self.errors),
            writes: get(&self.writes),
        }
    }
}

/// What a cached race is made of; written last, so a reader never sees half an entry.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    encoding: u32,
    content: String,
    total_frames: u32,
    compression: Compression,
    chunks: Vec<ChunkInfo>,
    /// Encoded length of every frame: chunks hold nothing but frame bytes, so they decompress
    /// straight into the race's final buffer.
    frame_lengths: Vec<u32>,
    /// CRC-32 of the stored metadata, which has no checksum of its own: damaged metadata that
    /// still decodes (a name, a coordinate) would otherwise be served as another race.
    meta_crc: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct ChunkInfo {
    frames: u32,
    /// Length of the chunk once decompressed.
    raw_len: u32,
    /// CRC-32 of the stored (possibly compressed) bytes.
    crc: u32,
}

/// The race-level cache over any [`Store`].
pub struct RaceCache {
    store: Arc<dyn Store>,
    prefix: String,
    compression: Compression,
    pub stats: CacheStats,
}

impl RaceCache {
    pub fn new(store: Arc<dyn Store>, prefix: &str, compression: Compression) -> Self {
        Self {
            store,
            prefix: prefix.to_owned(),
            compression,
            stats: CacheStats::default(),
        }
    }

    /// Opens the backend named by `spec`; `None` for `--cache none`. Redis connects in the
    /// background, so a Redis that is down does not stop the hub from starting.
    /// Its connection probe runs among `tasks`.
    pub fn open(
        spec: &CacheSpec,
        prefix: &str,
        compression: Compression,
        tasks: &Tasks,
    ) -> Option<Arc<Self>> {
        let store: Arc<dyn Store> = match spec {
            CacheSpec::None => return None,
            CacheSpec::Dir(path) => Arc::new(DirStore::new(path.clone())),
            CacheSpec::Redis(url) => RedisStore::connect(url.clone(), tasks),
        };
        Some(Arc::new(Self::new(store, prefix, compression)))
    }

    pub fn backend(&self) -> &'static str {
        self.store.backend()
    }

    pub fn is_ready(&self) -> bool {
        self.store.is_ready()
    }

    /// Waits (at most `timeout`) until the backend answers; true if it does.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut ready = self.store.readiness();
        tokio::time::timeout(timeout, ready.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn key(&self, rest: &str) -> String {
        format!("{}:{SCHEMA}:{rest}", self.prefix)
    }

    fn race_key(&self, id: &str, rest: &str) -> String {
        self.key(&format!("race:{id}:{rest}"))
    }

    fn chunk_key(&self, id: &str, content: &str, n: usize) -> String {
        self.race_key(id, &format!("{content}:chunk:{n}"))
    }

    /// The ids of every race in the cache.
    pub async fn race_ids(&self) -> Result<Vec<String>, CacheError> {
        let mut ids = self.store.members(self.key("races")).await?;
        ids.sort();
        Ok(ids)
    }

    /// A cached race's metadata, without its frames.
    pub async fn meta(&self, id: &str) -> Result<Option<RaceMeta>, CacheError> {
        let key = self.race_key(id, "meta");
        let found = self.store.get(vec![key.clone()], MAX_META_BYTES).await?;
        let Some(bytes) = found.into_iter().next().flatten() else {
            return Ok(None);
        };
        decode_meta(id, &key, &bytes).map(Some)
    }

    async fn manifest(&self, id: &str) -> Result<Option<Manifest>, CacheError> {
        let key = self.race_key(id, "manifest");
        let found = self
            .store
            .get(vec![key.clone()], MAX_MANIFEST_BYTES)
            .await?;
        match found.into_iter().next().flatten() {
            Some(bytes) => rmp_serde::from_slice(&bytes)
                .map(Some)
                .map_err(|e| corrupt(&key, e)),
            None => Ok(None),
        }
    }

    /// The cached encoded race, if the cache holds it for this encoding and, when given, this
    /// source content. A mismatch is a miss; damaged bytes are a `Corrupt` error, and so is an
    /// entry that would take more than `max_bytes` of memory. Every length the entry claims is
    /// checked against the race's own metadata before anything is allocated from it.
    pub async fn load(
        &self,
        id: &str,
        content: Option<&str>,
        max_bytes: u64,
    ) -> Result<Option<EncodedRace>, CacheError> {
        let loaded = self.read_entry(id, content, max_bytes).await;
        let counter = match &loaded {
            Ok(Some(_)) => &self.stats.hits,
            Ok(None) => &self.stats.misses,
            Err(CacheError::Corrupt { .. }) => &self.stats.corrupt,
            Err(_) => &self.stats.errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        loaded
    }

    async fn read_entry(
        &self,
        id: &str,
        content: Option<&str>,
        max_bytes: u64,
    ) -> Result<Option<EncodedRace>, CacheError> {
        let manifest_key = self.race_key(id, "manifest");
        let meta_key = self.race_key(id, "meta");
        let keys = vec![manifest_key.clone(), meta_key.clone()];
        let mut found = self
            .store
            .get(keys, MAX_MANIFEST_BYTES.max(MAX_META_BYTES))
            .await?
            .into_iter();
        let (Some(Some(manifest)), Some(Some(meta))) = (found.next(), found.next()) else {
            return Ok(None);
        };
        let Some(head) = EntryHead::decode(
            id,
            content,
            (&manifest_key, &manifest),
            (&meta_key, &meta),
            max_bytes,
        )?
        else {
            return Ok(None);
        };
        let keys: Vec<String> = (0..head.chunks())
            .map(|n| self.chunk_key(id, &head.manifest.content, n))
            .collect();
        let requests = keys
            .chunks(CHUNKS_PER_REQUEST)
            .enumerate()
            .map(|(batch_no, batch)| {
                let first = batch_no * CHUNKS_PER_REQUEST;
                let longest = (first..first + batch.len())
                    .map(|n| head.chunk_bound(n))
                    .max()
                    .unwrap_or(0);
                self.store.get(batch.to_vec(), longest)
            });
        let mut stored = Vec::with_capacity(keys.len());
        for batch in join_all(requests).await {
            stored.extend(batch?);
        }
        let id = id.to_owned();
        tokio::task::spawn_blocking(move || head.assemble(&keys, stored))
            .await
            .map_err(|e| CacheError::Io(io::Error::other(e)))?
            .map(Some)
            .inspect_err(|err| tracing::warn!(race = %id, %err, "corrupt cache entry"))
    }

    /// Writes a race: chunks first, then metadata and manifest, then the index, so a reader
    /// never finds a manifest whose chunks are not all there. The chunks of the content it
    /// replaces (an older file or encoding) are deleted afterwards.
    /// Writes `race` (of source `content`); a failure is counted in the cache's errors.
    pub async fn store(&self, race: &Arc<EncodedRace>, content: &str) -> Result<(), CacheError> {
        let stored = self.write_entry(race, content).await;
        if stored.is_err() {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        stored
    }

    async fn write_entry(&self, race: &Arc<EncodedRace>, content: &str) -> Result<(), CacheError> {
        let id = race.id().to_owned();
        let started = Instant::now();
        let previous = self.manifest(&id).await.ok().flatten();
        let entry = {
            let race = race.clone();
            let compression = self.compression;
            let content = content.to_owned();
            tokio::task::spawn_blocking(move || encode_entry(&race, compression, &content))
                .await
                .map_err(|e| CacheError::Io(io::Error::other(e)))??
        };
        let stored: usize = entry.chunks.iter().map(Bytes::len).sum();
        let chunk_items: Vec<(String, Bytes)> = entry
            .chunks
            .into_iter()
            .enumerate()
            .map(|(n, bytes)| (self.chunk_key(&id, content, n), bytes))
            .collect();
        for batch in chunk_items.chunks(CHUNKS_PER_REQUEST) {
            self.store.set(batch.to_vec()).await?;
        }
        self.store
            .set(vec![
                (self.race_key(&id, "meta"), entry.meta),
                (self.race_key(&id, "manifest"), entry.manifest),
            ])
            .await?;
        self.store.add_member(self.key("races"), id.clone()).await?;
        if let Some(old) = previous.filter(|old| old.content != content) {
            let stale = (0..old.chunks.len())
                .map(|n| self.chunk_key(&id, &old.content, n))
                .collect();
            if let Err(err) = self.store.delete(stale).await {
                tracing::warn!(race = %id, %err, "could not delete replaced cache chunks");
            }
        }
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            race = %id,
            backend = self.backend(),
            encoded = race.encoded_bytes(),
            stored,
            seconds = started.elapsed().as_secs_f64(),
            "race written to the cache"
        );
        Ok(())
    }
}

/// A cache entry's manifest and metadata, decoded and cross-checked against each other: every
/// length the entry claims is known to be plausible, so its chunks can be fetched and assembled.
/// [`RaceCache::load`] reads entries through it, and so does [`decode_entry`].
pub struct EntryHead {
    meta: RaceMeta,
    manifest: Manifest,
    /// Bytes of all frames together, within the memory limit given to [`EntryHead::decode`].
    total: u64,
}

impl EntryHead {
    /// Decodes race `id`'s stored manifest and metadata, each given with its key (for errors).
    /// `Ok(None)` when the entry belongs to another encoding or, when `content` is given, to
    /// other content: a miss. Damage, or an entry that would take more than `max_bytes`, is a
    /// `Corrupt` error.
    pub fn decode(
        id: &str,
        content: Option<&str>,
        (manifest_key, manifest): (&str, &[u8]),
        (meta_key, meta): (&str, &[u8]),
        max_bytes: u64,
    ) -> Result<Option<Self>, CacheError> {
        let manifest: Manifest =
            rmp_serde::from_slice(manifest).map_err(|e| corrupt(manifest_key, e))?;
        if manifest.encoding != ENCODING_VERSION || content.is_some_and(|c| c != manifest.content) {
            return Ok(None);
        }
        let crc = crc32fast::hash(meta);
        if crc != manifest.meta_crc {
            return Err(corrupt(
                meta_key,
                format!(
                    "checksum {crc:08x}, manifest says {:08x}",
                    manifest.meta_crc
                ),
            ));
        }
        let meta = decode_meta(id, meta_key, meta)?;
        let total = check_manifest(&meta, &manifest, max_bytes)
            .map_err(|reason| corrupt(manifest_key, reason))?;
        Ok(Some(Self {
            meta,
            manifest,
            total,
        }))
    }

    /// How many chunks the entry has.
    pub fn chunks(&self) -> usize {
        self.manifest.chunks.len()
    }

    /// The most stored bytes chunk `n` may take; longer values are damage, refused unread.
    pub fn chunk_bound(&self, n: usize) -> usize {
        self.manifest.chunks.get(n).map_or(0, |c| {
            stored_bound(c.raw_len as usize, self.manifest.compression)
        })
    }

    /// Checks the stored chunks (`stored[n]` under `keys[n]`; a missing one is `None`) and
    /// builds the race from them.
    pub fn assemble(
        self,
        keys: &[String],
        stored: Vec<Option<Bytes>>,
    ) -> Result<EncodedRace, CacheError> {
        assemble(self.meta, &self.manifest, self.total, keys, stored)
            .map_err(|(key, reason)| CacheError::Corrupt { key, reason })
    }
}

/// Decodes a whole cache entry from its stored values, as [`RaceCache::load`] does once it has
/// fetched them: `chunks[n]` is the value of chunk `n` (`None`, or absent, when missing). The
/// pure form of a load, for tests and fuzzing; errors name the keys `manifest`, `meta` and
/// `chunk:N`.
pub fn decode_entry(
    id: &str,
    content: Option<&str>,
    manifest: &[u8],
    meta: &[u8],
    chunks: &[Option<Bytes>],
    max_bytes: u64,
) -> Result<Option<EncodedRace>, CacheError> {
    let Some(head) = EntryHead::decode(
        id,
        content,
        ("manifest", manifest),
        ("meta", meta),
        max_bytes,
    )?
    else {
        return Ok(None);
    };
    let keys: Vec<String> = (0..head.chunks()).map(|n| format!("chunk:{n}")).collect();
    let stored = (0..head.chunks())
        .map(|n| chunks.get(n).cloned().flatten())
        .collect();
    head.assemble(&keys, stored).map(Some)
}

fn corrupt(key: &str, err: impl std::fmt::Display) -> CacheError {
    CacheError::Corrupt {
        key: key.to_owned(),
        reason: err.to_string(),
    }
}

/// Decodes cached metadata and checks it by the rules a race file's must pass.
fn decode_meta(id: &str, key: &str, bytes: &[u8]) -> Result<RaceMeta, CacheError> {
    let meta: RaceMeta = rmp_serde::from_slice(bytes).map_err(|e| corrupt(key, e))?;
    crate::race::check_meta(&meta).map_err(|e| corrupt(key, e))?;
    if meta.id != id {
        return Err(corrupt(key, format!("holds race {:?}", meta.id)));
    }
    Ok(meta)
}

/// The most bytes one wire frame of a race with `drivers` cars can take: a few dozen for the
/// frame's own fields, and well over what any car's 15 values encode to (about 55 bytes).
pub fn max_frame_bytes(drivers: usize) -> u64 {
    96 + 160 * drivers as u64
}

/// Cross-checks a manifest with the race's (already validated) metadata: frame counts agree,
/// every frame length is plausible for the race's number of cars, each chunk's size is the sum
/// of its frames', and the whole fits in `max_bytes` (and in the u32 offsets of
/// [`EncodedRace`]). Returns the total encoded size.
fn check_manifest(meta: &RaceMeta, manifest: &Manifest, max_bytes: u64) -> Result<u64, String> {
    let frames = meta.total_frames;
    if manifest.total_frames != frames || manifest.frame_lengths.len() != frames as usize {
        return Err(format!(
            "frame counts disagree: metadata {frames}, manifest {} with {} lengths",
            manifest.total_frames,
            manifest.frame_lengths.len()
        ));
    }
    if manifest.chunks.len() != frames.div_ceil(CHUNK_FRAMES) as usize {
        return Err(format!(
            "{} chunks for {frames} frames",
            manifest.chunks.len()
        ));
    }
    let longest = max_frame_bytes(meta.drivers.len());
    if let Some((i, len)) = (manifest.frame_lengths.iter().enumerate())
        .find(|(_, &len)| len == 0 || u64::from(len) > longest)
    {
        return Err(format!(
            "frame {i} claims {len} bytes; a frame of {} cars is 1 to {longest}",
            meta.drivers.len()
        ));
    }
    let mut total = 0u64;
    let mut lengths = manifest.frame_lengths.iter();
    for (n, chunk) in manifest.chunks.iter().enumerate() {
        let expected = if n + 1 < manifest.chunks.len() {
            CHUNK_FRAMES
        } else {
            frames - CHUNK_FRAMES * n as u32
        };
        if chunk.frames != expected {
            return Err(format!(
                "chunk {n} claims {} frames, expected {expected}",
                chunk.frames
            ));
        }
        let raw: u64 = lengths
            .by_ref()
            .take(chunk.frames as usize)
            .map(|&l| u64::from(l))
            .sum();
        if raw != u64::from(chunk.raw_len) {
            return Err(format!(
                "chunk {n} claims {} bytes, its frames hold {raw}",
                chunk.raw_len
            ));
        }
        total += raw;
    }
    let limit = max_bytes.min(u64::from(u32::MAX));
    if total > limit {
        return Err(format!(
            "the race would take {total} bytes, over the limit of {limit}"
        ));
    }
    Ok(total)
}

/// The most bytes a chunk of `raw_len` bytes can take in the store.
fn stored_bound(raw_len: usize, compression: Compression) -> usize {
    match compression {
        Compression::None => raw_len,
        Compression::Zstd => zstd::zstd_safe::compress_bound(raw_len),
    }
}

/// The identity of a race's content for cache keys: the wire encoding version plus the race
/// file's checksum, so a new encoding or a changed file never reads old bytes.
pub fn content_id(file_checksum: u32) -> String {
    format!("e{ENCODING_VERSION}-{file_checksum:08x}")
}

/// The stored values of one cache entry, as [`RaceCache::store`] writes them and
/// [`decode_entry`] reads them back.
#[derive(Debug, Clone)]
pub struct EntryValues {
    pub manifest: Bytes,
    pub meta: Bytes,
    /// Chunk `n` holds frames `n * CHUNK_FRAMES ..`.
    pub chunks: Vec<Bytes>,
}

/// Encodes a race as cache values for source content `content` (see [`content_id`]).
pub fn encode_entry(
    race: &EncodedRace,
    compression: Compression,
    content: &str,
) -> Result<EntryValues, CacheError> {
    let meta = crate::encode::to_compact_msgpack(&*race.meta);
    let (chunks, manifest) = split(race, compression, content.to_owned(), &meta)?;
    Ok(EntryValues {
        manifest: Bytes::from(crate::encode::to_compact_msgpack(&manifest)),
        meta: Bytes::from(meta),
        chunks,
    })
}

/// Cuts a race into chunks of [`CHUNK_FRAMES`] frames (plain frame bytes, then compressed);
/// `meta` is the metadata as stored.
fn split(
    race: &EncodedRace,
    compression: Compression,
    content: String,
    meta: &[u8],
) -> Result<(Vec<Bytes>, Manifest), CacheError> {
    let total = race.total_frames();
    let mut chunks = Vec::new();
    let mut infos = Vec::new();
    let mut frame_lengths = Vec::with_capacity(total as usize);
    for start in (0..total).step_by(CHUNK_FRAMES as usize) {
        let end = (start + CHUNK_FRAMES).min(total);
        let raw = race.frames_bytes(start, end);
        frame_lengths.extend((start..end).filter_map(|i| race.frame(i).map(|f| f.len() as u32)));
        let stored = match compression {
            Compression::None => raw.clone(),
            Compression::Zstd => Bytes::from(zstd::bulk::compress(&raw, 3)?),
        };
        infos.push(ChunkInfo {
            frames: end - start,
            raw_len: raw.len() as u32,
            crc: crc32fast::hash(&stored),
        });
        chunks.push(stored);
    }
    let manifest = Manifest {
        encoding: ENCODING_VERSION,
        content,
        total_frames: total,
        compression,
        chunks: infos,
        frame_lengths,
        meta_crc: crc32fast::hash(meta),
    };
    Ok((chunks, manifest))
}

/// Checks stored chunks and writes them, in parallel, straight into one buffer; any damage
/// names the key.
fn assemble(
    meta: RaceMeta,
    manifest: &Manifest,
    total: u64,
    keys: &[String],
    stored: Vec<Option<Bytes>>,
) -> Result<EncodedRace, (String, String)> {
    let first_key = || keys.first().cloned().unwrap_or_default();
    let lengths = &manifest.frame_lengths;
    let total = total as usize;
    // Zeroed memory from the allocator costs nothing until written.
    let mut buf = vec![0u8; total];
    let mut work = Vec::with_capacity(manifest.chunks.len());
    let mut rest = buf.as_mut_slice();
    for ((info, key), bytes) in manifest.chunks.iter().zip(keys).zip(stored) {
        let (slot, tail) = rest.split_at_mut(info.raw_len as usize);
        rest = tail;
        work.push((info, key, bytes, slot));
    }
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_worker = work.len().div_ceil(workers).max(1);
    let compression = manifest.compression;
    std::thread::scope(|scope| {
        let handles: Vec<_> = work
            .chunks_mut(per_worker)
            .map(|part| {
                scope.spawn(move || {
                    for (info, key, bytes, slot) in part.iter_mut() {
                        fill_chunk(info, bytes.take(), slot, compression)
                            .map_err(|reason| ((*key).clone(), reason))?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err((first_key(), "chunk worker panicked".into())))
        })
    })?;
    let mut offsets = Vec::with_capacity(lengths.len() + 1);
    let mut at = 0u32;
    offsets.push(at);
    for &len in lengths {
        // No overflow: the manifest check keeps the total within u32.
        at += len;
        offsets.push(at);
    }
    // Every frame must start where the manifest says: its own header, with its own index.
    for (i, window) in offsets.windows(2).enumerate() {
        let frame = &buf[window[0] as usize..window[1] as usize];
        if !crate::encode::is_wire_frame(frame, i as u32) {
            let key = keys.get(i / CHUNK_FRAMES as usize).cloned();
            return Err((
                key.unwrap_or_else(first_key),
                format!("frame {i} is not where the manifest puts it"),
            ));
        }
    }
    Ok(EncodedRace::from_parts(meta, Bytes::from(buf), offsets))
}

/// Verifies one stored chunk and writes its frames into `slot` (exactly its decoded size).
fn fill_chunk(
    info: &ChunkInfo,
    bytes: Option<Bytes>,
    slot: &mut [u8],
    compression: Compression,
) -> Result<(), String> {
    let bytes = bytes.ok_or("chunk missing")?;
    if bytes.len() > stored_bound(slot.len(), compression) {
        return Err(format!(
            "{} stored bytes for {} decoded",
            bytes.len(),
            slot.len()
        ));
    }
    let crc = crc32fast::hash(&bytes);
    if crc != info.crc {
        return Err(format!(
            "checksum {crc:08x}, manifest says {:08x}",
            info.crc
        ));
    }
    let written = match compression {
        Compression::None if bytes.len() == slot.len() => {
            slot.copy_from_slice(&bytes);
            bytes.len()
        }
        Compression::None => 0,
        Compression::Zstd => {
            zstd::bulk::decompress_to_buffer(&bytes, slot).map_err(|e| format!("zstd: {e}"))?
        }
    };
    if written != slot.len() {
        return Err(format!("{written} bytes, expected {}", slot.len()));
    }
    Ok(())
}

/// The embedded default: one file per key under a directory, written atomically.
pub struct DirStore {
    root: PathBuf,
    /// Always ready.
    ready: watch::Sender<bool>,
}

impl DirStore {
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            ready: watch::Sender::new(true),
        }
    }

    /// Keys hold only `[a-z0-9_:-]` (ids are validated), so `:` maps safely to `/`.
    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key.replace(':', "/"))
    }
}

impl Store for DirStore {
    fn backend(&self) -> &'static str {
        "dir"
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn readiness(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    fn get(
        &self,
        keys: Vec<String>,
        max_len: usize,
    ) -> BoxFuture<'_, Result<Vec<Option<Bytes>>, CacheError>> {
        let paths: Vec<(String, PathBuf)> = keys
            .into_iter()
            .map(|k| {
                let path = self.path(&k);
                (k, path)
            })
            .collect();
        async move {
            tokio::task::spawn_blocking(move || {
                paths
                    .iter()
                    .map(|(key, path)| read_bounded(key, path, max_len))
                    .collect()
            })
            .await
            .map_err(|e| CacheError::Io(io::Error::other(e)))?
        }
        .boxed()
    }

    fn set(&self, items: Vec<(String, Bytes)>) -> BoxFuture<'_, Result<(), CacheError>> {
        let items: Vec<(PathBuf, Bytes)> =
            items.into_iter().map(|(k, v)| (self.path(&k), v)).collect();
        async move {
            tokio::task::spawn_blocking(move || {
                for (path, bytes) in items {
                    write_atomically(&path, &bytes)?;
                }
                Ok(())
            })
            .await
            .map_err(|e| CacheError::Io(io::Error::other(e)))?
        }
        .boxed()
    }

    fn delete(&self, keys: Vec<String>) -> BoxFuture<'_, Result<(), CacheError>> {
        let paths: Vec<PathBuf> = keys.iter().map(|k| self.path(k)).collect();
        async move {
            tokio::task::spawn_blocking(move || {
                for path in paths {
                    match std::fs::remove_file(&path) {
                        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
                        _ => {}
                    }
                }
                Ok(())
            })
            .await
            .map_err(|e| CacheError::Io(io::Error::other(e)))?
        }
        .boxed()
    }

    fn add_member(&self, set: String, member: String) -> BoxFuture<'_, Result<(), CacheError>> {
        self.set(vec![(format!("{set}:{member}"), Bytes::new())])
    }

    fn members(&self, set: String) -> BoxFuture<'_, Result<Vec<String>, CacheError>> {
        let dir = self.path(&set);
        async move {
            tokio::task::spawn_blocking(move || match std::fs::read_dir(&dir) {
                Ok(entries) => Ok(entries
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|name| !name.ends_with(".tmp"))
                    .collect()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
                Err(e) => Err(CacheError::Io(e)),
            })
            .await
            .map_err(|e| CacheError::Io(io::Error::other(e)))?
        }
        .boxed()
    }
}

/// Reads a file of at most `max_len` bytes; a longer one is corrupt, found out from its size.
fn read_bounded(key: &str, path: &Path, max_len: usize) -> Result<Option<Bytes>, CacheError> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CacheError::Io(e)),
    };
    let len = file.metadata()?.len();
    if len > max_len as u64 {
        return Err(too_long(key, max_len));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(max_len as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() > max_len {
        return Err(too_long(key, max_len));
    }
    Ok(Some(Bytes::from(bytes)))
}

fn too_long(key: &str, max_len: usize) -> CacheError {
    corrupt(
        key,
        format!("value is over the {max_len} bytes it may hold"),
    )
}

/// Writes to a temporary file and renames it, so a reader sees the old or the new file whole.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension(format!("{}.tmp", crate::ids::random_token(4)));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Redis through the redis crate's connection manager, which reconnects with backoff. The first
/// connection is made in the background, retried until it succeeds; a health probe keeps
/// [`Store::is_ready`] true to the facts.
pub struct RedisStore {
    url: String,
    manager: OnceLock<redis::aio::ConnectionManager>,
    healthy: watch::Sender<bool>,
}

impl RedisStore {
    pub fn connect(url: String, tasks: &Tasks) -> Arc<Self> {
        let store = Arc::new(Self {
            url,
            manager: OnceLock::new(),
            healthy: watch::Sender::new(false),
        });
        tasks.spawn("redis cache probe", store.clone().keep_connected());
        store
    }

    async fn keep_connected(self: Arc<Self>) {
        let mut delay = Duration::from_millis(100);
        let mut warned = false;
        let manager = loop {
            match self.open().await {
                Ok(manager) => break manager,
                Err(err) => {
                    if !warned {
                        tracing::warn!(url = %self.url, %err, "Redis cache unreachable; serving from files and memory, retrying in the background");
                        warned = true;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        tracing::info!(url = %self.url, "Redis cache connected");
        let _ = self.manager.set(manager.clone());
        self.healthy.send_replace(true);
        let mut probe = manager;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let ok = redis::cmd("PING")
                .query_async::<String>(&mut probe)
                .await
                .is_ok();
            if ok != self.healthy.send_replace(ok) {
                if ok {
                    tracing::info!(url = %self.url, "Redis cache reachable again");
                } else {
                    tracing::warn!(url = %self.url, "Redis cache unreachable; reconnecting");
                }
            }
        }
    }

    async fn open(&self) -> Result<redis::aio::ConnectionManager, redis::RedisError> {
        let client = redis::Client::open(self.url.as_str())?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_number_of_retries(6)
            .set_max_delay(Duration::from_secs(5));
        redis::aio::ConnectionManager::new_with_config(client, config).await
    }

    fn connection(&self) -> Result<redis::aio::ConnectionManager, CacheError> {
        self.manager.get().cloned().ok_or(CacheError::NotReady)
    }

    fn note<T>(&self, result: Result<T, redis::RedisError>) -> Result<T, CacheError> {
        if let Err(err) = &result {
            if err.is_io_error() || err.is_connection_dropped() || err.is_timeout() {
                self.healthy.send_replace(false);
            }
        }
        result.map_err(CacheError::Redis)
    }
}

impl Store for RedisStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    fn is_ready(&self) -> bool {
        *self.healthy.borrow()
    }

    fn readiness(&self) -> watch::Receiver<bool> {
        self.healthy.subscribe()
    }

    fn get(
        &self,
        keys: Vec<String>,
        max_len: usize,
    ) -> BoxFuture<'_, Result<Vec<Option<Bytes>>, CacheError>> {
        async move {
            let mut conn = self.connection()?;
            // GETRANGE reads at most one byte past the limit, so a value that is too long is
            // found out without Redis sending (and this process buffering) all of it. A missing
            // key reads as empty, and no value the cache writes is empty.
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("GETRANGE").arg(key).arg(0).arg(max_len);
            }
            let values: Vec<Vec<u8>> = self.note(pipe.query_async(&mut conn).await)?;
            keys.iter()
                .zip(values)
                .map(|(key, value)| match value.len() {
                    0 => Ok(None),
                    n if n > max_len => Err(too_long(key, max_len)),
                    _ => Ok(Some(Bytes::from(value))),
                })
                .collect()
        }
        .boxed()
    }

    fn set(&self, items: Vec<(String, Bytes)>) -> BoxFuture<'_, Result<(), CacheError>> {
        async move {
            let mut conn = self.connection()?;
            let mut pipe = redis::pipe();
            for (key, value) in &items {
                pipe.set(key, value.as_ref()).ignore();
            }
            self.note(pipe.query_async::<()>(&mut conn).await)
        }
        .boxed()
    }

    fn delete(&self, keys: Vec<String>) -> BoxFuture<'_, Result<(), CacheError>> {
        async move {
            if keys.is_empty() {
                return Ok(());
            }
            let mut conn = self.connection()?;
            self.note(
                redis::cmd("DEL")
                    .arg(&keys)
                    .query_async::<()>(&mut conn)
                    .await,
            )
        }
        .boxed()
    }

    fn add_member(&self, set: String, member: String) -> BoxFuture<'_, Result<(), CacheError>> {
        async move {
            let mut conn = self.connection()?;
            self.note(
                redis::cmd("SADD")
                    .arg(&set)
                    .arg(&member)
                    .query_async::<()>(&mut conn)
                    .await,
            )
        }
        .boxed()
    }

    fn members(&self, set: String) -> BoxFuture<'_, Result<Vec<String>, CacheError>> {
        async move {
            let mut conn = self.connection()?;
            self.note(
                redis::cmd("SMEMBERS")
                    .arg(&set)
                    .query_async(&mut conn)
                    .await,
            )
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::race::{generate, GenParams};

    fn race(frames_wanted_laps: u16) -> Arc<EncodedRace> {
        let params = GenParams {
            laps: frames_wanted_laps,
            drivers: 4,
            seed: 5,
            id: "unit".into(),
            name: "Unit".into(),
        };
        let (meta, frames) = generate(&params, |_, _| {}).unwrap();
        Arc::new(EncodedRace::build(meta, frames.into_iter().map(Ok::<_, ()>)).unwrap())
    }

    fn dir_cache(dir: &Path, compression: Compression) -> RaceCache {
        RaceCache::new(Arc::new(DirStore::new(dir.to_owned())), "unit", compression)
    }

    fn assert_same(a: &EncodedRace, b: &EncodedRace) {
        assert_eq!(a.total_frames(), b.total_frames());
        assert_eq!(*a.meta, *b.meta);
        for i in 0..a.total_frames() {
            assert_eq!(a.frame(i), b.frame(i), "frame {i}");
        }
    }

    #[tokio::test]
    async fn round_trip_is_byte_for_byte_with_and_without_compression() {
        let original = race(2);
        assert!(original.total_frames() > CHUNK_FRAMES * 2, "several chunks");
        for compression in [Compression::None, Compression::Zstd] {
            let dir = tempfile::tempdir().unwrap();
            let cache = dir_cache(dir.path(), compression);
            assert!(cache.load("unit", None, u64::MAX).await.unwrap().is_none());
            cache.store(&original, "e1-0000abcd").await.unwrap();
            let loaded = cache
                .load("unit", Some("e1-0000abcd"), u64::MAX)
                .await
                .unwrap()
                .unwrap();
            assert_same(&original, &loaded);
            assert_eq!(cache.race_ids().await.unwrap(), ["unit"]);
            assert_eq!(cache.meta("unit").await.unwrap().unwrap(), *original.meta);
        }
    }

    #[tokio::test]
    async fn another_content_or_encoding_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir_cache(dir.path(), Compression::Zstd);
        cache.store(&race(2), "e1-00000001").await.unwrap();
        assert!(cache
            .load("unit", Some("e1-00000002"), u64::MAX)
            .await
            .unwrap()
            .is_none());
        // A manifest written by another encoding version is never read.
        let key = cache.race_key("unit", "manifest");
        let mut stored = cache.store.get(vec![key.clone()], 1 << 20).await.unwrap();
        let mut manifest: Manifest =
            rmp_serde::from_slice(&stored.pop().unwrap().unwrap()).unwrap();
        manifest.encoding = ENCODING_VERSION + 1;
        let bytes = Bytes::from(crate::encode::to_compact_msgpack(&manifest));
        cache.store.set(vec![(key, bytes)]).await.unwrap();
        assert!(cache.load("unit", None, u64::MAX).await.unwrap().is_none());
        assert!(content_id(0xabc).starts_with(&format!("e{ENCODING_VERSION}-")));
    }

    #[tokio::test]
    async fn new_content_replaces_the_old_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir_cache(dir.path(), Compression::Zstd);
        let store = DirStore::new(dir.path().to_owned());
        let race = race(2);
        cache.store(&race, "e1-00000001").await.unwrap();
        let old_chunk = store.path(&cache.chunk_key("unit", "e1-00000001", 0));
        assert!(old_chunk.exists());
        cache.store(&race, "e1-00000002").await.unwrap();
        assert!(
            !old_chunk.exists(),
            "the replaced content's chunks are gone"
        );
        assert!(cache
            .load("unit", Some("e1-00000002"), u64::MAX)
            .await
            .unwrap()
            .is_some());
        // Storing the same content again keeps its chunks.
        cache.store(&race, "e1-00000002").await.unwrap();
        assert!(cache
            .load("unit", Some("e1-00000002"), u64::MAX)
            .await
            .unwrap()
            .is_some());
    }

    #[tokio::test]
    async fn damaged_or_missing_chunks_are_reported_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir_cache(dir.path(), Compression::None);
        cache.store(&race(2), "e1-00000001").await.unwrap();
        let chunk =
            DirStore::new(dir.path().to_owned()).path(&cache.chunk_key("unit", "e1-00000001", 1));
        let mut bytes = std::fs::read(&chunk).unwrap();
        bytes[100] ^= 0xff;
        std::fs::write(&chunk, &bytes).unwrap();
        match cache.load("unit", None, u64::MAX).await {
            Err(CacheError::Corrupt { key, reason }) => {
                assert!(key.ends_with(":chunk:1"), "{key}");
                assert!(reason.contains("checksum"), "{reason}");
            }
            other => panic!("expected corruption, got {:?}", other.map(|r| r.is_some())),
        }
        std::fs::remove_file(&chunk).unwrap();
        match cache.load("unit", None, u64::MAX).await {
            Err(CacheError::Corrupt { reason, .. }) => assert!(reason.contains("missing")),
            other => panic!(
                "expected a missing chunk, got {:?}",
                other.map(|r| r.is_some())
            ),
        }
    }

    /// Stores a race, lets `damage` change its manifest and metadata, and returns what loading
    /// it then says.
    async fn load_after(
        damage: impl FnOnce(&mut Manifest, &mut RaceMeta),
    ) -> Result<Option<EncodedRace>, CacheError> {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir_cache(dir.path(), Compression::Zstd);
        let race = race(2);
        cache.store(&race, "e1-00000001").await.unwrap();
        let key = cache.race_key("unit", "manifest");
        let stored = cache.store.get(vec![key.clone()], 1 << 24).await.unwrap();
        let mut manifest: Manifest = rmp_serde::from_slice(stored[0].as_ref().unwrap()).unwrap();
        let mut meta = (*race.meta).clone();
        damage(&mut manifest, &mut meta);
        // A hostile writer keeps the metadata's checksum consistent with what it wrote.
        let meta = crate::encode::to_compact_msgpack(&meta);
        manifest.meta_crc = crc32fast::hash(&meta);
        let items = vec![
            (
                key,
                Bytes::from(crate::encode::to_compact_msgpack(&manifest)),
            ),
            (cache.race_key("unit", "meta"), Bytes::from(meta)),
        ];
        cache.store.set(items).await.unwrap();
        cache.load("unit", None, 1 << 30).await
    }

    fn reason(result: Result<Option<EncodedRace>, CacheError>) -> String {
        match result {
            Err(CacheError::Corrupt { reason, .. }) => reason,
            other => panic!(
                "expected a corrupt entry, got {:?}",
                other.map(|r| r.is_some())
            ),
        }
    }

    #[tokio::test]
    async fn hostile_lengths_are_refused_before_anything_is_allocated() {
        // Chunks claiming 4×10^9 bytes each.
        let r = reason(
            load_after(|m, _| m.chunks.iter_mut().for_each(|c| c.raw_len = 4_000_000_000)).await,
        );
        assert!(r.contains("claims 4000000000 bytes"), "{r}");
        // Frame lengths and chunk sizes that agree with each other, over 1 GiB in all: the
        // lengths are impossible for a race of 4 cars.
        let r = reason(
            load_after(|m, _| {
                m.frame_lengths.iter_mut().for_each(|l| *l = 500_000);
                for c in &mut m.chunks {
                    c.raw_len = c.frames * 500_000;
                }
            })
            .await,
        );
        assert!(r.contains("a frame of 4 cars is 1 to"), "{r}");
        // Metadata that a race file could not have.
        let r = reason(
            load_after(|m, meta| {
                meta.total_frames = 1_000_000_000;
                m.total_frames = 1_000_000_000;
            })
            .await,
        );
        assert!(r.contains("total_frames"), "{r}");
        // Counts that disagree.
        let r = reason(
            load_after(|m, _| {
                m.frame_lengths.pop();
            })
            .await,
        );
        assert!(r.contains("frame counts disagree"), "{r}");
        let r = reason(
            load_after(|m, _| {
                m.chunks.pop();
            })
            .await,
        );
        assert!(r.contains("chunks for"), "{r}");
    }

    #[tokio::test]
    async fn frames_must_sit_where_the_manifest_puts_them() {
        // Move a byte from one frame's length to its neighbour's: every size still adds up.
        let r = reason(
            load_after(|m, _| {
                m.frame_lengths[10] += 1;
                m.frame_lengths[11] -= 1;
            })
            .await,
        );
        assert!(
            r.contains("frame 11 is not where the manifest puts it"),
            "{r}"
        );
    }

    #[tokio::test]
    async fn an_entry_over_the_memory_limit_is_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir_cache(dir.path(), Compression::Zstd);
        let race = race(2);
        cache.store(&race, "e1-00000001").await.unwrap();
        let limit = race.encoded_bytes() as u64 - 1;
        let r = reason(cache.load("unit", None, limit).await);
        assert!(r.contains("over the limit"), "{r}");
        let loaded = cache.load("unit", None, limit + 1).await.unwrap().unwrap();
        assert_same(&race, &loaded);
    }

    #[tokio::test]
    async fn values_longer_than_they_may_be_are_corrupt_without_being_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path().to_owned());
        store
            .set(vec![("k:big".into(), Bytes::from(vec![7u8; 1000]))])
            .await
            .unwrap();
        assert_eq!(
            store.get(vec!["k:big".into()], 1000).await.unwrap()[0]
                .as_ref()
                .unwrap()
                .len(),
            1000
        );
        match store.get(vec!["k:big".into()], 999).await {
            Err(CacheError::Corrupt { key, reason }) => {
                assert_eq!(key, "k:big");
                assert!(reason.contains("999"), "{reason}");
            }
            other => panic!("expected corrupt, got {other:?}"),
        }
        assert!(store.get(vec!["k:none".into()], 10).await.unwrap()[0].is_none());
    }

    #[test]
    fn cache_specs_parse_with_clear_errors() {
        assert_eq!("none".parse::<CacheSpec>().unwrap(), CacheSpec::None);
        assert_eq!(
            "dir:/tmp/x".parse::<CacheSpec>().unwrap(),
            CacheSpec::Dir("/tmp/x".into())
        );
        assert_eq!(
            "redis://127.0.0.1:6379/0".parse::<CacheSpec>().unwrap(),
            CacheSpec::Redis("redis://127.0.0.1:6379/0".into())
        );
        let error = |spec: &str| spec.parse::<CacheSpec>().unwrap_err().to_string();
        assert!(error("dir:").contains("path"));
        assert!(error("memcached://x").contains("unknown cache"));
        assert!(error("redis://[::1").contains("bad Redis URL"));
    }
}
