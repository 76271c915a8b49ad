//! What /config shows of discovery: the stream, the inbound policy and each destination's state.

use serde::Serialize;

use super::{Discovery, Snapshot};

/// What /config shows.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub endpoint: String,
    pub server_name: String,
    pub connected: bool,
    pub last_error: Option<String>,
    pub inbound: SnapshotStatus,
    pub destinations: Vec<DestinationStatus>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotStatus {
    /// The version running now.
    pub version: Option<u64>,
    /// The newest version received, and whether it was acked (applied) or nacked.
    pub last_version: Option<u64>,
    pub acked: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationStatus {
    pub destination: String,
    /// `service` (routed by the mesh), `passthrough` (not a mesh Service), `pending` (no answer
    /// yet), `timed-out` (no answer within initialTimeout: forwarded unchanged until it comes),
    /// `refused`, `shadowed` (the file's service wins).
    pub state: &'static str,
    pub service: Option<String>,
    #[serde(flatten)]
    pub snapshot: SnapshotStatus,
}

impl<T> Snapshot<T> {
    fn status(&self) -> SnapshotStatus {
        SnapshotStatus {
            version: self.applied.as_ref().map(|(version, _)| *version),
            last_version: self.last.as_ref().map(|(version, _)| *version),
            acked: self.last.as_ref().is_some_and(|(_, error)| error.is_none()),
            error: self.refused.clone().or_else(|| self.last.as_ref().and_then(|(_, error)| error.clone())),
        }
    }
}

impl Discovery {
    pub fn status(&self) -> Status {
        let state = self.lock();
        Status {
            endpoint: self.config.endpoint.clone(),
            server_name: self.config.server_name().to_owned(),
            connected: state.connected,
            last_error: state.last_error.clone(),
            inbound: state.inbound.status(),
            destinations: state
                .destinations
                .iter()
                .map(|(name, destination)| {
                    let service = destination.snapshot.applied.as_ref().and_then(|(_, s)| s.as_ref());
                    let state = if destination.waiting.is_some() {
                        "pending"
                    } else if destination.shadowed.is_some() {
                        "shadowed"
                    } else if service.is_some() {
                        "service"
                    } else if destination.snapshot.refused.is_some() {
                        "refused"
                    } else if destination.timed_out {
                        "timed-out"
                    } else {
                        "passthrough"
                    };
                    let mut snapshot = destination.snapshot.status();
                    if let Some(reason) = &destination.shadowed {
                        snapshot.error = Some(reason.clone());
                    }
                    DestinationStatus {
                        destination: name.clone(),
                        state,
                        service: service.map(|s| s.name.clone()),
                        snapshot,
                    }
                })
                .collect(),
        }
    }
}
