//! What the test binaries share: a webhook state with fixed namespaces and no Mesh.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, atomic::AtomicBool},
};

use braid_webhook::{
    cluster::{Cluster, MeshSource, Namespaces},
    inject::ControlPlane,
    metrics::Metrics,
    server::AppState,
};
use prometheus_client::registry::Registry;

pub const PROXY_VERSION: &str = "test-version";

pub fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Namespace "meshed" carries braid.dev/inject=enabled, "plain" has no labels.
pub fn state(synced: bool) -> Arc<AppState> {
    let namespaces = BTreeMap::from([
        ("meshed".to_owned(), BTreeMap::from([("braid.dev/inject".to_owned(), "enabled".to_owned())])),
        ("plain".to_owned(), BTreeMap::new()),
    ]);
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    Arc::new(AppState {
        cluster: Cluster {
            namespaces: Namespaces::Fixed(Arc::new(namespaces)),
            mesh: MeshSource::Fixed(None),
            proxy_version: PROXY_VERSION.to_owned(),
            control_plane: ControlPlane::default(),
            synced: Arc::new(AtomicBool::new(synced)),
        },
        metrics,
        registry,
    })
}
