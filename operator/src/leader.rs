//! Leader election on a coordination.k8s.io/v1 Lease: of the operator's replicas exactly one runs
//! the controllers, and the others stand by to take over.
//!
//! The rules are client-go's, so they behave like every other controller's:
//! - the holder renews the Lease every renew period;
//! - a standby takes the Lease over once the record has stayed unchanged for the lease duration.
//!   It measures that on its own clock, never against the renewTime written by another node, so
//!   clocks that disagree cannot make it steal a live lease;
//! - a holder that could not renew for the renew deadline (lease duration minus renew period)
//!   steps down before any standby may take over, so two leaders never act at once;
//! - on SIGTERM the holder releases the Lease, and a standby takes over at its next look (the
//!   retry period) instead of a whole lease duration later.
//!
//! One refinement over client-go: a standby dates a change it sees to its previous look (when
//! the record was still the old one) rather than to the look that saw it, so it takes over within
//! the lease duration of the leader's last renewal instead of up to a retry period later. That
//! is safe because the previous look is less than a renew period old, and the holder steps down a
//! whole renew period before the lease duration runs out.
//!
//! The decision is the pure [`decide`]; [`Elector`] does the reading and writing around it.

use std::time::{Duration, Instant};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{PostParams, ResourceExt},
};
use tokio_util::sync::CancellationToken;

/// Where the Lease is, who we are, and the timing.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// Written to holderIdentity: the pod name in a cluster, host and pid elsewhere.
    pub identity: String,
    /// How long a standby waits, after the last change it saw, before taking over (15 s).
    pub lease_duration: Duration,
    /// How often the holder renews (5 s).
    pub renew_period: Duration,
    /// How often a standby looks, and how soon a failed renewal is retried (2 s).
    pub retry_period: Duration,
}

impl LeaseSettings {
    /// The holder gives up after this long without a successful renewal: one renew period
    /// before a standby could take over.
    pub fn renew_deadline(&self) -> Duration {
        self.lease_duration.saturating_sub(self.renew_period)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(
        "the renew period ({renew:?}) must be at most a third of the lease duration ({lease:?}), so that \
         a holder renews at least twice before a standby may take over"
    )]
    Timing { renew: Duration, lease: Duration },
    #[error("the retry period ({retry:?}) must be shorter than the renew period ({renew:?})")]
    Retry { retry: Duration, renew: Duration },
    #[error("the identity must not be empty")]
    EmptyIdentity,
}

impl LeaseSettings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.identity.is_empty() {
            return Err(SettingsError::EmptyIdentity);
        }
        if self.renew_period.is_zero() || self.renew_period.saturating_mul(3) > self.lease_duration {
            return Err(SettingsError::Timing { renew: self.renew_period, lease: self.lease_duration });
        }
        if self.retry_period.is_zero() || self.retry_period >= self.renew_period {
            return Err(SettingsError::Retry { retry: self.retry_period, renew: self.renew_period });
        }
        Ok(())
    }
}

/// The parts of a Lease the decision reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// None or empty: nobody holds it (never taken, or released).
    pub holder: Option<String>,
    /// The holder's lease duration (its leaseDurationSeconds), which a standby honours.
    pub lease_duration: Duration,
}

impl Record {
    /// `fallback` is used when the Lease names no (valid) duration.
    pub fn from_lease(lease: &Lease, fallback: Duration) -> Self {
        let spec = lease.spec.as_ref();
        let seconds = spec.and_then(|s| s.lease_duration_seconds).and_then(|s| u64::try_from(s).ok());
        Record {
            holder: spec.and_then(|s| s.holder_identity.clone()).filter(|h| !h.is_empty()),
            lease_duration: seconds.filter(|s| *s > 0).map_or(fallback, Duration::from_secs),
        }
    }
}

/// What to do with the Lease now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it, or its holder stopped renewing: take it.
    Acquire,
    /// This process holds it: renew.
    Renew,
    /// Another process holds a live lease, which expires in this long unless renewed.
    Wait(Duration),
}

/// When the record seen `now` for the first time was written, as far as this process can tell
/// safely: at its previous look, when the record was still another one, if that look is recent
/// (less than a renew period ago); otherwise, or on the first look, now.
pub fn date_change(previous_look: Option<Instant>, now: Instant, renew_period: Duration) -> Instant {
    match previous_look {
        Some(at) if now.saturating_duration_since(at) < renew_period => at,
        _ => now,
    }
}

/// Decides from the Lease as last read (`None`: there is no Lease), the local instant its current
/// record was written (see [`date_change`]), and now.
pub fn decide(lease: Option<&Record>, first_seen: Instant, now: Instant, me: &str) -> Decision {
    let Some(record) = lease else { return Decision::Acquire };
    match record.holder.as_deref() {
        None => Decision::Acquire,
        Some(holder) if holder == me => Decision::Renew,
        Some(_) => {
            let expires = first_seen + record.lease_duration;
            match expires.checked_duration_since(now) {
                Some(left) if !left.is_zero() => Decision::Wait(left),
                _ => Decision::Acquire,
            }
        }
    }
}

/// How holding the Lease ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// The caller asked to stop (SIGTERM, or the controllers ended): release the Lease.
    Stopped,
    /// Another process holds it now, or it could not be renewed in time: stop leading at once.
    Lost(String),
}

/// The reading and writing around [`decide`].
pub struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// The resourceVersion of the Lease as last read, and when that version was written (as
    /// dated by [`date_change`]).
    observed: Option<(String, Instant)>,
    /// When the Lease was last read or written successfully.
    last_look: Option<Instant>,
    last_renewed: Option<Instant>,
}

impl Elector {
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        let api = Api::namespaced(client, &settings.namespace);
        Elector { api, settings, observed: None, last_look: None, last_renewed: None }
    }

    /// Returns once this process holds the Lease (true), or when `shutdown` is cancelled first
    /// (false). `on_standby` runs after every successful read of the Lease while another process
    /// holds it, so the caller can report that it is healthy and following.
    pub async fn acquire(&mut self, shutdown: &CancellationToken, mut on_standby: impl FnMut(&str)) -> bool {
        let mut last_holder: Option<String> = None;
        loop {
            let wait = match self.try_acquire().await {
                Ok(Attempt::Acquired) => return true,
                Ok(Attempt::HeldBy(holder, expires_in)) => {
                    if last_holder.as_deref() != Some(holder.as_str()) {
                        tracing::info!(
                            lease = %self.settings.name,
                            %holder,
                            "another replica leads; standing by"
                        );
                        last_holder = Some(holder.clone());
                    }
                    on_standby(&holder);
                    expires_in.min(self.settings.retry_period)
                }
                Ok(Attempt::Raced) => self.settings.retry_period,
                Err(err) => {
                    tracing::warn!(lease = %self.settings.name, error = %err, "cannot read or take the Lease; retrying");
                    self.settings.retry_period
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return false,
            }
        }
    }

    /// Renews the Lease every renew period until `stop` is cancelled or the Lease is lost.
    pub async fn hold(&mut self, stop: &CancellationToken) -> Held {
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.settings.renew_period) => {}
                () = stop.cancelled() => return Held::Stopped,
            }
            loop {
                // A request that hangs must not keep this process leading past the deadline.
                let since = self.last_renewed.map_or(Duration::MAX, |at| at.elapsed());
                let left = self.settings.renew_deadline().saturating_sub(since);
                let error = match tokio::time::timeout(left, self.renew()).await {
                    Ok(Ok(())) => break,
                    Ok(Err(RenewError::Taken(holder))) => {
                        return Held::Lost(format!("the Lease is held by {holder} now"));
                    }
                    Ok(Err(RenewError::Kube(err))) => err.to_string(),
                    Err(_) => "the API server did not answer in time".to_owned(),
                };
                let since = self.last_renewed.map_or(Duration::MAX, |at| at.elapsed());
                if since >= self.settings.renew_deadline() {
                    return Held::Lost(format!(
                        "could not renew the Lease for {since:?} (last error: {error})"
                    ));
                }
                tracing::warn!(lease = %self.settings.name, %error, "cannot renew the Lease; retrying");
                tokio::select! {
                    () = tokio::time::sleep(self.settings.retry_period) => {}
                    () = stop.cancelled() => return Held::Stopped,
                }
            }
        }
    }

    /// Gives the Lease up, if this process still holds it, so a standby takes over at once.
    pub async fn release(&mut self) {
        let result = async {
            let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else { return Ok(false) };
            let record = Record::from_lease(&lease, self.settings.lease_duration);
            if record.holder.as_deref() != Some(self.settings.identity.as_str()) {
                return Ok(false);
            }
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            spec.holder_identity = None;
            // As client-go does: a client that goes by the duration rather than the empty holder
            // waits at most a second.
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(MicroTime(Timestamp::now()));
            self.api.replace(&self.settings.name, &write_params(), &lease).await?;
            Ok::<_, kube::Error>(true)
        }
        .await;
        match result {
            Ok(true) => tracing::info!(lease = %self.settings.name, "released the Lease"),
            Ok(false) => {}
            Err(err) => {
                tracing::warn!(lease = %self.settings.name, error = %err, "cannot release the Lease; a standby takes over when it expires")
            }
        }
    }

    /// One look at the Lease, taking it when [`decide`] says so.
    async fn try_acquire(&mut self) -> Result<Attempt, kube::Error> {
        let lease = self.api.get_opt(&self.settings.name).await?;
        let now = Instant::now();
        let first_seen = self.first_seen(lease.as_ref(), now);
        let record = lease.as_ref().map(|l| Record::from_lease(l, self.settings.lease_duration));
        match decide(record.as_ref(), first_seen, now, &self.settings.identity) {
            Decision::Wait(expires_in) => {
                let holder = record.and_then(|r| r.holder).unwrap_or_default();
                Ok(Attempt::HeldBy(holder, expires_in))
            }
            Decision::Acquire | Decision::Renew => {
                let previous = record.and_then(|r| r.holder);
                match self.write_holder(lease, previous.as_deref()).await {
                    Ok(()) => {
                        tracing::info!(
                            lease = %self.settings.name,
                            identity = %self.settings.identity,
                            previous = previous.as_deref().unwrap_or("none"),
                            "acquired the Lease; leading"
                        );
                        Ok(Attempt::Acquired)
                    }
                    // Another replica wrote first (409), or created it first: look again.
                    Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::Raced),
                    Err(err) => Err(err),
                }
            }
        }
    }

    async fn renew(&mut self) -> Result<(), RenewError> {
        let lease = self.api.get_opt(&self.settings.name).await?;
        let record = lease.as_ref().map(|l| Record::from_lease(l, self.settings.lease_duration));
        let holder = record.and_then(|r| r.holder);
        if holder.as_deref() != Some(self.settings.identity.as_str()) {
            return Err(RenewError::Taken(holder.unwrap_or_else(|| "nobody".to_owned())));
        }
        self.write_holder(lease, holder.as_deref()).await?;
        Ok(())
    }

    /// Writes this process as the holder, with an optimistic lock on the version read (replace)
    /// or on the name (create), so of two replicas writing at once one gets 409.
    async fn write_holder(
        &mut self,
        lease: Option<Lease>,
        previous: Option<&str>,
    ) -> Result<(), kube::Error> {
        let now = MicroTime(Timestamp::now());
        let seconds = i32::try_from(self.settings.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let written = match lease {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.settings.name.clone()),
                        namespace: Some(self.settings.namespace.clone()),
                        labels: Some([("app.kubernetes.io/part-of".to_owned(), "braid".to_owned())].into()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.settings.identity.clone()),
                        lease_duration_seconds: Some(seconds),
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                self.api.create(&write_params(), &lease).await?
            }
            Some(mut lease) => {
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                if previous != Some(self.settings.identity.as_str()) {
                    // A change of holder: counted, and the acquire time restarts.
                    if previous.is_some() || spec.acquire_time.is_some() {
                        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
                    }
                    spec.acquire_time = Some(now.clone());
                }
                spec.holder_identity = Some(self.settings.identity.clone());
                spec.lease_duration_seconds = Some(seconds);
                spec.renew_time = Some(now);
                self.api.replace(&self.settings.name, &write_params(), &lease).await?
            }
        };
        let at = Instant::now();
        self.last_renewed = Some(at);
        self.last_look = Some(at);
        self.observed = written.resource_version().map(|version| (version, at));
        Ok(())
    }

    /// When the Lease's current version was written, as dated by [`date_change`].
    fn first_seen(&mut self, lease: Option<&Lease>, now: Instant) -> Instant {
        let version = lease.and_then(|l| l.resource_version()).unwrap_or_default();
        let previous_look = self.last_look.replace(now);
        match &self.observed {
            Some((seen, at)) if *seen == version => *at,
            _ => {
                let at = date_change(previous_look, now, self.settings.renew_period);
                self.observed = Some((version, at));
                at
            }
        }
    }
}

enum Attempt {
    Acquired,
    HeldBy(String, Duration),
    Raced,
}

#[derive(Debug, thiserror::Error)]
enum RenewError {
    #[error("the Lease is held by {0}")]
    Taken(String),
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

/// Writes name the operator as field manager, so `kubectl get lease --show-managed-fields` (and
/// GitOps tools that ignore its fields) can tell the operator's writes from the chart's.
fn write_params() -> PostParams {
    PostParams { field_manager: Some(crate::FIELD_MANAGER.to_owned()), ..PostParams::default() }
}

/// This process's identity outside a pod: host name and process id, like client-go's default.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "braid-operator".to_owned());
    format!("{host}_{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(15);

    fn held_by(holder: &str) -> Record {
        Record { holder: Some(holder.to_owned()), lease_duration: LEASE }
    }

    #[test]
    fn a_missing_or_released_lease_is_taken_at_once() {
        let now = Instant::now();
        assert_eq!(decide(None, now, now, "a"), Decision::Acquire);
        let released = Record { holder: None, lease_duration: Duration::from_secs(1) };
        assert_eq!(decide(Some(&released), now, now, "a"), Decision::Acquire);
    }

    #[test]
    fn the_holder_renews() {
        let now = Instant::now();
        assert_eq!(decide(Some(&held_by("a")), now, now + Duration::from_secs(60), "a"), Decision::Renew);
    }

    #[test]
    fn a_standby_waits_a_full_lease_duration_from_when_it_first_saw_the_record() {
        let seen = Instant::now();
        let lease = held_by("b");
        assert_eq!(decide(Some(&lease), seen, seen, "a"), Decision::Wait(LEASE));
        assert_eq!(
            decide(Some(&lease), seen, seen + Duration::from_secs(10), "a"),
            Decision::Wait(Duration::from_secs(5))
        );
        assert_eq!(decide(Some(&lease), seen, seen + LEASE, "a"), Decision::Acquire);
        assert_eq!(decide(Some(&lease), seen, seen + LEASE * 2, "a"), Decision::Acquire);
    }

    #[test]
    fn the_holders_own_lease_duration_is_honoured() {
        let seen = Instant::now();
        let lease = Record { holder: Some("b".into()), lease_duration: Duration::from_secs(40) };
        assert_eq!(
            decide(Some(&lease), seen, seen + Duration::from_secs(20), "a"),
            Decision::Wait(Duration::from_secs(20))
        );
    }

    #[test]
    fn a_change_is_dated_to_the_previous_look_only_when_that_is_recent() {
        let renew = Duration::from_secs(5);
        let look = Instant::now();
        let now = look + Duration::from_secs(2);
        assert_eq!(date_change(Some(look), now, renew), look);
        assert_eq!(date_change(None, now, renew), now, "the first look knows nothing earlier");
        let late = look + renew;
        assert_eq!(date_change(Some(look), late, renew), late, "a stale look could date it too early");
        // A standby that looks every 2 s takes over a dead leader's Lease within the lease
        // duration of its last renewal, which happened after the previous look.
        let renewed = look + Duration::from_millis(500);
        let seen = date_change(Some(look), now, renew);
        let lease = held_by("b");
        let takeover = renewed + LEASE;
        assert_eq!(decide(Some(&lease), seen, takeover, "a"), Decision::Acquire);
    }

    #[test]
    fn records_are_read_from_leases() {
        let lease = |spec: serde_json::Value| -> Lease {
            serde_json::from_value(serde_json::json!({"metadata": {"name": "l"}, "spec": spec})).unwrap()
        };
        assert_eq!(
            Record::from_lease(
                &lease(serde_json::json!({"holderIdentity": "p", "leaseDurationSeconds": 20})),
                LEASE
            ),
            Record { holder: Some("p".into()), lease_duration: Duration::from_secs(20) }
        );
        // The chart creates the Lease empty; released ones say "" in some clients.
        assert_eq!(
            Record::from_lease(&lease(serde_json::json!({})), LEASE),
            Record { holder: None, lease_duration: LEASE }
        );
        assert_eq!(
            Record::from_lease(
                &lease(serde_json::json!({"holderIdentity": "", "leaseDurationSeconds": -3})),
                LEASE
            ),
            Record { holder: None, lease_duration: LEASE }
        );
    }

    #[test]
    fn timing_must_leave_room_for_renewals() {
        let settings = |renew: u64| LeaseSettings {
            namespace: "braid-system".into(),
            name: "braid-operator".into(),
            identity: "a".into(),
            lease_duration: LEASE,
            renew_period: Duration::from_secs(renew),
            retry_period: Duration::from_secs(2),
        };
        assert!(settings(5).validate().is_ok());
        assert_eq!(settings(5).renew_deadline(), Duration::from_secs(10));
        assert!(settings(6).validate().is_err());
        assert!(settings(0).validate().is_err());
        assert!(settings(2).validate().is_err(), "the retry period must be shorter than the renew period");
        let mut anonymous = settings(5);
        anonymous.identity.clear();
        assert!(anonymous.validate().is_err());
    }

    #[test]
    fn the_default_identity_names_host_and_process() {
        let identity = default_identity();
        assert!(identity.ends_with(&format!("_{}", std::process::id())), "{identity}");
    }
}
