//! The files module's routes: the two P2P routes (see `upload.rs`), and
//! the owner's admin API for a dashboard and the CLI: shares (list,
//! create, revoke), offers received, fetch, and transfers with their
//! progress.

use openred_core::error_code::ErrorCode;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use openred_core::NodeId;
use openred_http::ApiError;
use serde::{Deserialize, Serialize};

use super::disk::DiskError;
use super::store::{FileId, Share};
use super::transfers::TransferView;
use super::{
    upload, FileOffer, Files, FilesError, ShareRequest, DOWNLOAD_PATH, OFFER_CONTENT_TYPE,
    REQUEST_PATH,
};
use crate::modules::printable;
use crate::peer::{framed, Peers};

type Shared = State<Peers>;

/// `POST /p2p/file-request` and `POST /p2p/file-download`.
pub(super) fn p2p_routes(module: Arc<Files>) -> Router<Peers> {
    let m = module.clone();
    Router::new()
        .route(
            REQUEST_PATH,
            framed(REQUEST_PATH, move |peers, live, payload| {
                upload::grant(m.clone(), peers, live, payload)
            }),
        )
        .route(
            DOWNLOAD_PATH,
            post(move |State(state): Shared, body: Bytes| {
                upload::serve(module.clone(), state, body)
            }),
        )
}

/// The admin routes under `/admin/v1/files`.
pub(super) fn admin_routes(module: Arc<Files>) -> Router<Peers> {
    let (m1, m2, m3, m4, m5, m6) = (
        module.clone(),
        module.clone(),
        module.clone(),
        module.clone(),
        module.clone(),
        module,
    );
    Router::new()
        .route(
            "/admin/v1/files/shares",
            get(move || list_shares(m1.clone()))
                .post(move |state: Shared, body| create_share(m2.clone(), state, body)),
        )
        .route(
            "/admin/v1/files/shares/{file_id}/revoke",
            post(move |state: Shared, id| revoke(m3.clone(), state, id)),
        )
        .route("/admin/v1/files/offers", get(offers))
        .route(
            "/admin/v1/files/fetch",
            post(move |state: Shared, body| fetch(m4.clone(), state, body)),
        )
        .route(
            "/admin/v1/files/transfers",
            get(move || async move { Json(m5.transfers()) }),
        )
        .route(
            "/admin/v1/files/transfers/{transfer_id}",
            get(move |id| transfer(m6.clone(), id)),
        )
}

impl FilesError {
    /// The answer on the admin API.
    pub fn to_api(&self) -> ApiError {
        let text = self.to_string();
        match self {
            FilesError::Invalid(code, _) => ApiError::new(*code, text),
            FilesError::Disk(DiskError::Changed) => ApiError::new(ErrorCode::FileChanged, text),
            FilesError::Disk(DiskError::NotAFile(_)) => ApiError::new(ErrorCode::NotAFile, text),
            FilesError::Disk(DiskError::NotAbsolute) => ApiError::new(ErrorCode::BadPath, text),
            FilesError::Disk(DiskError::InsideDataFolder(_)) => {
                ApiError::new(ErrorCode::InsideDataFolder, text)
            }
            FilesError::Disk(DiskError::Open { .. } | DiskError::Read(_)) => {
                ApiError::new(ErrorCode::CannotRead, text)
            }
            FilesError::NotFound(_) => ApiError::new(ErrorCode::UnknownFile, text),
            FilesError::Conflict(code, _) => ApiError::new(*code, text),
            FilesError::NotStarted => ApiError::new(
                ErrorCode::NotStarted,
                "the files module has not started yet",
            ),
            FilesError::Node(e) => e.to_api(),
            FilesError::Store(e) => ApiError::internal("file sharing storage", e),
            FilesError::Write { .. } => ApiError::new(ErrorCode::CannotWrite, text),
        }
    }
}

/// A share as the admin API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShareView {
    /// Its ID.
    pub file_id: String,
    /// The name peers see.
    pub name: String,
    /// The canonical path shared.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// BLAKE3 of the contents, 64 hex digits.
    pub blake3: String,
    /// The peers allowed to fetch it.
    pub peers: Vec<String>,
    /// When it was shared (Unix seconds).
    pub created_at: u64,
    /// When it ends.
    pub expires_at: u64,
    /// Completed downloads allowed, if limited.
    pub max_downloads: Option<u64>,
    /// Completed downloads so far.
    pub downloads: u64,
    /// `active`, `expired`, `revoked` or `exhausted` (limit reached).
    pub state: String,
}

impl ShareView {
    fn of(share: &Share, now: u64) -> ShareView {
        let state = if share.revoked_at.is_some() {
            "revoked"
        } else if now >= share.expires_at.0 {
            "expired"
        } else if share.limit_reached() {
            "exhausted"
        } else {
            "active"
        };
        ShareView {
            file_id: share.file_id.to_string(),
            name: share.name.clone(),
            path: share.path.display().to_string(),
            size: share.size(),
            blake3: data_encoding::HEXLOWER.encode(&share.blake3),
            peers: share.peers.iter().map(|p| p.to_string()).collect(),
            created_at: share.created_at.0,
            expires_at: share.expires_at.0,
            max_downloads: share.max_downloads,
            downloads: share.downloads,
            state: state.into(),
        }
    }
}

/// `POST /admin/v1/files/shares`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateShare {
    /// An absolute path readable by the node.
    pub path: String,
    /// The peers allowed to fetch it.
    #[schema(value_type = Vec<openred_core::wire::NodeIdText>)]
    pub to: Vec<NodeId>,
    /// Its lifetime in seconds (default from the settings).
    #[serde(default, deserialize_with = "openred_core::wire::integer::option_u64")]
    pub expires_in_s: Option<u64>,
    /// Completed downloads allowed (no limit if absent).
    #[serde(default, deserialize_with = "openred_core::wire::integer::option_u64")]
    pub max_downloads: Option<u64>,
}

/// The answer to [`CreateShare`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShareCreated {
    /// The share.
    pub share: ShareView,
    /// The peers whose offer was queued in the messaging outbox.
    pub offered: Vec<String>,
    /// The peers whose offer could not be queued (no messaging module).
    pub not_offered: Vec<String>,
}

fn parse_file_id(text: &str) -> Result<FileId, ApiError> {
    FileId::parse(text).ok_or_else(|| ApiError::new(ErrorCode::BadFileId, "32 hex digits expected"))
}

async fn list_shares(module: Arc<Files>) -> Result<Json<Vec<ShareView>>, ApiError> {
    let running = module.running().map_err(|e| e.to_api())?;
    let now = running.context.peers().map(|n| n.now().0).unwrap_or(0);
    let shares = running
        .store
        .shares(10_000)
        .await
        .map_err(|e| FilesError::from(e).to_api())?;
    Ok(Json(shares.iter().map(|s| ShareView::of(s, now)).collect()))
}

async fn create_share(
    module: Arc<Files>,
    State(state): Shared,
    body: Result<Json<CreateShare>, JsonRejection>,
) -> Result<Json<ShareCreated>, ApiError> {
    let Json(request) = body?;
    let peers = request.to.clone();
    let (share, offers) = module
        .share(
            &state,
            ShareRequest {
                path: PathBuf::from(&request.path),
                peers,
                expires_in_s: request.expires_in_s,
                max_downloads: request.max_downloads,
            },
        )
        .await
        .map_err(|e| e.to_api())?;
    let (offered, not_offered): (Vec<_>, Vec<_>) = offers.into_iter().partition(|(_, ok)| *ok);
    Ok(Json(ShareCreated {
        share: ShareView::of(&share, state.clock().now().0),
        offered: offered.iter().map(|(p, _)| p.to_string()).collect(),
        not_offered: not_offered.iter().map(|(p, _)| p.to_string()).collect(),
    }))
}

async fn revoke(
    module: Arc<Files>,
    State(state): Shared,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<ShareView>, ApiError> {
    let Path(id) = id?;
    let file_id = parse_file_id(&id)?;
    let share = module
        .revoke(&state, &file_id)
        .await
        .map_err(|e| e.to_api())?;
    Ok(Json(ShareView::of(&share, state.clock().now().0)))
}

/// A file offered by a peer, from the messaging inbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OfferView {
    /// Who offers it.
    pub node_id: String,
    /// The share.
    pub file_id: String,
    /// The owner's name for it, control characters escaped: to display
    /// only.
    pub name: String,
    /// Its size.
    pub size: u64,
    /// BLAKE3 of the contents.
    pub blake3: String,
    /// When the share ends.
    pub expires_at: u64,
    /// Completed downloads allowed, if limited.
    pub max_downloads: Option<u64>,
    /// When the offer arrived.
    pub received_at: u64,
}

async fn offers(State(state): Shared) -> Result<Json<Vec<OfferView>>, ApiError> {
    let Some(mailbox) = state.mailbox() else {
        return Ok(Json(Vec::new()));
    };
    let notes = mailbox
        .received(OFFER_CONTENT_TYPE, 10_000)
        .await
        .map_err(|e| ApiError::internal("messaging storage", e))?;
    let offers = notes
        .iter()
        .filter_map(|m| {
            let offer: FileOffer = serde_json::from_str(&m.body).ok()?;
            FileId::parse(&offer.file_id)?;
            Some(OfferView {
                node_id: m.peer.to_string(),
                file_id: offer.file_id.to_lowercase(),
                name: printable(&offer.name, 200),
                size: offer.size,
                blake3: printable(&offer.blake3, 64),
                expires_at: offer.expires_at,
                max_downloads: offer.max_downloads,
                received_at: m.received_at,
            })
        })
        .collect();
    Ok(Json(offers))
}

/// `POST /admin/v1/files/fetch`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FetchRequest {
    /// The owner.
    #[schema(value_type = openred_core::wire::NodeIdText)]
    pub node_id: NodeId,
    /// The share.
    #[schema(pattern = "^[0-9a-fA-F]{32}$")]
    pub file_id: String,
    /// An absolute path: the file to write, or an existing folder to
    /// write the owner's name (made safe) in.
    pub out: String,
}

async fn fetch(
    module: Arc<Files>,
    State(state): Shared,
    body: Result<Json<FetchRequest>, JsonRejection>,
) -> Result<Json<TransferView>, ApiError> {
    let Json(request) = body?;
    let peer = request.node_id;
    let file_id = parse_file_id(&request.file_id)?;
    let transfer = module
        .fetch(&state, peer, file_id, PathBuf::from(request.out))
        .await
        .map_err(|e| e.to_api())?;
    Ok(Json(transfer.view()))
}

async fn transfer(
    module: Arc<Files>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<TransferView>, ApiError> {
    let Path(id) = id?;
    let id = FileId::parse(&id)
        .ok_or_else(|| ApiError::new(ErrorCode::BadTransferId, "32 hex digits expected"))?;
    module
        .transfer(&id)
        .map(|t| Json(t.view()))
        .ok_or_else(|| ApiError::new(ErrorCode::UnknownTransfer, "no such transfer"))
}
