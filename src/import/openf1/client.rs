//! The OpenF1 HTTP client: one request at a time, throttled under the API's rate limit,
//! retried with exponential backoff and jitter on 429, 5xx and network errors (honouring
//! `Retry-After`), with every response bounded in size and kept in the [`DownloadCache`].
//! `mod.rs` drives it endpoint by endpoint; nothing else talks to the API.

use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::header::RETRY_AFTER;
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;

use super::download_cache::DownloadCache;
use super::ImportError;

/// How the client talks to the API; the defaults stay under the public API's limit of
/// 30 requests per 10 s.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Base URL, e.g. `https://api.openf1.org/v1`.
    pub api_url: String,
    pub requests_per_second: f64,
    /// Attempts after the first one for a request answered with 429, 5xx or a network error.
    pub retries: u32,
    /// First backoff delay; doubled at each retry (plus up to 50 % jitter).
    pub backoff: Duration,
    /// Longest wait a `Retry-After` header may ask for.
    pub max_retry_after: Duration,
    pub timeout: Duration,
    /// Largest response body accepted, in bytes.
    pub max_response_bytes: u64,
}

/// What the client did, for the summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Requests sent to the API (retries included).
    pub requests: u32,
    /// Answers taken from the download cache instead.
    pub cached: u32,
    /// Requests repeated after a 429, a 5xx or a network error.
    pub retries: u32,
}

pub struct Client {
    http: reqwest::Client,
    options: ClientOptions,
    cache: Option<DownloadCache>,
    state: Mutex<(Option<Instant>, ClientStats)>,
}

/// What one attempt came to.
enum Attempt {
    Body(Vec<u8>),
    Retry {
        after: Option<Duration>,
        why: String,
    },
}

impl Client {
    pub fn new(options: ClientOptions, cache: Option<DownloadCache>) -> Result<Self, ImportError> {
        let http = reqwest::Client::builder()
            .timeout(options.timeout)
            .user_agent(concat!("replay-hub/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ImportError::Http {
                url: options.api_url.clone(),
                message: e.to_string(),
            })?;
        Ok(Self {
            http,
            options,
            cache,
            state: Mutex::new((None, ClientStats::default())),
        })
    }

    pub async fn stats(&self) -> ClientStats {
        self.state.lock().await.1
    }

    /// `GET {api_url}/{endpoint}?{query}` decoded as a list of records. `query` is the raw
    /// OpenF1 filter string (`session_key=9590&date>=...`); it is also the cache key.
    pub async fn get<T: DeserializeOwned>(
        &self,
        endpoint: &str,
        query: &str,
    ) -> Result<Vec<T>, ImportError> {
        let body = self.get_body(endpoint, query).await?;
        decode(endpoint, query, &body)
    }

    async fn get_body(&self, endpoint: &str, query: &str) -> Result<Vec<u8>, ImportError> {
        let max = self.options.max_response_bytes;
        if let Some(cache) = &self.cache {
            if let Some(body) = cache
                .get(endpoint, query, max)
                .map_err(|e| ImportError::Cache(cache.dir().to_owned(), e))?
            {
                self.state.lock().await.1.cached += 1;
                return Ok(body);
            }
        }
        let url = format!(
            "{}/{endpoint}?{}",
            self.options.api_url.trim_end_matches('/'),
            encode_query(query)
        );
        let mut attempt = 0;
        let body = loop {
            self.throttle().await;
            match self.attempt(&url).await? {
                Attempt::Body(body) => break body,
                Attempt::Retry { after, why } => {
                    if attempt >= self.options.retries {
                        return Err(ImportError::Http {
                            url,
                            message: format!("{why}; gave up after {} attempts", attempt + 1),
                        });
                    }
                    let backoff = self.options.backoff * 2u32.saturating_pow(attempt);
                    let jitter = backoff.mul_f64(rand::rng().random_range(0.0..0.5));
                    let wait = after
                        .map(|a| a.min(self.options.max_retry_after))
                        .unwrap_or_default()
                        .max(backoff + jitter);
                    tracing::debug!(%url, %why, ?wait, "retrying");
                    self.state.lock().await.1.retries += 1;
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        };
        if let Some(cache) = &self.cache {
            cache
                .put(endpoint, query, &body)
                .map_err(|e| ImportError::Cache(cache.dir().to_owned(), e))?;
        }
        Ok(body)
    }

    /// Waits until the next request may go, so requests stay `1 / requests_per_second` apart.
    async fn throttle(&self) {
        let gap = Duration::from_secs_f64(1.0 / self.options.requests_per_second.max(0.01));
        let mut state = self.state.lock().await;
        if let Some(last) = state.0 {
            let next = last + gap;
            let now = Instant::now();
            if next > now {
                tokio::time::sleep(next - now).await;
            }
        }
        state.0 = Some(Instant::now());
        state.1.requests += 1;
    }

    async fn attempt(&self, url: &str) -> Result<Attempt, ImportError> {
        let response = match self.http.get(url).send().await {
            Ok(r) => r,
            Err(e) => {
                return Ok(Attempt::Retry {
                    after: None,
                    why: format!("request failed: {e}"),
                })
            }
        };
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            let after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64);
            return Ok(Attempt::Retry {
                after,
                why: format!("HTTP {status}"),
            });
        }
        if status == StatusCode::NOT_FOUND {
            // The API answers a query with no results with 404 {"detail": "No results found."}.
            return Ok(Attempt::Body(b"[]".to_vec()));
        }
        if !status.is_success() {
            let text = read_bounded(url, response, 4096).await.unwrap_or_default();
            return Err(ImportError::Http {
                url: url.to_owned(),
                message: format!("HTTP {status}: {}", String::from_utf8_lossy(&text)),
            });
        }
        match read_bounded(url, response, self.options.max_response_bytes).await {
            Ok(body) => Ok(Attempt::Body(body)),
            Err(err @ ImportError::ResponseTooLarge { .. }) => Err(err),
            Err(err) => Ok(Attempt::Retry {
                after: None,
                why: err.to_string(),
            }),
        }
    }
}

/// Reads a body, refusing one larger than `max` bytes before holding more than that.
async fn read_bounded(
    url: &str,
    mut response: reqwest::Response,
    max: u64,
) -> Result<Vec<u8>, ImportError> {
    let too_large = || ImportError::ResponseTooLarge {
        url: url.to_owned(),
        limit: max,
    };
    if response.content_length().is_some_and(|len| len > max) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() as u64 + chunk.len() as u64 > max {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                return Err(ImportError::Http {
                    url: url.to_owned(),
                    message: format!("reading the response: {e}"),
                })
            }
        }
    }
}

fn decode<T: DeserializeOwned>(
    endpoint: &str,
    query: &str,
    body: &[u8],
) -> Result<Vec<T>, ImportError> {
    serde_json::from_slice(body).map_err(|e| {
        let start = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        ImportError::BadResponse {
            request: format!("{endpoint}?{query}"),
            message: format!("{e} (response starts {start:?})"),
        }
    })
}

/// Percent-encodes what a URL query cannot carry as is (a `+` in a date would read as a
/// space); the filter operators `>=`, `<` stay readable.
fn encode_query(query: &str) -> String {
    let mut out = String::with_capacity(query.len());
    for c in query.chars() {
        match c {
            '+' => out.push_str("%2B"),
            ' ' => out.push_str("%20"),
            '#' => out.push_str("%23"),
            c => out.push(c),
        }
    }
    out
}
