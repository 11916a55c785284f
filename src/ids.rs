//! Identifiers and secrets, with their rules in one place: race and session ids (safe in URLs,
//! file names and Redis keys), random tokens, the SHA-256 hashes replicas keep instead of
//! control tokens, and the comparison of secrets. A leaf: everything that reads an id or a token
//! from outside (HTTP, files, Redis, the command line) checks it here.

use std::borrow::Borrow;
use std::fmt;

use sha2::{Digest, Sha256};

/// The rule every race and session id follows, as error messages state it.
pub const ID_RULE: &str = "use 1 to 64 of a-z, 0-9, '-' and '_'";

/// An id that breaks [`ID_RULE`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} id {id:?}: {ID_RULE}")]
pub struct InvalidId {
    /// "race" or "session".
    pub kind: &'static str,
    pub id: String,
}

/// True for ids usable in URLs, file names and keys: 1–64 of `[a-z0-9_-]`.
pub fn is_valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Checks `id` against [`ID_RULE`].
            pub fn parse(id: impl Into<String>) -> Result<Self, InvalidId> {
                let id = id.into();
                if is_valid_id(&id) {
                    Ok(Self(id))
                } else {
                    Err(InvalidId { kind: $kind, id })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(id: String) -> Result<Self, InvalidId> {
                Self::parse(id)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidId;
            fn from_str(id: &str) -> Result<Self, InvalidId> {
                Self::parse(id)
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A race's id: its file is `<id>.race`, its URLs `/api/races/<id>`.
    RaceId,
    "race"
);
id_type!(
    /// A session's id: its page is `/sessions/<id>`, its socket `/ws/sessions/<id>`.
    SessionId,
    "session"
);

impl SessionId {
    /// A fresh random id (8 hex digits).
    pub fn random() -> Self {
        Self(random_token(4))
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random lowercase hex string of `bytes` random bytes.
pub fn random_token(bytes: usize) -> String {
    let raw: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    hex(&raw)
}

/// A token hash that is not 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("token_sha256 is not 64 lowercase hex digits")]
pub struct InvalidTokenHash;

/// The SHA-256 of a control token, hex: what session records keep, so replicas and the data
/// directory can check a token without ever storing it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TokenHash(String);

impl TokenHash {
    pub fn of(token: &str) -> Self {
        Self(hex(&Sha256::digest(token.as_bytes())))
    }

    pub fn parse(hash: impl Into<String>) -> Result<Self, InvalidTokenHash> {
        let hash = hash.into();
        let hex_digit = |c: u8| c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
        if hash.len() == 64 && hash.bytes().all(hex_digit) {
            Ok(Self(hash))
        } else {
            Err(InvalidTokenHash)
        }
    }

    /// True when `token` hashes to this, compared in time independent of where they differ.
    pub fn matches(&self, token: &str) -> bool {
        same_secret(&Self::of(token).0, &self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TokenHash {
    type Error = InvalidTokenHash;
    fn try_from(hash: String) -> Result<Self, InvalidTokenHash> {
        Self::parse(hash)
    }
}

impl From<TokenHash> for String {
    fn from(hash: TokenHash) -> String {
        hash.0
    }
}

/// Compares secrets in time independent of where they differ and of their lengths: both are
/// hashed first, and the fixed-size digests compared in full.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    a.iter().zip(b.iter()).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_url_and_key_safe() {
        for ok in ["a", "monza-2024", "gp_57", &"x".repeat(64)] {
            assert!(RaceId::parse(ok).is_ok(), "{ok}");
            assert!(SessionId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Monza", "a b", "a/b", "a:b", "é", &"x".repeat(65)] {
            let err = RaceId::parse(bad).unwrap_err();
            assert_eq!(err.kind, "race");
            assert!(err.to_string().contains("1 to 64"), "{err}");
            assert!(SessionId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_deserialize_only_when_valid() {
        let ok: RaceId = serde_json::from_str("\"monza\"").unwrap();
        assert_eq!(ok.as_str(), "monza");
        assert_eq!(serde_json::to_string(&ok).unwrap(), "\"monza\"");
        assert!(serde_json::from_str::<RaceId>("\"../etc\"").is_err());
    }

    #[test]
    fn tokens_are_random_hex() {
        let (a, b) = (random_token(16), random_token(16));
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert_eq!(SessionId::random().len(), 8);
    }

    #[test]
    fn token_hashes_check_tokens_and_refuse_anything_else() {
        let hash = TokenHash::of("secret");
        assert!(hash.matches("secret"));
        assert!(!hash.matches("secreT"));
        assert!(!hash.matches(""));
        assert_eq!(TokenHash::parse(hash.as_str().to_owned()), Ok(hash.clone()));
        for bad in ["", "ab", &"AB".repeat(32), &"g".repeat(64), &"a".repeat(65)] {
            assert_eq!(TokenHash::parse(bad), Err(InvalidTokenHash), "{bad:?}");
        }
    }

    #[test]
    fn secrets_compare_whole_whatever_their_lengths() {
        assert!(same_secret("test-admin-token", "test-admin-token"));
        for other in [
            "",
            "t",
            "test-admin-toke",
            "test-admin-tokenx",
            "Test-admin-token",
        ] {
            assert!(!same_secret(other, "test-admin-token"), "{other:?}");
        }
    }
}
