//! HTTP plumbing shared by the directory and the node: the one outbound
//! client, the one JSON error type of their APIs ([`ApiError`],
//! [`harden`]), the accept loop of every listener ([`serve()`]: caps on
//! connections per listener and per source, header and idle timeouts; see
//! its module), and the group-commit writer of the stores that batch their
//! writes ([`group_commit`]; it is here because this is the one crate both
//! services share that may use tokio).
//!
//! # The outbound client
//!
//! The directory calls the `api_url` a node registered (reachability proof,
//! token push) and nodes call the `api_url` found in signed records. Every
//! such call goes through [`OutboundClient`], which owns the outbound
//! policy (DESIGN §2, "Outbound requests (SSRF)"):
//!
//! - only the **origin** of a registered URL is used ([`ApiUrl`]); paths are
//!   `&'static str` built by our code, never taken from data;
//! - `https://` only, and IP literals must be global, checked with
//!   [`ApiUrl::check_policy`] before anything is sent (no resolver sees a
//!   literal);
//! - names are resolved by [`GlobalResolver`], which drops every non-global
//!   address (loopback, private, link-local, …) and fails if none is left;
//! - no redirects (a 3xx is returned to the caller, never followed), no
//!   proxies (environment variables are ignored), no decompression, HTTP/1.1
//!   only, short connect and request timeouts;
//! - response bodies are read incrementally and capped
//!   ([`OutboundConfig::max_response_bytes`]);
//! - a rate limit per target `host:port`, and a bound on the requests in
//!   flight to it (HTTP/1.1 carries one request per connection at a time, so
//!   this bounds the open connections per peer; a request over the bound
//!   waits for a slot within its timeout).
//!
//! `allow_private` (only from `--danger-allow-private-addresses`) allows
//! plain `http`, loopback and private addresses, and nothing else.
//!
//! What this crate must **never** do: follow a redirect, use a proxy, accept
//! a path or a full URL from data, connect to a non-global address without
//! `allow_private`, buffer an unbounded body, or put in an error's text what
//! it found on the way (resolved addresses, TLS details, body contents): such
//! details go to `tracing` at debug level only. Any HTTP status is an answer
//! (the caller decides what it means); errors are for policy and transport.
//!
//! TLS is rustls with the *ring* provider and the webpki roots; no aws-lc-rs,
//! no system TLS.

#![forbid(unsafe_code)]

mod api_error;
pub mod group_commit;
pub mod openapi;
mod resolve;
pub mod serve;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use openred_core::ApiUrl;
use reqwest::header::{HeaderValue, CONTENT_TYPE};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use api_error::{harden, ApiError};
pub use resolve::{filter_addresses, GlobalResolver, ResolveError};
pub use serve::{raise_open_files_limit, serve, ListenerCounts, ListenerStats, ServeLimits};

/// A rate: `per_second` requests on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostQuota {
    /// Sustained requests per second.
    pub per_second: NonZeroU32,
    /// Requests allowed at once before the rate applies.
    pub burst: NonZeroU32,
}

impl HostQuota {
    fn to_quota(self) -> Quota {
        Quota::per_second(self.per_second).allow_burst(self.burst)
    }
}

impl Default for HostQuota {
    /// 20 requests per second, bursts of 40.
    fn default() -> Self {
        HostQuota {
            per_second: NonZeroU32::new(20).unwrap_or(NonZeroU32::MIN),
            burst: NonZeroU32::new(40).unwrap_or(NonZeroU32::MIN),
        }
    }
}

/// Settings of an [`OutboundClient`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundConfig {
    /// Allows plain `http`, loopback and private addresses. Only ever true
    /// under `--danger-allow-private-addresses`.
    pub allow_private: bool,
    /// Limit for resolving the name and opening the connection (TCP and
    /// TLS). Default 3 s.
    pub connect_timeout: Duration,
    /// Limit for the whole request, from connecting to the last body byte.
    /// Default 10 s.
    pub request_timeout: Duration,
    /// The largest response body accepted, in bytes. Default 64 KiB.
    pub max_response_bytes: usize,
    /// Rate limit per target `host:port`. Default 20/s, burst 40.
    pub per_host: HostQuota,
    /// Requests in flight, hence connections open, per host at most.
    /// Default 100.
    pub max_connections_per_host: usize,
    /// Idle connections kept per host. Default 100.
    pub pool_max_idle_per_host: usize,
    /// How long an idle connection is kept. Default 5 s: below the
    /// servers' keep-alive limit (their 10 s header-read timeout), so that
    /// a pooled connection is not reused just as the server closes it.
    pub pool_idle_timeout: Duration,
    /// The `User-Agent` sent. Default `openred/<version>`.
    pub user_agent: String,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        OutboundConfig {
            allow_private: false,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            max_response_bytes: 64 * 1024,
            per_host: HostQuota::default(),
            max_connections_per_host: 100,
            pool_max_idle_per_host: 100,
            pool_idle_timeout: Duration::from_secs(5),
            user_agent: concat!("openred/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

/// Why an outbound request did not produce a response. The texts are fixed:
/// they never echo addresses, resolver output, TLS details or body contents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboundError {
    /// The URL, or what its name resolves to, is refused by the policy.
    #[error("refused by the outbound address policy: {0}")]
    Policy(String),
    /// Any transport failure: name lookup, connection, TLS, protocol.
    #[error("the peer is unreachable")]
    Unreachable,
    /// The connection or the request took too long.
    #[error("the peer did not answer in time")]
    Timeout,
    /// The response body is larger than the configured cap.
    #[error("the peer's answer is too large")]
    TooLarge,
    /// Too many requests to this host; try again later.
    #[error("too many requests to this peer; try again later")]
    RateLimited,
    /// The request body could not be encoded.
    #[error("the request body could not be encoded")]
    Encode,
    /// The response body is not what was expected (see [`Response::json`]).
    #[error("the peer's answer is not valid for the expected type")]
    InvalidBody,
    /// The configuration is unusable (from [`OutboundClient::new`]).
    #[error("invalid outbound client configuration: {0}")]
    Config(String),
}

/// An HTTP answer of any status, with its (capped) body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The HTTP status code, e.g. 200, 302, 404.
    pub status: u16,
    /// The whole body, at most `max_response_bytes` long.
    pub body: Bytes,
}

impl Response {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Decodes the body as JSON. Fails with [`OutboundError::InvalidBody`],
    /// whose text does not echo the body.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, OutboundError> {
        serde_json::from_slice(&self.body).map_err(|error| {
            tracing::debug!(%error, "outbound response is not the expected JSON");
            OutboundError::InvalidBody
        })
    }
}

/// Prunes the per-host limiter's idle keys every this many requests, so
/// that the map stays bounded by the hosts recently called.
const PRUNE_EVERY: u64 = 1024;

/// The outbound HTTP client; cheap to clone (clones share the connection
/// pool and the rate limits).
#[derive(Clone)]
pub struct OutboundClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    allow_private: bool,
    max_response_bytes: usize,
    limiter: DefaultKeyedRateLimiter<String>,
    requests: AtomicU64,
    request_timeout: Duration,
    max_connections_per_host: usize,
    /// The slots of each host with requests in flight (or recently).
    in_flight: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
}

impl std::fmt::Debug for OutboundClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundClient")
            .field("allow_private", &self.inner.allow_private)
            .field("max_response_bytes", &self.inner.max_response_bytes)
            .finish_non_exhaustive()
    }
}

impl OutboundClient {
    /// Builds the client.
    pub fn new(config: OutboundConfig) -> Result<OutboundClient, OutboundError> {
        let resolver = GlobalResolver::new(config.allow_private, config.connect_timeout);
        OutboundClient::with_resolver(config, resolver)
    }

    fn with_resolver(
        config: OutboundConfig,
        resolver: GlobalResolver,
    ) -> Result<OutboundClient, OutboundError> {
        if config.connect_timeout.is_zero() || config.request_timeout.is_zero() {
            return Err(OutboundError::Config("timeouts must not be zero".into()));
        }
        if config.max_connections_per_host == 0 {
            return Err(OutboundError::Config(
                "max_connections_per_host must not be zero".into(),
            ));
        }
        if config.max_response_bytes == 0 {
            return Err(OutboundError::Config(
                "max_response_bytes must not be zero".into(),
            ));
        }
        let user_agent = HeaderValue::from_str(&config.user_agent)
            .map_err(|_| OutboundError::Config("the user agent is not a valid header".into()))?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .referer(false)
            .http1_only()
            .https_only(!config.allow_private)
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .pool_idle_timeout(config.pool_idle_timeout)
            .user_agent(user_agent)
            .dns_resolver(Arc::new(resolver))
            .build()
            .map_err(|error| {
                tracing::debug!(%error, "building the outbound HTTP client failed");
                OutboundError::Config("the HTTP client could not be built".into())
            })?;
        Ok(OutboundClient {
            inner: Arc::new(Inner {
                http,
                allow_private: config.allow_private,
                max_response_bytes: config.max_response_bytes,
                limiter: RateLimiter::keyed(config.per_host.to_quota()),
                requests: AtomicU64::new(0),
                request_timeout: config.request_timeout,
                max_connections_per_host: config.max_connections_per_host,
                in_flight: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Whether private addresses and plain http are allowed.
    pub fn allow_private(&self) -> bool {
        self.inner.allow_private
    }

    /// The largest response body accepted, in bytes: callers that page
    /// through a listing size their pages to it.
    pub fn max_response_bytes(&self) -> usize {
        self.inner.max_response_bytes
    }

    /// `GET origin + path`.
    pub async fn get(
        &self,
        origin: &ApiUrl,
        path: &'static str,
    ) -> Result<Response, OutboundError> {
        let Prepared { url, slots } = self.prepare(origin, path)?;
        self.send(origin, slots, self.inner.http.get(url)).await
    }

    /// `GET origin + path?query`, the query encoded by us from
    /// `(name, value)` pairs: values from data never shape the path.
    pub async fn get_with_query(
        &self,
        origin: &ApiUrl,
        path: &'static str,
        query: &[(&'static str, String)],
    ) -> Result<Response, OutboundError> {
        let Prepared { mut url, slots } = self.prepare(origin, path)?;
        url.query_pairs_mut()
            .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        self.send(origin, slots, self.inner.http.get(url)).await
    }

    /// `POST origin + path` with `body` as JSON.
    pub async fn post_json<B: Serialize + ?Sized>(
        &self,
        origin: &ApiUrl,
        path: &'static str,
        body: &B,
    ) -> Result<Response, OutboundError> {
        let Prepared { url, slots } = self.prepare(origin, path)?;
        let bytes = serde_json::to_vec(body).map_err(|error| {
            tracing::debug!(%error, "encoding an outbound JSON body failed");
            OutboundError::Encode
        })?;
        let request = self
            .inner
            .http
            .post(url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(bytes);
        self.send(origin, slots, request).await
    }

    /// `POST origin + path` with raw `bytes` of the given content type.
    pub async fn post_bytes(
        &self,
        origin: &ApiUrl,
        path: &'static str,
        bytes: impl Into<Bytes>,
        content_type: &'static str,
    ) -> Result<Response, OutboundError> {
        let Prepared { url, slots } = self.prepare(origin, path)?;
        let content_type =
            HeaderValue::from_str(content_type).map_err(|_| OutboundError::Encode)?;
        let request = self
            .inner
            .http
            .post(url)
            .header(CONTENT_TYPE, content_type)
            .body(bytes.into());
        self.send(origin, slots, request).await
    }

    /// `POST origin + path` with raw `bytes`, for an answer read as it
    /// arrives (a download): the answer's headers must come within the
    /// request timeout; after that the body may take as long as it needs,
    /// but each read must bring bytes within `idle_timeout`. The request
    /// holds one of the host's connection slots until the answer is dropped.
    pub async fn post_bytes_streaming(
        &self,
        origin: &ApiUrl,
        path: &'static str,
        bytes: impl Into<Bytes>,
        content_type: &'static str,
        idle_timeout: Duration,
    ) -> Result<StreamingResponse, OutboundError> {
        let Prepared { url, slots } = self.prepare(origin, path)?;
        let content_type =
            HeaderValue::from_str(content_type).map_err(|_| OutboundError::Encode)?;
        let request = self
            .inner
            .http
            .post(url)
            .header(CONTENT_TYPE, content_type)
            // The client's total timeout would cut a long download: this
            // request has its own, and the idle timeout bounds each read.
            .timeout(STREAMING_REQUEST_LIMIT)
            .body(bytes.into());
        let timeout = self.inner.request_timeout;
        let result = async {
            let slot = tokio::time::timeout(timeout, slots.acquire_owned())
                .await
                .map_err(|_| OutboundError::Timeout)?
                .map_err(|_| OutboundError::Unreachable)?;
            let response = tokio::time::timeout(timeout, request.send())
                .await
                .map_err(|_| OutboundError::Timeout)?
                .map_err(classify)?;
            Ok(StreamingResponse {
                status: response.status().as_u16(),
                response,
                idle_timeout,
                max_response_bytes: self.inner.max_response_bytes,
                _slot: slot,
            })
        }
        .await;
        if let Err(error) = &result {
            tracing::debug!(%origin, %error, "outbound streaming request failed");
        }
        result
    }

    /// Applies the policy and the rate limit, and builds the URL. Nothing
    /// has been sent when this fails.
    fn prepare(&self, origin: &ApiUrl, path: &'static str) -> Result<Prepared, OutboundError> {
        origin
            .check_policy(self.inner.allow_private)
            .map_err(|error| OutboundError::Policy(error.to_string()))?;
        if !path.starts_with('/') || path.starts_with("//") || path.contains('\\') {
            return Err(OutboundError::Policy(
                "the path must be absolute and relative to the origin".into(),
            ));
        }
        let url = reqwest::Url::parse(&format!("{}{}", origin.as_str(), path))
            .map_err(|_| OutboundError::Policy("the path does not form a valid URL".into()))?;
        // Whatever the path, the request must go to the registered origin.
        if url.origin().ascii_serialization() != origin.as_str() {
            return Err(OutboundError::Policy(
                "the path leaves the registered origin".into(),
            ));
        }
        let key = format!(
            "{}:{}",
            url.host_str().unwrap_or_default(),
            url.port_or_known_default().unwrap_or_default()
        );
        let inner = &self.inner;
        if inner.requests.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            inner.limiter.retain_recent();
            // Hosts with nothing in flight: nobody else holds their slots.
            inner
                .in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|_, slots| Arc::strong_count(slots) > 1);
        }
        if inner.limiter.check_key(&key).is_err() {
            tracing::debug!(%origin, "outbound request rate limited");
            return Err(OutboundError::RateLimited);
        }
        let slots = inner
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key)
            .or_insert_with(|| {
                Arc::new(tokio::sync::Semaphore::new(inner.max_connections_per_host))
            })
            .clone();
        Ok(Prepared { url, slots })
    }

    async fn send(
        &self,
        origin: &ApiUrl,
        slots: Arc<tokio::sync::Semaphore>,
        request: reqwest::RequestBuilder,
    ) -> Result<Response, OutboundError> {
        let result = async {
            // Held until the whole body is read: the connection is busy
            // until then.
            let _slot = tokio::time::timeout(self.inner.request_timeout, slots.acquire_owned())
                .await
                .map_err(|_| OutboundError::Timeout)?
                .map_err(|_| OutboundError::Unreachable)?;
            let response = request.send().await.map_err(classify)?;
            let status = response.status().as_u16();
            let body = read_capped(response, self.inner.max_response_bytes).await?;
            Ok(Response { status, body })
        }
        .await;
        if let Err(error) = &result {
            tracing::debug!(%origin, %error, "outbound request failed");
        }
        result
    }
}

/// The longest a streaming request may last in all (its reads are bounded
/// by the caller's idle timeout).
const STREAMING_REQUEST_LIMIT: Duration = Duration::from_secs(30 * 24 * 3600);

/// An answer whose body is read piece by piece as it arrives (see
/// [`OutboundClient::post_bytes_streaming`]).
pub struct StreamingResponse {
    /// The HTTP status code.
    pub status: u16,
    response: reqwest::Response,
    idle_timeout: Duration,
    max_response_bytes: usize,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl std::fmt::Debug for StreamingResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamingResponse")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl StreamingResponse {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The next piece of the body (`None` at its end), within the idle
    /// timeout.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, OutboundError> {
        tokio::time::timeout(self.idle_timeout, self.response.chunk())
            .await
            .map_err(|_| OutboundError::Timeout)?
            .map_err(classify)
    }

    /// The whole body, capped like any answer's: for an error answer.
    pub async fn into_response(self) -> Result<Response, OutboundError> {
        let status = self.status;
        let body = tokio::time::timeout(
            self.idle_timeout,
            read_capped(self.response, self.max_response_bytes),
        )
        .await
        .map_err(|_| OutboundError::Timeout)??;
        Ok(Response { status, body })
    }
}

/// A request that passed the policy: its URL and its host's slots.
struct Prepared {
    url: reqwest::Url,
    slots: Arc<tokio::sync::Semaphore>,
}

/// Reads the body chunk by chunk, failing as soon as it exceeds `max`.
async fn read_capped(mut response: reqwest::Response, max: usize) -> Result<Bytes, OutboundError> {
    let announced = response.content_length();
    if announced.is_some_and(|len| len > max as u64) {
        return Err(OutboundError::TooLarge);
    }
    let capacity = announced.map_or(0, |len| usize::try_from(len).unwrap_or(max).min(max));
    let mut body = BytesMut::with_capacity(capacity);
    while let Some(chunk) = response.chunk().await.map_err(classify)? {
        if chunk.len() > max - body.len() {
            return Err(OutboundError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Maps a transport error to its fixed-text kind, logging the details.
fn classify(error: reqwest::Error) -> OutboundError {
    tracing::debug!(error = ?error, "outbound transport error");
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(current) = source {
        if let Some(resolve) = current.downcast_ref::<ResolveError>() {
            return match resolve {
                ResolveError::NoGlobalAddress => {
                    OutboundError::Policy(ResolveError::NoGlobalAddress.to_string())
                }
                ResolveError::Timeout => OutboundError::Timeout,
                ResolveError::Lookup => OutboundError::Unreachable,
            };
        }
        source = current.source();
    }
    if error.is_timeout() {
        OutboundError::Timeout
    } else {
        OutboundError::Unreachable
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::atomic::AtomicUsize;

    /// A plain HTTP server on 127.0.0.1 answering 200 "ok" and counting
    /// connections that sent anything.
    async fn counting_server() -> (u16, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = stream.read(&mut buf).await;
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                });
            }
        });
        (port, hits)
    }

    #[tokio::test]
    async fn names_resolving_to_private_addresses_are_refused_by_policy() {
        let (port, hits) = counting_server().await;
        let loopback = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
        // A public-looking name whose only address is loopback.
        let client = OutboundClient::with_resolver(
            OutboundConfig::default(),
            GlobalResolver::fixed(false, loopback.clone()),
        )
        .unwrap();
        let origin = ApiUrl::parse_origin(&format!("https://node.example.com:{port}")).unwrap();
        let err = client.get(&origin, "/").await.unwrap_err();
        assert!(matches!(err, OutboundError::Policy(_)), "{err:?}");
        let text = err.to_string();
        assert!(
            !text.contains("127.0.0.1") && !text.contains(&port.to_string()),
            "{text}"
        );
        assert_eq!(hits.load(Ordering::SeqCst), 0);

        // The same path with the danger flag does reach the server, through
        // the resolver (the name is not a literal).
        let config = OutboundConfig {
            allow_private: true,
            ..OutboundConfig::default()
        };
        let client =
            OutboundClient::with_resolver(config, GlobalResolver::fixed(true, loopback)).unwrap();
        let origin = ApiUrl::parse_origin(&format!("http://node.example.com:{port}")).unwrap();
        let response = client.get(&origin, "/").await.unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(&response.body[..], b"ok");
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn paths_must_stay_on_the_origin() {
        let client = OutboundClient::new(OutboundConfig::default()).unwrap();
        let origin = ApiUrl::parse_origin("https://node.example.com").unwrap();
        for bad in ["api", "//evil.example/x", "/\\evil.example", ""] {
            assert!(
                matches!(client.prepare(&origin, bad), Err(OutboundError::Policy(_))),
                "{bad}"
            );
        }
        let prepared = client.prepare(&origin, "/api/v3/tokens/receive").unwrap();
        assert_eq!(
            prepared.url.as_str(),
            "https://node.example.com/api/v3/tokens/receive"
        );
    }

    #[test]
    fn config_is_validated() {
        let zero = OutboundConfig {
            request_timeout: Duration::ZERO,
            ..OutboundConfig::default()
        };
        assert!(matches!(
            OutboundClient::new(zero),
            Err(OutboundError::Config(_))
        ));
        let zero = OutboundConfig {
            max_response_bytes: 0,
            ..OutboundConfig::default()
        };
        assert!(matches!(
            OutboundClient::new(zero),
            Err(OutboundError::Config(_))
        ));
        let zero = OutboundConfig {
            max_connections_per_host: 0,
            ..OutboundConfig::default()
        };
        assert!(matches!(
            OutboundClient::new(zero),
            Err(OutboundError::Config(_))
        ));
        let defaults = OutboundConfig::default();
        assert_eq!(defaults.max_connections_per_host, 100);
        assert_eq!(defaults.max_response_bytes, 65536);
        assert_eq!(defaults.per_host.per_second.get(), 20);
        assert_eq!(defaults.per_host.burst.get(), 40);
        assert!(!defaults.allow_private);
    }

    #[test]
    fn json_errors_do_not_echo_the_body() {
        let response = Response {
            status: 200,
            body: Bytes::from_static(br#"{"secret":"hunter2"}"#),
        };
        let err = response.json::<Vec<u8>>().unwrap_err();
        assert_eq!(err, OutboundError::InvalidBody);
        assert!(!err.to_string().contains("hunter2"));
    }
}
