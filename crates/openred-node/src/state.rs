//! The node's state: the peer layer, the modules, and what only the owner
//! reaches (the admin token, the owner's logins, the confinement report).
//! The admin API's handlers get it; the modules never do (they get
//! [`crate::peer::Peers`]).

use std::sync::Arc;

use crate::modules::Modules;
use crate::peer::PeerLayer;

/// Everything the node's handlers and tasks share: the peer layer (what
/// it dereferences to), the modules, and what only the owner reaches.
pub struct NodeState {
    /// Sessions, frames, handshakes, the directory, the keys' agent.
    pub(crate) peer: Arc<PeerLayer>,
    pub(crate) admin_token: String,
    /// What the node process applied to itself, if it did.
    pub(crate) confinement: std::sync::OnceLock<crate::agent::sandbox::Protections>,
    /// The modules and their switches.
    pub(crate) modules: Arc<Modules>,
    /// The owner's password + TOTP logins.
    pub(crate) owner_login: crate::owner::login::OwnerLogin,
}

impl std::ops::Deref for NodeState {
    type Target = PeerLayer;

    fn deref(&self) -> &PeerLayer {
        &self.peer
    }
}

impl NodeState {
    /// The modules and their switches.
    pub fn modules(&self) -> &Modules {
        &self.modules
    }

    /// One round of the peer layer's housekeeping (see
    /// [`PeerLayer::run_lifecycle`]).
    pub async fn run_lifecycle(&self) -> crate::peer::lifecycle::LifecycleReport {
        self.peer.run_lifecycle().await
    }

    /// The peer layer's handle, what modules get of the node.
    pub fn peers(&self) -> crate::peer::Peers {
        crate::peer::Peers::new(self.peer.clone())
    }
}
