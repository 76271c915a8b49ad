//! The configuration file, read at start and polled for changes. A changed file that fails to
//! parse or check is refused whole: the proxy keeps the last good configuration, logs why, counts
//! it in config_reload_total{result="rejected"} and shows the reason on /config.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use braid_api::config::{Config, ConfigError};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::{ReloadLabels, ReloadResult};
use crate::state::ProxyState;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the configuration file {path} was refused: {source}")]
    Invalid { path: PathBuf, source: ConfigError },
}

/// What /config reports about the file.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReloadStatus {
    pub path: Option<PathBuf>,
    /// Seconds since the epoch of the last applied configuration.
    pub applied_at: Option<u64>,
    /// Why the newest version of the file was refused; cleared when a good one is applied.
    pub last_error: Option<String>,
}

pub fn read(path: &Path) -> Result<(Config, Vec<u8>), LoadError> {
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read { path: path.to_owned(), source })?;
    let text = String::from_utf8_lossy(&bytes);
    let config =
        Config::parse(&text).map_err(|source| LoadError::Invalid { path: path.to_owned(), source })?;
    Ok((config, bytes))
}

fn now() -> Option<u64> {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).ok().map(|d| d.as_secs())
}

impl ReloadStatus {
    pub fn applied(path: Option<PathBuf>) -> Self {
        Self { path, applied_at: now(), last_error: None }
    }
}

/// Polls `path` every `interval` until `shutdown`, applying each changed version that is good.
pub async fn watch(
    path: PathBuf,
    mut last: Vec<u8>,
    interval: Duration,
    state: Arc<ProxyState>,
    status: Arc<Mutex<ReloadStatus>>,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The file is read only when its modification time or size changed since the last look.
    let mut stamp = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
        if let Ok(metadata) = tokio::fs::metadata(&path).await {
            let current = (metadata.modified().ok(), metadata.len());
            if stamp == Some(current) {
                continue;
            }
            stamp = Some(current);
        }
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(error) => {
                let reason =
                    format!("cannot read {}: {error}; keeping the last good configuration", path.display());
                reject(&state, &status, reason);
                continue;
            }
        };
        if bytes == last {
            continue;
        }
        last = bytes;
        let parsed = Config::parse(&String::from_utf8_lossy(&last));
        let result = parsed.map_err(|e| e.to_string()).and_then(|config| {
            warn_on_listener_change(&state.table.load().config, &config);
            state.apply_file(config)
        });
        match result {
            Ok(()) => {
                state
                    .metrics
                    .config_reloads
                    .get_or_create(&ReloadLabels { result: ReloadResult::applied })
                    .inc();
                *status.lock().unwrap_or_else(|p| p.into_inner()) = ReloadStatus::applied(Some(path.clone()));
                info!(path = %path.display(), "configuration applied");
            }
            Err(error) => reject(
                &state,
                &status,
                format!("{} was refused, keeping the last good configuration: {error}", path.display()),
            ),
        }
    }
}

fn reject(state: &ProxyState, status: &Mutex<ReloadStatus>, reason: String) {
    let mut status = status.lock().unwrap_or_else(|p| p.into_inner());
    if status.last_error.as_deref() == Some(reason.as_str()) {
        return;
    }
    warn!(reason = %reason, "configuration not applied");
    state.metrics.config_reloads.get_or_create(&ReloadLabels { result: ReloadResult::rejected }).inc();
    status.last_error = Some(reason);
}

/// Listeners are bound at start; a changed address takes effect only after a restart.
fn warn_on_listener_change(current: &Config, next: &Config) {
    let listeners = |config: &Config| {
        let mut addresses: Vec<_> = [config.admin, config.inbound.listen, config.outbound.listen]
            .into_iter()
            .chain(config.services.iter().filter_map(|s| s.listen))
            .collect();
        addresses.sort();
        addresses
    };
    if listeners(current) != listeners(next) {
        warn!("the listener addresses changed; they take effect when the proxy restarts");
    }
}
