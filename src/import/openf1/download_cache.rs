//! The on-disk download cache: one file per OpenF1 request, named by a hash of the request,
//! so an interrupted import resumes where it stopped instead of downloading everything again.
//! `client` reads it before asking the API and writes every successful response into it.
//!
//! Entries are written to a temporary file and renamed, so a killed import never leaves a
//! partial response behind that a later run would trust.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Responses cached under one directory, e.g. `data/openf1-downloads/9590`.
#[derive(Debug, Clone)]
pub struct DownloadCache {
    dir: PathBuf,
}

impl DownloadCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the response to `endpoint?query` is kept: readable names, unique by hash.
    pub fn path_for(&self, endpoint: &str, query: &str) -> PathBuf {
        let digest = Sha256::digest(format!("{endpoint}?{query}").as_bytes());
        let hex: String = digest[..10].iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{endpoint}-{hex}.json"))
    }

    /// The cached body, if this request was answered before; at most `max_bytes` are read.
    pub fn get(&self, endpoint: &str, query: &str, max_bytes: u64) -> io::Result<Option<Vec<u8>>> {
        let path = self.path_for(endpoint, query);
        match fs::metadata(&path) {
            Ok(meta) if meta.len() > max_bytes => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is larger than {max_bytes} bytes", path.display()),
            )),
            Ok(_) => fs::read(&path).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Stores a body atomically (temporary file, fsync, rename).
    pub fn put(&self, endpoint: &str, query: &str, body: &[u8]) -> io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let path = self.path_for(endpoint, query);
        let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
        let write = || -> io::Result<()> {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(body)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_and_finds_by_request() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DownloadCache::new(dir.path().join("9590"));
        assert_eq!(
            cache.get("laps", "session_key=9590", 1 << 20).unwrap(),
            None
        );
        cache.put("laps", "session_key=9590", b"[]").unwrap();
        assert_eq!(
            cache
                .get("laps", "session_key=9590", 1 << 20)
                .unwrap()
                .as_deref(),
            Some(&b"[]"[..])
        );
        assert_eq!(
            cache.get("laps", "session_key=9591", 1 << 20).unwrap(),
            None
        );
        assert!(cache.get("laps", "session_key=9590", 1).is_err());
        let leftovers = fs::read_dir(cache.dir())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .to_string_lossy()
                    .ends_with(".tmp")
            })
            .count();
        assert_eq!(leftovers, 0);
    }
}
