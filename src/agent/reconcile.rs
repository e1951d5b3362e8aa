//! The sync loop: wait for changes, rate-limit, compute the desired IR from the reflector
//! stores, and hand the smallest transaction to a sink (the kernel, or stdout for
//! `--dry-run`). Change tracking (watch) and rule writing (ruleset) stay separate; this
//! module only decides when and what to send.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::agent::desired::Desired;
use crate::agent::observe::Observe;
use crate::agent::watch::{Changes, Dirty, Stores};
use crate::model::options::Options;
use crate::model::Model;
use crate::objects::input::ClusterObjects;
use crate::ruleset::ir::Ruleset;
use crate::ruleset::tx::Transaction;

/// Where transactions go.
pub trait Sink: Send {
    /// Applies one transaction atomically. `desired` is the ruleset it leads to.
    fn apply(&mut self, tx: &Transaction, desired: &Ruleset) -> Result<(), String>;

    /// Called after a successful apply with the models before and after (conntrack
    /// cleanup for the kernel sink). After a full sync `old` is `None` and `new` holds the
    /// UDP Service ports only.
    fn after_apply(&mut self, _old: Option<&Model>, _new: &Model) {}

    /// Whether the target still holds the tables of `applied`; `false` forces a full sync.
    fn intact(&mut self, _applied: &Ruleset) -> bool {
        true
    }

    /// For the last successful apply, the time from the moment it took effect (the
    /// kernel's NEWGEN notification) to its acknowledgement, when the sink measured it.
    fn commit_ack_delay(&self) -> Option<Duration> {
        None
    }
}

impl<S: Sink + ?Sized> Sink for Box<S> {
    fn apply(&mut self, tx: &Transaction, desired: &Ruleset) -> Result<(), String> {
        (**self).apply(tx, desired)
    }

    fn after_apply(&mut self, old: Option<&Model>, new: &Model) {
        (**self).after_apply(old, new)
    }

    fn intact(&mut self, applied: &Ruleset) -> bool {
        (**self).intact(applied)
    }

    fn commit_ack_delay(&self) -> Option<Duration> {
        (**self).commit_ack_delay()
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// `--min-sync-period`: at most one sync per this period.
    pub min_sync_period: Duration,
    /// `--sync-period`: a forced full sync at least this often.
    pub sync_period: Duration,
    /// `--verify-period`: how often to check that our tables still exist (someone may
    /// have run `nft flush ruleset`); a missing table forces a full sync at once.
    pub verify_period: Duration,
}

/// What one sync did, for logs and the latency benchmark.
#[derive(Debug, Clone)]
pub struct SyncReport {
    pub full: bool,
    pub ops: usize,
    pub elapsed: Duration,
    /// From each change's arrival to the end of the apply that carried it.
    pub latencies: Vec<Duration>,
    /// When the apply ended (arrival = `finished - latency`).
    pub finished: Instant,
}

/// Syncs allowed back to back before `--min-sync-period` applies, as kube-proxy's
/// BoundedFrequencyRunner allows a burst of 2: a new Service and its endpoints, which
/// arrive milliseconds apart, are both programmed at once instead of the endpoints waiting
/// a whole period (1 s by default) while the Service rejects connections.
const SYNC_BURST: u32 = 2;

/// A token bucket: `burst` syncs at once, refilled one per `period`.
#[derive(Debug, Clone)]
struct Limiter {
    period: Duration,
    burst: u32,
    tokens: u32,
    /// When the next token arrives (while not full).
    refill_at: Option<Instant>,
}

impl Limiter {
    fn new(period: Duration, burst: u32) -> Limiter {
        Limiter {
            period,
            burst: burst.max(1),
            tokens: burst.max(1),
            refill_at: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        while let Some(at) = self.refill_at {
            if at > now {
                break;
            }
            self.tokens += 1;
            self.refill_at = (self.tokens < self.burst).then(|| at + self.period);
        }
    }

    /// When a sync may run, if not now.
    fn next_allowed(&mut self, now: Instant) -> Option<Instant> {
        if self.period.is_zero() {
            return None;
        }
        self.refill(now);
        (self.tokens == 0).then(|| self.refill_at.unwrap_or(now))
    }

    /// A sync starts at `now`.
    fn take(&mut self, now: Instant) {
        if self.period.is_zero() {
            return;
        }
        self.refill(now);
        self.tokens = self.tokens.saturating_sub(1);
        if self.refill_at.is_none() {
            self.refill_at = Some(now + self.period);
        }
    }
}

const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Runs until `shutdown` resolves. Nothing is sent before every store has its first full
/// list; the first sync replaces whatever tables a previous run left, atomically.
// The loop's inputs are independent parts (watches, settings, kernel, operators, stop
// signal, benchmark hook); a struct around them would only rename the parameters.
#[allow(clippy::too_many_arguments)]
pub async fn run<S, F>(
    stores: Stores,
    changes: Arc<Changes>,
    opts: Options,
    timing: Timing,
    mut sink: S,
    mut observe: Observe,
    shutdown: F,
    mut on_sync: impl FnMut(&SyncReport),
) where
    S: Sink,
    F: Future<Output = ()>,
{
    tokio::pin!(shutdown);
    tokio::select! {
        _ = stores.ready() => {}
        _ = &mut shutdown => return,
    }
    tracing::info!("caches synced; starting to program rules");
    let mut opts = opts;
    let mut desired = Desired::new(opts.clone());
    let mut synced = false;
    let mut force_full = true;
    // The caches as of the last sync, refreshed object by object (`Stores::refresh`).
    let mut objects: Option<ClusterObjects> = None;
    let mut limiter = Limiter::new(timing.min_sync_period, SYNC_BURST);
    let mut last_full = Instant::now();
    let mut backoff: Option<Duration> = None;
    loop {
        if let Some(wait) = backoff {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = &mut shutdown => return,
            }
        } else if synced {
            let full_due = tokio::time::Instant::from_std(last_full + timing.sync_period);
            let mut verify =
                tokio::time::interval(timing.verify_period.max(Duration::from_millis(10)));
            verify.tick().await;
            loop {
                tokio::select! {
                    _ = changes.wait() => {
                        observe.queued();
                        break;
                    }
                    _ = tokio::time::sleep_until(full_due) => {
                        force_full = true;
                        break;
                    }
                    _ = verify.tick() => {
                        if !tokio::task::block_in_place(|| sink.intact(desired.ruleset())) {
                            tracing::warn!("our tables are gone from the kernel; full sync");
                            force_full = true;
                            break;
                        }
                    }
                    _ = &mut shutdown => return,
                }
            }
        }
        if let Some(next) = limiter.next_allowed(Instant::now()) {
            tokio::select! {
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(next)) => {}
                _ = &mut shutdown => return,
            }
        }
        let started = Instant::now();
        limiter.take(started);
        let arrivals = changes.take();
        if let Some(addrs) = changes.take_host_addresses() {
            // Which addresses take NodePorts depends on them: rebuild from scratch.
            tracing::info!(addresses = ?addrs, "host addresses changed");
            opts.host_addresses = addrs;
            desired = Desired::new(opts.clone());
            force_full = true;
        }
        let span = tracing::info_span!("sync", full = force_full || !synced);
        let _guard = span.enter();

        let full = force_full || !synced;
        let mut dirty = changes.take_dirty();
        // A forced full sync also re-reads every store, in case an event went missing.
        dirty.all |= full;
        let snapshot = stores.refresh(&mut objects, &dirty);
        observe.node(snapshot, &opts.hostname);
        // Trigger times of the slices this sync carries, as upstream measures them. A full
        // re-read (relist, periodic full sync) carries no known change: nothing is measured,
        // or every periodic sync would count every slice again.
        let triggers = trigger_times(snapshot, &dirty);
        let update = desired.update(snapshot, full);
        observe.notes(&update.notes, update.full);
        let full = update.full;
        let tx = &update.tx;
        let result = if tx.is_empty() {
            Ok(())
        } else {
            tokio::task::block_in_place(|| sink.apply(tx, desired.ruleset()))
        };
        match result {
            Ok(()) => {
                if !tx.is_empty() {
                    if let Some(d) = sink.commit_ack_delay() {
                        observe.commit_acked(d);
                    }
                }
                match &update.changed {
                    Some((before, after)) => sink.after_apply(Some(before), after),
                    // After a full sync the sink checks conntrack against every Service,
                    // and only UDP flows go stale.
                    None => sink.after_apply(
                        None,
                        &desired.model_where(|sp| sp.protocol == crate::model::Proto::Udp),
                    ),
                }
                let done = Instant::now();
                let report = SyncReport {
                    full,
                    ops: tx.ops.len(),
                    elapsed: done - started,
                    latencies: arrivals.iter().map(|a| done - *a).collect(),
                    finished: done,
                };
                tracing::info!(
                    full,
                    ops = report.ops,
                    elapsed_ms = report.elapsed.as_secs_f64() * 1000.0,
                    services = desired.services(),
                    "sync complete"
                );
                observe.synced(full, report.elapsed, report.ops, &triggers);
                observe.recovered();
                observe.programmed(desired.ruleset());
                on_sync(&report);
                // Only the agent serving health checks needs the Local Services' ports.
                if observe.serves_services() {
                    observe
                        .services(&desired.model_where(|sp| sp.health_check_node_port.is_some()))
                        .await;
                }
                synced = true;
                if full {
                    last_full = done;
                }
                force_full = false;
                backoff = None;
            }
            Err(e) => {
                // The kernel refused the whole batch, so the old rules still serve. The
                // next attempt is a full sync: our idea of the kernel may be wrong.
                observe.failed(full, started.elapsed(), &e);
                let wait = backoff.map_or(BACKOFF_START, |b| (b * 2).min(BACKOFF_MAX));
                tracing::error!(error = %e, retry_in_ms = wait.as_millis() as u64, "sync failed");
                backoff = Some(wait);
                force_full = true;
                changes.restore(arrivals);
            }
        }
    }
}

/// The `last-change-trigger-time` of each changed EndpointSlice that has one.
fn trigger_times(objects: &ClusterObjects, dirty: &Dirty) -> Vec<SystemTime> {
    let parse = |t: &str| {
        let ts: k8s_openapi::jiff::Timestamp = t.parse().ok()?;
        let d = std::time::Duration::try_from(
            ts.duration_since(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        )
        .ok()?;
        Some(SystemTime::UNIX_EPOCH + d)
    };
    if dirty.all {
        return Vec::new();
    }
    // The changed slices, found by binary search: the snapshot is sorted by namespace and
    // name, and a sync must not walk every slice of the cluster.
    (dirty.objects.iter())
        .filter(|(kind, _, _)| kind == "EndpointSlice")
        .filter_map(|(_, ns, name)| {
            let key = (ns.as_deref(), Some(name.as_str()));
            let at = (objects.endpoint_slices)
                .binary_search_by(|s| {
                    let m = &s.metadata;
                    (m.namespace.as_deref(), m.name.as_deref()).cmp(&key)
                })
                .ok()?;
            objects.endpoint_slices[at]
                .trigger_time
                .as_deref()
                .and_then(parse)
        })
        .collect()
}

/// `--dry-run`: prints each transaction (or the whole ruleset) instead of applying it.
pub struct DryRun {
    pub full_ruleset: bool,
}

impl Sink for DryRun {
    fn apply(&mut self, tx: &Transaction, desired: &Ruleset) -> Result<(), String> {
        use std::io::Write;
        // Streamed: the whole ruleset of a large cluster is megabytes of text.
        let mut out = std::io::stdout().lock();
        if self.full_ruleset {
            crate::nft::text::write_script(desired, &mut out)
        } else {
            crate::nft::text::write_describe(tx, &mut out)
        }
        .and_then(|_| out.write_all(b"\n"))
        .and_then(|_| out.flush())
        .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_syncs_at_once_then_one_per_period() {
        let t0 = Instant::now();
        let p = Duration::from_secs(1);
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut l = Limiter::new(p, SYNC_BURST);
        assert_eq!(l.next_allowed(t0), None);
        l.take(t0);
        // The Service's endpoints, 5 ms later: no wait.
        assert_eq!(l.next_allowed(ms(5)), None);
        l.take(ms(5));
        // A third change waits for the refill, one period after the first sync.
        assert_eq!(l.next_allowed(ms(10)), Some(ms(1000)));
        l.take(ms(1000));
        // Sustained: one per period.
        assert_eq!(l.next_allowed(ms(1001)), Some(ms(2000)));
        l.take(ms(2000));
        // After a quiet spell the burst is back.
        assert_eq!(l.next_allowed(ms(10_000)), None);
        l.take(ms(10_000));
        assert_eq!(l.next_allowed(ms(10_001)), None);
    }

    #[test]
    fn a_zero_period_never_waits() {
        let mut l = Limiter::new(Duration::ZERO, SYNC_BURST);
        let t = Instant::now();
        for _ in 0..10 {
            assert_eq!(l.next_allowed(t), None);
            l.take(t);
        }
    }
}
