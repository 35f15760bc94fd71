//! Assembling the service: state, router, background pruning, serving with
//! graceful shutdown.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::MockConnectInfo;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use openred_core::id::Fingerprint;
use openred_core::{Clock, IdentityKeypair, NodeId, UnixTime};
use tokio::net::TcpListener;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api;
use crate::cache::RecordCache;
use crate::config::{Config, ConfigError, Database};
use crate::key::{self, KeyError};
use crate::limits::{client_address, Limits};
use crate::store::{Store, StoreError};
use crate::transport::{NodeTransport, OutboundTransport};
use openred_http::{harden, OutboundClient, OutboundConfig};

/// Why the directory could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The key could not be loaded or created.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The data directory could not be created.
    #[error("data directory: {0}")]
    DataDir(std::io::Error),
    /// The outbound client could not be built.
    #[error("outbound client: {0}")]
    Outbound(String),
    /// The OpenAPI document could not be serialised.
    #[error("openapi: {0}")]
    OpenApi(String),
}

/// The address a request came from, after trusted-proxy handling.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddress(pub IpAddr);

/// Everything a handler may use.
pub struct AppState {
    pub(crate) config: Config,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) store: Store,
    pub(crate) cache: RecordCache,
    pub(crate) limits: Limits,
    pub(crate) fingerprint: Fingerprint,
    pub(crate) metrics: Option<PrometheusHandle>,
    pub(crate) openapi_json: String,
    pub(crate) key: IdentityKeypair,
    pub(crate) transport: Arc<dyn NodeTransport>,
    /// What the accept loop counts.
    pub(crate) connections: Arc<openred_http::ListenerStats>,
}

impl AppState {
    /// Nodes seen at or after this instant are active.
    pub(crate) fn active_cutoff(&self, now: UnixTime) -> UnixTime {
        now.minus(self.config.active_window_s)
    }

    /// The heartbeat interval for this node and record, with jitter. The
    /// jitter is a hash of the node and its `seq`, so a crowd of nodes that
    /// started together spreads out, and each answer is reproducible.
    pub(crate) fn next_heartbeat(&self, node_id: &NodeId, seq: u64) -> u64 {
        let mut hasher = blake3::Hasher::new();
        hasher.update(node_id.as_bytes());
        hasher.update(&seq.to_be_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
        let unit = u64::from_be_bytes(first) as f64 / u64::MAX as f64; // [0, 1]
        let base = self.config.heartbeat_interval_s as f64;
        let factor = 1.0 - self.config.heartbeat_jitter + 2.0 * self.config.heartbeat_jitter * unit;
        (base * factor).round().max(1.0) as u64
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "OpenRed directory",
        description = "A phone book of signed node records and an introducer. It stores no tokens and no user data."
    ),
    tags(
        (name = "nodes", description = "Registration and discovery"),
        (name = "tokens", description = "Introductions"),
        (name = "service", description = "Health, metrics, this document"),
    )
)]
struct ApiDoc;

/// The routes and their OpenAPI document, from one list, so that the
/// document cannot describe a route the server lacks or miss one it has.
pub fn routes() -> (Router<Arc<AppState>>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(api::register))
        .routes(routes!(api::deregister))
        .routes(routes!(api::discover))
        .routes(routes!(api::node))
        .routes(routes!(api::request_connection))
        .routes(routes!(api::health))
        .routes(routes!(api::metrics_text))
        .routes(routes!(api::openapi))
        .split_for_parts()
}

/// The document as this directory serves it: the routes' own, the answers
/// every API shares (see [`openred_http::openapi`]), and the limits of this
/// directory's configuration.
fn document(mut doc: utoipa::openapi::OpenApi, config: &Config) -> utoipa::openapi::OpenApi {
    openred_http::openapi::complete(&mut doc);
    let discover = doc
        .paths
        .paths
        .get_mut(openred_core::routes::directory::DISCOVER)
        .and_then(|item| item.get.as_mut());
    for parameter in discover
        .and_then(|op| op.parameters.as_mut())
        .into_iter()
        .flatten()
    {
        if parameter.name != "limit" {
            continue;
        }
        if let Some(utoipa::openapi::RefOr::T(utoipa::openapi::Schema::Object(schema))) =
            parameter.schema.as_mut()
        {
            schema.maximum = Some(config.max_page_size.into());
        }
    }
    doc
}

/// A directory, opened and ready to serve.
pub struct Directory {
    state: Arc<AppState>,
    router: Router,
}

impl Directory {
    /// Validates the configuration, loads (or creates) the key, opens the
    /// database and warms the lookup cache. Nodes are reached through the
    /// outbound client.
    pub async fn open(config: Config, clock: Arc<dyn Clock>) -> Result<Directory, StartError> {
        let outbound = OutboundClient::new(OutboundConfig {
            allow_private: config.danger_allow_private_addresses,
            ..OutboundConfig::default()
        })
        .map_err(|e| StartError::Outbound(e.to_string()))?;
        Directory::open_with_transport(config, clock, Arc::new(OutboundTransport(outbound))).await
    }

    /// As [`Directory::open`], reaching nodes through `transport`.
    pub async fn open_with_transport(
        config: Config,
        clock: Arc<dyn Clock>,
        transport: Arc<dyn NodeTransport>,
    ) -> Result<Directory, StartError> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir).map_err(StartError::DataDir)?;
        let (key, created) = key::load_or_create(&config.data_dir)?;
        if created {
            tracing::info!("created a new directory key");
        }
        let store = Store::open(&config.database).await?;
        let ttl = match (&config.cache_ttl_s, &config.database) {
            (Some(s), _) => Some(Duration::from_secs(*s)),
            (None, Database::Sqlite(_)) => None,
            // Replicas may share PostgreSQL: re-read entries after a while.
            (None, Database::Postgres(_)) => Some(Duration::from_secs(5)),
        };
        let cache = RecordCache::new(ttl);
        for node in store.all_registered().await? {
            cache.put(&node);
        }
        let (router, doc) = routes();
        let openapi_json = document(doc, &config)
            .to_pretty_json()
            .map_err(|e| StartError::OpenApi(e.to_string()))?;
        let state = Arc::new(AppState {
            limits: Limits::new(&config.rate_limits),
            fingerprint: key.public().directory_fingerprint(),
            metrics: crate::metrics::handle(),
            config,
            clock,
            store,
            cache,
            openapi_json,
            key,
            transport,
            connections: Arc::default(),
        });
        let router = router
            .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
            .with_state(state.clone());
        let router = harden(router, state.config.max_body_bytes);
        Ok(Directory { state, router })
    }

    /// The fingerprint of the directory's key, which nodes pin.
    pub fn fingerprint(&self) -> Fingerprint {
        self.state.fingerprint
    }

    /// The directory's public key.
    pub fn public_key(&self) -> openred_core::IdentityPublicKey {
        self.state.key.public()
    }

    /// The router, for driving the API without a socket (`oneshot`).
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// The database.
    pub fn store(&self) -> &Store {
        &self.state.store
    }

    /// Number of nodes in the lookup cache.
    pub fn cached_nodes(&self) -> usize {
        self.state.cache.len()
    }

    /// Deletes records not seen within the retention period, once.
    pub async fn prune_once(&self) -> Result<usize, StoreError> {
        let now = self.state.clock.now();
        let pruned = self
            .state
            .store
            .prune(now.minus(self.state.config.retention_s))
            .await?;
        for id in &pruned {
            self.state.cache.remove(id);
        }
        self.state.store.prune_nonces(now).await?;
        self.state.limits.forget_idle();
        if !pruned.is_empty() {
            tracing::info!(
                count = pruned.len(),
                "pruned records not seen within retention"
            );
        }
        Ok(pruned.len())
    }

    /// Serves on `listener` until `shutdown` completes, then finishes the
    /// requests in flight and closes the database. Prunes in the background.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let interval = Duration::from_secs(self.state.config.prune_interval_s);
        let this = Arc::new(self);
        let pruner = {
            let this = this.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval);
                loop {
                    tick.tick().await;
                    if let Err(e) = this.prune_once().await {
                        tracing::warn!(error = %e, "pruning failed; will retry");
                    }
                }
            })
        };
        let result = openred_http::serve(
            listener,
            this.router.clone(),
            this.state.config.serve_limits(),
            this.state.connections.clone(),
            shutdown,
        )
        .await;
        pruner.abort();
        this.state.store.close().await;
        result
    }
}

/// The one middleware every request passes: it finds the client's
/// address (for rate limits) and counts and times the request (metrics).
/// One layer rather than two, since a lookup is cheap enough that each
/// layer's cost shows.
async fn observe(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let request = with_client_address(&state, request);
    crate::metrics::track(request, next).await
}

fn with_client_address(state: &AppState, mut request: Request) -> Request {
    // As axum's ConnectInfo extractor does: the real connection, else the
    // address a test injected with MockConnectInfo.
    let extensions = request.extensions();
    let peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .or_else(|| extensions.get::<MockConnectInfo<SocketAddr>>().map(|m| m.0))
        .unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
    let client = client_address(peer, request.headers(), &state.config.trusted_proxies);
    request.extensions_mut().insert(ClientAddress(client));
    request
}
