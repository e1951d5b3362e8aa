//! Prometheus metrics, named, typed, labelled and bucketed as upstream kube-proxy's
//! (`pkg/proxy/metrics/metrics.go`, nftables mode), plus the process metrics Go's client adds
//! and a few of our own under `kube_nftproxy_`.
//!
//! [`Metrics::encode`] writes the Prometheus text format 0.0.4, which is what kube-proxy's
//! `/metrics` serves: a counter `x_total` is exposed as `# TYPE x_total counter` and
//! `x_total 3` (prometheus-client appends `_total` to counters itself, so counters are
//! registered here without it). Help texts carry component-base's `[ALPHA] ` prefix, as
//! kube-proxy's do.
//!
//! Per-family metrics carry upstream's `ip_family` label (`IPv4`, `IPv6`). Upstream runs one
//! proxier per family and each records its own series; this agent programs both families in
//! one sync, so the sync-wide calls ([`Metrics::observe_sync`], [`Metrics::mark_queued`],
//! [`Metrics::inc_cleanup_failure`]) record the same value for every family given to
//! [`Metrics::new`]. Counters and histograms of those families start at zero; labelled gauges
//! (timestamps, no-local-endpoint counts, notes) appear when first set.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

use super::http;
use super::HttpServer;
use crate::vocab::Family as IpFamily;

/// The `Content-Type` of [`Metrics::encode`]'s output (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Which kind of sync a duration belongs to (upstream's `sync_full_…`/`sync_partial_…`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncKind {
    Full,
    Partial,
}

/// The `traffic_policy` label of `kubeproxy_sync_proxy_rules_no_local_endpoints_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TrafficPolicy {
    /// `internalTrafficPolicy: Local`.
    Internal,
    /// `externalTrafficPolicy: Local`.
    External,
}

impl TrafficPolicy {
    /// `"internal"` or `"external"`, upstream's label values.
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficPolicy::Internal => "internal",
            TrafficPolicy::External => "external",
        }
    }
}

/// Upstream's `ExponentialBuckets(0.001, 2, 15)`: 1 ms to 16.384 s.
pub fn sync_duration_buckets() -> Vec<f64> {
    exponential_buckets(0.001, 2.0, 15)
}

/// Upstream's network programming buckets: `MergeBuckets(LinearBuckets(0.25, 0.25, 2),
/// LinearBuckets(1, 1, 59), LinearBuckets(60, 5, 12), LinearBuckets(120, 30, 7))`.
/// component-base's `MergeBuckets` starts from a slice of one zero, so the first bound is 0:
/// 0, 0.25, 0.5, 1…59, 60…115, 120…300 (81 bounds).
pub fn network_programming_buckets() -> Vec<f64> {
    let mut buckets = vec![0.0];
    buckets.extend(linear_buckets(0.25, 0.25, 2));
    buckets.extend(linear_buckets(1.0, 1.0, 59));
    buckets.extend(linear_buckets(60.0, 5.0, 12));
    buckets.extend(linear_buckets(120.0, 30.0, 7));
    buckets
}

/// client_golang's `ExponentialBuckets`, computed the same way (repeated multiplication).
fn exponential_buckets(mut start: f64, factor: f64, count: usize) -> Vec<f64> {
    let mut buckets = Vec::with_capacity(count);
    for _ in 0..count {
        buckets.push(start);
        start *= factor;
    }
    buckets
}

/// client_golang's `LinearBuckets`, computed the same way (repeated addition).
fn linear_buckets(mut start: f64, width: f64, count: usize) -> Vec<f64> {
    let mut buckets = Vec::with_capacity(count);
    for _ in 0..count {
        buckets.push(start);
        start += width;
    }
    buckets
}

fn sync_histogram() -> Histogram {
    Histogram::new(sync_duration_buckets())
}

fn network_programming_histogram() -> Histogram {
    Histogram::new(network_programming_buckets())
}

type FamilyLabel = [(&'static str, &'static str); 1];
type PolicyLabels = [(&'static str, &'static str); 2];
type StringLabel = [(&'static str, String); 1];
type Histograms = Family<FamilyLabel, Histogram, fn() -> Histogram>;
type F64Gauge = Gauge<f64, AtomicU64>;

fn family_label(family: IpFamily) -> FamilyLabel {
    [("ip_family", family.k8s_name())]
}

fn seconds_since_epoch(t: SystemTime) -> f64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// The agent's metrics. Cheap to share behind an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    families: Vec<IpFamily>,

    sync_duration: Histograms,
    sync_full_duration: Histograms,
    sync_partial_duration: Histograms,
    last_timestamp: Family<FamilyLabel, F64Gauge>,
    last_queued_timestamp: Family<FamilyLabel, F64Gauge>,
    network_programming: Histograms,
    endpoint_changes_pending: Gauge,
    endpoint_changes_total: Counter,
    service_changes_pending: Gauge,
    service_changes_total: Counter,
    nftables_sync_failures: Family<FamilyLabel, Counter>,
    nftables_cleanup_failures: Family<FamilyLabel, Counter>,
    no_local_endpoints: Family<PolicyLabels, Gauge>,
    conntrack_deleted: Family<FamilyLabel, Counter>,
    conntrack_duration: Histograms,
    healthz: Family<StringLabel, Counter>,
    livez: Family<StringLabel, Counter>,

    transaction_messages: Gauge,
    set_elements: Gauge,
    commit_ack_delay: F64Gauge,
    notes: Family<StringLabel, Gauge>,
    healthcheck_bind_errors: Counter,
}

impl Metrics {
    /// A registry for an agent that programs `families` (an empty slice means IPv4 only).
    pub fn new(families: &[IpFamily]) -> Metrics {
        let mut families = families.to_vec();
        families.sort();
        families.dedup();
        if families.is_empty() {
            families.push(IpFamily::V4);
        }
        let histograms = || Histograms::new_with_constructor(sync_histogram as fn() -> Histogram);
        let metrics = Metrics {
            registry: Registry::default(),
            families,
            sync_duration: histograms(),
            sync_full_duration: histograms(),
            sync_partial_duration: histograms(),
            last_timestamp: Family::default(),
            last_queued_timestamp: Family::default(),
            network_programming: Histograms::new_with_constructor(
                network_programming_histogram as fn() -> Histogram,
            ),
            endpoint_changes_pending: Gauge::default(),
            endpoint_changes_total: Counter::default(),
            service_changes_pending: Gauge::default(),
            service_changes_total: Counter::default(),
            nftables_sync_failures: Family::default(),
            nftables_cleanup_failures: Family::default(),
            no_local_endpoints: Family::default(),
            conntrack_deleted: Family::default(),
            conntrack_duration: histograms(),
            healthz: Family::default(),
            livez: Family::default(),
            transaction_messages: Gauge::default(),
            set_elements: Gauge::default(),
            commit_ack_delay: F64Gauge::default(),
            notes: Family::default(),
            healthcheck_bind_errors: Counter::default(),
        };
        // Series that exist from the start, at zero, for every family.
        for &family in &metrics.families {
            let label = family_label(family);
            for histograms in [
                &metrics.sync_duration,
                &metrics.sync_full_duration,
                &metrics.sync_partial_duration,
                &metrics.network_programming,
                &metrics.conntrack_duration,
            ] {
                let _ = histograms.get_or_create(&label);
            }
            for counters in [
                &metrics.nftables_sync_failures,
                &metrics.nftables_cleanup_failures,
                &metrics.conntrack_deleted,
            ] {
                let _ = counters.get_or_create(&label);
            }
        }
        metrics.register()
    }

    /// Registers every metric under its exposed name and exact help text, in the order Go's
    /// registry writes them (sorted by name).
    fn register(mut self) -> Metrics {
        let alpha = |help: &str| format!("[ALPHA] {help}");
        let m = &self;
        // (name as registered, help, metric); counters without their `_total`.
        let described: Vec<(&'static str, String, Box<dyn Metric>)> = vec![
            (
                "kube_nftproxy_commit_ack_delay_seconds",
                "Time between the kernel committing the last transaction (NEWGEN) and acknowledging it".into(),
                Box::new(m.commit_ack_delay.clone()),
            ),
            (
                "kube_nftproxy_healthcheck_bind_errors",
                "healthCheckNodePort listeners that could not be opened".into(),
                Box::new(m.healthcheck_bind_errors.clone()),
            ),
            (
                "kube_nftproxy_notes",
                "Objects skipped or reduced in the last sync, by reason".into(),
                Box::new(m.notes.clone()),
            ),
            (
                "kube_nftproxy_set_elements",
                "Elements in the agent's nftables sets and maps after the last sync".into(),
                Box::new(m.set_elements.clone()),
            ),
            (
                "kube_nftproxy_transaction_messages",
                "Netlink messages in the last transaction sent to the kernel".into(),
                Box::new(m.transaction_messages.clone()),
            ),
            (
                "kubeproxy_conntrack_reconciler_deleted_entries",
                alpha("Cumulative conntrack flows deleted by conntrack reconciler"),
                Box::new(m.conntrack_deleted.clone()),
            ),
            (
                "kubeproxy_conntrack_reconciler_sync_duration_seconds",
                alpha("ReconcileConntrackFlowsLatency latency in seconds"),
                Box::new(m.conntrack_duration.clone()),
            ),
            (
                "kubeproxy_network_programming_duration_seconds",
                alpha("In Cluster Network Programming Latency in seconds"),
                Box::new(m.network_programming.clone()),
            ),
            (
                "kubeproxy_proxy_healthz",
                alpha("Cumulative proxy healthz HTTP status"),
                Box::new(m.healthz.clone()),
            ),
            (
                "kubeproxy_proxy_livez",
                alpha("Cumulative proxy livez HTTP status"),
                Box::new(m.livez.clone()),
            ),
            (
                "kubeproxy_sync_full_proxy_rules_duration_seconds",
                alpha("SyncProxyRules latency in seconds for full resyncs"),
                Box::new(m.sync_full_duration.clone()),
            ),
            (
                "kubeproxy_sync_partial_proxy_rules_duration_seconds",
                alpha("SyncProxyRules latency in seconds for partial resyncs"),
                Box::new(m.sync_partial_duration.clone()),
            ),
            (
                "kubeproxy_sync_proxy_rules_duration_seconds",
                alpha("SyncProxyRules latency in seconds"),
                Box::new(m.sync_duration.clone()),
            ),
            (
                "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
                alpha("Pending proxy rules Endpoint changes"),
                Box::new(m.endpoint_changes_pending.clone()),
            ),
            (
                "kubeproxy_sync_proxy_rules_endpoint_changes",
                alpha("Cumulative proxy rules Endpoint changes"),
                Box::new(m.endpoint_changes_total.clone()),
            ),
            (
                "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
                alpha("The last time a sync of proxy rules was queued"),
                Box::new(m.last_queued_timestamp.clone()),
            ),
            (
                "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                alpha("The last time proxy rules were successfully synced"),
                Box::new(m.last_timestamp.clone()),
            ),
            (
                "kubeproxy_sync_proxy_rules_nftables_cleanup_failures",
                alpha("Cumulative proxy nftables cleanup failures"),
                Box::new(m.nftables_cleanup_failures.clone()),
            ),
            (
                "kubeproxy_sync_proxy_rules_nftables_sync_failures",
                alpha("Cumulative proxy nftables sync failures"),
                Box::new(m.nftables_sync_failures.clone()),
            ),
            (
                // A gauge, despite the name (upstream's choice).
                "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
                alpha("Number of services with a Local traffic policy and no endpoints"),
                Box::new(m.no_local_endpoints.clone()),
            ),
            (
                "kubeproxy_sync_proxy_rules_service_changes_pending",
                alpha("Pending proxy rules Service changes"),
                Box::new(m.service_changes_pending.clone()),
            ),
            (
                "kubeproxy_sync_proxy_rules_service_changes",
                alpha("Cumulative proxy rules Service changes"),
                Box::new(m.service_changes_total.clone()),
            ),
        ];
        self.registry
            .register_collector(Box::new(Described(described)));
        self.registry.register_collector(Box::new(ProcessCollector));
        self
    }

    /// The IP families the sync-wide calls record for.
    pub fn families(&self) -> &[IpFamily] {
        &self.families
    }

    /// One sync finished (successfully or not) after `duration`: observes
    /// `kubeproxy_sync_proxy_rules_duration_seconds` and the full or partial histogram (as
    /// upstream, whatever the outcome); if `ok`, sets
    /// `kubeproxy_sync_proxy_rules_last_timestamp_seconds` to now, else increments
    /// `kubeproxy_sync_proxy_rules_nftables_sync_failures_total`.
    pub fn observe_sync(&self, kind: SyncKind, duration: Duration, ok: bool) {
        let seconds = duration.as_secs_f64();
        let now = seconds_since_epoch(SystemTime::now());
        let by_kind = match kind {
            SyncKind::Full => &self.sync_full_duration,
            SyncKind::Partial => &self.sync_partial_duration,
        };
        for &family in &self.families {
            let label = family_label(family);
            self.sync_duration.get_or_create(&label).observe(seconds);
            by_kind.get_or_create(&label).observe(seconds);
            if ok {
                self.last_timestamp.get_or_create(&label).set(now);
            } else {
                self.nftables_sync_failures.get_or_create(&label).inc();
            }
        }
    }

    /// A sync was requested (upstream's `Sync()`): sets
    /// `kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds` to now.
    pub fn mark_queued(&self) {
        let now = seconds_since_epoch(SystemTime::now());
        for &family in &self.families {
            self.last_queued_timestamp
                .get_or_create(&family_label(family))
                .set(now);
        }
    }

    /// Observes one network programming latency (`kubeproxy_network_programming_duration_seconds`).
    pub fn observe_network_programming(&self, family: IpFamily, latency: Duration) {
        self.network_programming
            .get_or_create(&family_label(family))
            .observe(latency.as_secs_f64());
    }

    /// Observes the time from `trigger` (an EndpointSlice's
    /// `endpoints.kubernetes.io/last-change-trigger-time`) to now, as upstream's
    /// `metrics.SinceInSeconds(lastChangeTriggerTime)`: a trigger in the future (clock skew
    /// between nodes) gives a negative value, counted in the `le="0"` bucket, as upstream does.
    /// Call it after the sync that programmed the change succeeded.
    pub fn observe_network_programming_since(&self, family: IpFamily, trigger: SystemTime) {
        let seconds = match SystemTime::now().duration_since(trigger) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        };
        self.network_programming
            .get_or_create(&family_label(family))
            .observe(seconds);
    }

    /// Sets `kubeproxy_sync_proxy_rules_service_changes_pending` and `…_endpoint_changes_pending`:
    /// the objects changed since the last sync.
    pub fn set_pending(&self, services: usize, endpoints: usize) {
        self.service_changes_pending.set(services as i64);
        self.endpoint_changes_pending.set(endpoints as i64);
    }

    /// Adds to `kubeproxy_sync_proxy_rules_service_changes_total` and
    /// `…_endpoint_changes_total` (upstream counts one per Service / EndpointSlice event).
    pub fn inc_changes(&self, services: u64, endpoints: u64) {
        self.service_changes_total.inc_by(services);
        self.endpoint_changes_total.inc_by(endpoints);
    }

    /// Sets `kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family, traffic_policy}`:
    /// Services with that Local policy and no local endpoint, recounted at each successful sync.
    pub fn set_no_local_endpoints(&self, policy: TrafficPolicy, family: IpFamily, n: usize) {
        self.no_local_endpoints
            .get_or_create(&[
                ("ip_family", family.k8s_name()),
                ("traffic_policy", policy.as_str()),
            ])
            .set(n as i64);
    }

    /// Increments `kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total` (a failed
    /// removal of stale chains) for every family.
    pub fn inc_cleanup_failure(&self) {
        for &family in &self.families {
            self.nftables_cleanup_failures
                .get_or_create(&family_label(family))
                .inc();
        }
    }

    /// Adds `n` to `kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family}`.
    pub fn add_conntrack_deleted(&self, family: IpFamily, n: u64) {
        self.conntrack_deleted
            .get_or_create(&family_label(family))
            .inc_by(n);
    }

    /// Observes one conntrack cleanup pass (`kubeproxy_conntrack_reconciler_sync_duration_seconds`).
    pub fn observe_conntrack_reconcile(&self, family: IpFamily, duration: Duration) {
        self.conntrack_duration
            .get_or_create(&family_label(family))
            .observe(duration.as_secs_f64());
    }

    /// Counts one `/healthz` answer (`kubeproxy_proxy_healthz_total{code}`).
    pub fn inc_healthz(&self, code: u16) {
        self.healthz
            .get_or_create(&[("code", code.to_string())])
            .inc();
    }

    /// Counts one `/livez` answer (`kubeproxy_proxy_livez_total{code}`).
    pub fn inc_livez(&self, code: u16) {
        self.livez
            .get_or_create(&[("code", code.to_string())])
            .inc();
    }

    /// Sets `kube_nftproxy_transaction_messages`: messages in the last transaction sent.
    pub fn set_transaction_messages(&self, n: usize) {
        self.transaction_messages.set(n as i64);
    }

    /// Sets `kube_nftproxy_set_elements`: elements in our sets and maps after the last sync.
    pub fn set_set_elements(&self, n: usize) {
        self.set_elements.set(n as i64);
    }

    /// Sets `kube_nftproxy_commit_ack_delay_seconds`: for the last transaction, the time from
    /// the kernel's commit (NEWGEN) to its acknowledgement.
    pub fn set_commit_ack_delay(&self, delay: Duration) {
        self.commit_ack_delay.set(delay.as_secs_f64());
    }

    /// Replaces `kube_nftproxy_notes{reason}` with these counts (reasons absent from `by_reason`
    /// disappear).
    pub fn set_notes<I, S>(&self, by_reason: I)
    where
        I: IntoIterator<Item = (S, usize)>,
        S: Into<String>,
    {
        self.notes.clear();
        for (reason, n) in by_reason {
            self.notes
                .get_or_create(&[("reason", reason.into())])
                .set(n as i64);
        }
    }

    /// Increments `kube_nftproxy_healthcheck_bind_errors_total`.
    pub fn inc_healthcheck_bind_errors(&self) {
        self.healthcheck_bind_errors.inc();
    }

    /// The current value of `kube_nftproxy_healthcheck_bind_errors_total`.
    pub fn healthcheck_bind_errors(&self) -> u64 {
        self.healthcheck_bind_errors.get()
    }

    /// The exposition, in the Prometheus text format 0.0.4 ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; an encoder error would leave a partial text.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// Metrics written with their exact help text (the registry's own `register` appends a
/// period to every help text, which kube-proxy's do not have).
#[derive(Debug)]
struct Described(Vec<(&'static str, String, Box<dyn Metric>)>);

impl Collector for Described {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        for (name, help, metric) in &self.0 {
            let metric_encoder =
                encoder.encode_descriptor(name, help, None, metric.metric_type())?;
            metric.encode(metric_encoder)?;
        }
        Ok(())
    }
}

/// client_golang's process collector on Linux: read from `/proc/self` at each scrape. A value
/// that cannot be read is left out, as Go's collector does by default.
#[derive(Debug)]
struct ProcessCollector;

/// What `/proc/self/stat` and friends say, in the units Go's collector exposes.
#[derive(Debug, Default, PartialEq)]
struct ProcessStats {
    cpu_seconds: Option<f64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
    virtual_memory_bytes: Option<u64>,
    virtual_memory_max_bytes: Option<u64>,
    resident_memory_bytes: Option<u64>,
    start_time_seconds: Option<f64>,
}

impl ProcessStats {
    fn read() -> ProcessStats {
        // SAFETY: sysconf only reads a system constant.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
        // SAFETY: as above.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page = if page > 0 { page as u64 } else { 4096 };
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| parse_boot_time(&s));
        let mut stats = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| parse_stat(&s, ticks, page, boot_time))
            .unwrap_or_default();
        stats.open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|dir| dir.count() as u64);
        if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
            stats.max_fds = parse_soft_limit(&limits, "Max open files");
            stats.virtual_memory_max_bytes = parse_soft_limit(&limits, "Max address space");
        }
        stats
    }
}

/// The soft limit on the line of `/proc/self/limits` that starts with `name`; `unlimited`
/// reads as `u64::MAX`, as Go's procfs reads it.
fn parse_soft_limit(limits: &str, name: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with(name))?;
    match line[name.len()..].split_whitespace().next()? {
        "unlimited" => Some(u64::MAX),
        v => v.parse().ok(),
    }
}

/// `btime` of `/proc/stat`: the boot time in seconds since the epoch.
fn parse_boot_time(proc_stat: &str) -> Option<f64> {
    proc_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|v| v as f64)
}

/// The fields of `/proc/self/stat` Go's collector uses (proc(5)): utime (14), stime (15),
/// starttime (22), vsize (23), rss (24). The command name (2) may hold spaces and
/// parentheses, so fields are counted from the last `)`.
fn parse_stat(stat: &str, ticks: f64, page: u64, boot_time: Option<f64>) -> Option<ProcessStats> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state).
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let (utime, stime) = (field(14)?, field(15)?);
    Some(ProcessStats {
        cpu_seconds: Some((utime + stime) as f64 / ticks),
        virtual_memory_bytes: field(23),
        resident_memory_bytes: field(24).map(|pages| pages * page),
        start_time_seconds: match (boot_time, field(22)) {
            (Some(boot), Some(start)) => Some(boot + start as f64 / ticks),
            _ => None,
        },
        ..ProcessStats::default()
    })
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let stats = ProcessStats::read();
        if let Some(v) = stats.cpu_seconds {
            let counter = ConstCounter::new(v);
            counter.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                counter.metric_type(),
            )?)?;
        }
        let integers = [
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                stats.max_fds,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                stats.open_fds,
            ),
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                stats.resident_memory_bytes,
            ),
        ];
        for (name, help, value) in integers {
            if let Some(v) = value {
                let gauge = ConstGauge::new(v);
                gauge.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    gauge.metric_type(),
                )?)?;
            }
        }
        if let Some(v) = stats.start_time_seconds {
            let gauge = ConstGauge::new(v);
            gauge.encode(encoder.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                None,
                gauge.metric_type(),
            )?)?;
        }
        let integers = [
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                stats.virtual_memory_bytes,
            ),
            (
                "process_virtual_memory_max_bytes",
                "Maximum amount of virtual memory available in bytes.",
                stats.virtual_memory_max_bytes,
            ),
        ];
        for (name, help, value) in integers {
            if let Some(v) = value {
                let gauge = ConstGauge::new(v);
                gauge.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    gauge.metric_type(),
                )?)?;
            }
        }
        Ok(())
    }
}

/// Serves kube-proxy's metrics endpoints on `addr` (port 0: any free port, see
/// [`HttpServer::local_addr`]): `/metrics` (the exposition, [`CONTENT_TYPE`]), and as
/// kube-proxy's metrics server also has them, `/healthz` (`ok`) and `/proxyMode`
/// (`nftables`). A bind error is returned; the server runs until the returned value is shut
/// down or dropped. Call it inside a Tokio runtime.
pub async fn serve_metrics(addr: SocketAddr, metrics: Arc<Metrics>) -> io::Result<HttpServer> {
    let listener = http::bind(addr)?;
    http::spawn(listener, move |request| {
        const TEXT: &str = "text/plain; charset=utf-8";
        match request.uri().path() {
            "/metrics" => http::reply(200, &[("Content-Type", CONTENT_TYPE)], metrics.encode()),
            "/healthz" => http::reply(
                200,
                &[
                    ("Content-Type", TEXT),
                    ("X-Content-Type-Options", "nosniff"),
                ],
                "ok",
            ),
            "/proxyMode" => http::reply(
                200,
                &[
                    ("Content-Type", TEXT),
                    ("X-Content-Type-Options", "nosniff"),
                ],
                "nftables",
            ),
            _ => http::not_found(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_parse::{Scrape, Value};
    use std::collections::{BTreeMap, BTreeSet};

    fn scrape(text: &str) -> Scrape {
        Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses")
    }

    /// `# TYPE name type` lines of the exposition.
    fn types(text: &str) -> BTreeMap<String, String> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| {
                let (name, kind) = l.split_once(' ').unwrap();
                (name.to_string(), kind.to_string())
            })
            .collect()
    }

    fn label_names(scrape: &Scrape, metric: &str) -> BTreeSet<BTreeSet<String>> {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == metric)
            .map(|s| s.labels.keys().cloned().collect())
            .collect()
    }

    fn bounds(scrape: &Scrape, metric: &str) -> Vec<f64> {
        let sample = scrape
            .samples
            .iter()
            .find(|s| s.metric == metric)
            .unwrap_or_else(|| panic!("{metric} missing"));
        match &sample.value {
            Value::Histogram(buckets) => buckets.iter().map(|b| b.less_than).collect(),
            other => panic!("{metric} is not a histogram: {other:?}"),
        }
    }

    fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
        let sample = scrape
            .samples
            .iter()
            .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("{metric}{labels:?} missing"));
        match &sample.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.last().unwrap().count,
            Value::Summary(_) => panic!("summary"),
        }
    }

    #[test]
    fn bucket_boundaries_are_upstreams() {
        assert_eq!(
            sync_duration_buckets(),
            vec![
                0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048,
                4.096, 8.192, 16.384
            ]
        );
        let np = network_programming_buckets();
        assert_eq!(np.len(), 81);
        assert_eq!(&np[..4], &[0.0, 0.25, 0.5, 1.0]);
        assert_eq!(np[61], 59.0);
        assert_eq!(&np[62..74], &linear_buckets(60.0, 5.0, 12)[..]);
        assert_eq!(
            &np[74..],
            &[120.0, 150.0, 180.0, 210.0, 240.0, 270.0, 300.0]
        );
        assert!(np.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn exposition_parses_with_upstream_names_types_labels_and_buckets() {
        let m = Metrics::new(&[IpFamily::V4, IpFamily::V6]);
        m.mark_queued();
        m.observe_sync(SyncKind::Full, Duration::from_millis(3), true);
        m.observe_sync(SyncKind::Partial, Duration::from_millis(20), false);
        m.observe_network_programming(IpFamily::V4, Duration::from_millis(1500));
        m.observe_network_programming_since(IpFamily::V6, SystemTime::now());
        m.set_pending(2, 5);
        m.inc_changes(3, 7);
        m.set_no_local_endpoints(TrafficPolicy::Internal, IpFamily::V4, 1);
        m.set_no_local_endpoints(TrafficPolicy::External, IpFamily::V4, 2);
        m.inc_cleanup_failure();
        m.add_conntrack_deleted(IpFamily::V4, 4);
        m.observe_conntrack_reconcile(IpFamily::V4, Duration::from_millis(2));
        m.inc_healthz(200);
        m.inc_healthz(503);
        m.inc_livez(200);
        m.set_transaction_messages(12);
        m.set_set_elements(345);
        m.set_commit_ack_delay(Duration::from_millis(7));
        m.set_notes([("invalid-ip", 2usize), ("port-out-of-range", 1)]);
        m.set_notes([("invalid-ip", 3usize)]);
        m.inc_healthcheck_bind_errors();
        let text = m.encode();
        let types = types(&text);
        let scrape = scrape(&text);

        let expected = [
            (
                "kubeproxy_sync_proxy_rules_duration_seconds",
                "histogram",
                &["ip_family"][..],
            ),
            (
                "kubeproxy_sync_full_proxy_rules_duration_seconds",
                "histogram",
                &["ip_family"],
            ),
            (
                "kubeproxy_sync_partial_proxy_rules_duration_seconds",
                "histogram",
                &["ip_family"],
            ),
            (
                "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                "gauge",
                &["ip_family"],
            ),
            (
                "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
                "gauge",
                &["ip_family"],
            ),
            (
                "kubeproxy_network_programming_duration_seconds",
                "histogram",
                &["ip_family"],
            ),
            (
                "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
                "gauge",
                &[],
            ),
            (
                "kubeproxy_sync_proxy_rules_endpoint_changes_total",
                "counter",
                &[],
            ),
            (
                "kubeproxy_sync_proxy_rules_service_changes_pending",
                "gauge",
                &[],
            ),
            (
                "kubeproxy_sync_proxy_rules_service_changes_total",
                "counter",
                &[],
            ),
            (
                "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
                "counter",
                &["ip_family"],
            ),
            (
                "kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total",
                "counter",
                &["ip_family"],
            ),
            (
                "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
                "gauge",
                &["ip_family", "traffic_policy"],
            ),
            (
                "kubeproxy_conntrack_reconciler_deleted_entries_total",
                "counter",
                &["ip_family"],
            ),
            (
                "kubeproxy_conntrack_reconciler_sync_duration_seconds",
                "histogram",
                &["ip_family"],
            ),
            ("kubeproxy_proxy_healthz_total", "counter", &["code"]),
            ("kubeproxy_proxy_livez_total", "counter", &["code"]),
            ("kube_nftproxy_transaction_messages", "gauge", &[]),
            ("kube_nftproxy_set_elements", "gauge", &[]),
            ("kube_nftproxy_commit_ack_delay_seconds", "gauge", &[]),
            ("kube_nftproxy_notes", "gauge", &["reason"]),
            (
                "kube_nftproxy_healthcheck_bind_errors_total",
                "counter",
                &[],
            ),
            ("process_cpu_seconds_total", "counter", &[]),
            ("process_resident_memory_bytes", "gauge", &[]),
            ("process_virtual_memory_bytes", "gauge", &[]),
            ("process_start_time_seconds", "gauge", &[]),
            ("process_open_fds", "gauge", &[]),
            ("process_max_fds", "gauge", &[]),
        ];
        for (name, kind, labels) in expected {
            assert_eq!(
                types.get(name).map(String::as_str),
                Some(kind),
                "TYPE of {name}"
            );
            let labels: BTreeSet<String> = labels.iter().map(|l| l.to_string()).collect();
            let seen = label_names(&scrape, name);
            assert_eq!(seen, BTreeSet::from([labels]), "label names of {name}");
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "HELP line of {name}"
            );
        }
        assert!(!text.contains("_total_total"));
        assert!(text.contains(
            "# HELP kubeproxy_sync_proxy_rules_duration_seconds [ALPHA] SyncProxyRules latency in seconds\n"
        ));

        let mut with_inf = sync_duration_buckets();
        with_inf.push(f64::INFINITY);
        for name in [
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "kubeproxy_conntrack_reconciler_sync_duration_seconds",
        ] {
            assert_eq!(bounds(&scrape, name), with_inf, "buckets of {name}");
        }
        let mut np = network_programming_buckets();
        np.push(f64::INFINITY);
        assert_eq!(
            bounds(&scrape, "kubeproxy_network_programming_duration_seconds"),
            np
        );
        assert!(text.contains("kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family=\"IPv4\",le=\"0.001\"} 0\n"));
        assert!(text.contains("kubeproxy_network_programming_duration_seconds_bucket{ip_family=\"IPv4\",le=\"0\"} 0\n"));

        // Values.
        let v4 = [("ip_family", "IPv4")];
        let v6 = [("ip_family", "IPv6")];
        assert_eq!(
            value(&scrape, "kubeproxy_sync_proxy_rules_duration_seconds", &v6),
            2.0
        );
        assert_eq!(
            value(
                &scrape,
                "kubeproxy_sync_full_proxy_rules_duration_seconds",
                &v4
            ),
            1.0
        );
        assert_eq!(
            value(
                &scrape,
                "kubeproxy_sync_partial_proxy_rules_duration_seconds",
                &v4
            ),
            1.0
        );
        assert_eq!(
            value(
                &scrape,
                "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
                &v6
            ),
            1.0
        );
        assert_eq!(
            value(
                &scrape,
                "kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total",
                &v4
            ),
            1.0
        );
        let last = value(
            &scrape,
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            &v4,
        );
        let queued = value(
            &scrape,
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            &v4,
        );
        assert!(last >= queued && queued > 1.6e9, "{last} {queued}");
        assert_eq!(
            value(
                &scrape,
                "kubeproxy_network_programming_duration_seconds",
                &v4
            ),
            1.0
        );
        assert_eq!(
            value(
                &scrape,
                "kubeproxy_sync_proxy_rules_service_changes_pending",
                &[]
            ),
            2.0
        );
        assert_eq!(
            value(
                &scrape,
                "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
                &[]
            ),
            5.0
        );
        assert_eq!(
            value(
                &scrape,
                "kubeproxy_sync_proxy_rules_service_changes_total",
                &[]
            ),
            3.0
        );
        assert_eq!(
            value(
                &scrape,
                "kubeproxy_sync_proxy_rules_endpoint_changes_total",
                &[]
            ),
            7.0
        );
        assert_eq!(
            value(
                &scrape,
                "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
                &[("ip_family", "IPv4"), ("traffic_policy", "external")]
            ),
            2.0
        );
        assert_eq!(
            value(
                &scrape,
                "kubeproxy_conntrack_reconciler_deleted_entries_total",
                &v4
            ),
            4.0
        );
        assert_eq!(
            value(
                &scrape,
                "kubeproxy_conntrack_reconciler_deleted_entries_total",
                &v6
            ),
            0.0
        );
        assert_eq!(
            value(&scrape, "kubeproxy_proxy_healthz_total", &[("code", "503")]),
            1.0
        );
        assert_eq!(
            value(&scrape, "kubeproxy_proxy_livez_total", &[("code", "200")]),
            1.0
        );
        assert_eq!(
            value(&scrape, "kube_nftproxy_transaction_messages", &[]),
            12.0
        );
        assert_eq!(value(&scrape, "kube_nftproxy_set_elements", &[]), 345.0);
        assert_eq!(
            value(&scrape, "kube_nftproxy_commit_ack_delay_seconds", &[]),
            0.007
        );
        assert_eq!(
            value(&scrape, "kube_nftproxy_notes", &[("reason", "invalid-ip")]),
            3.0
        );
        assert!(
            !text.contains("port-out-of-range"),
            "replaced notes are gone"
        );
        assert_eq!(
            value(&scrape, "kube_nftproxy_healthcheck_bind_errors_total", &[]),
            1.0
        );
        assert!(value(&scrape, "process_resident_memory_bytes", &[]) > 0.0);
        assert!(value(&scrape, "process_open_fds", &[]) >= 3.0);
        let start = value(&scrape, "process_start_time_seconds", &[]);
        let now = seconds_since_epoch(SystemTime::now());
        assert!(start > 1.6e9 && start <= now + 1.0, "{start}");
    }

    #[test]
    fn gauges_appear_when_set_counters_and_histograms_from_the_start() {
        let text = Metrics::new(&[]).encode();
        assert!(text.contains(
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total{ip_family=\"IPv4\"} 0\n"
        ));
        assert!(text
            .contains("kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"} 0\n"));
        assert!(!text.contains("IPv6"));
        assert!(!text.contains("kubeproxy_sync_proxy_rules_last_timestamp_seconds{"));
    }

    #[test]
    fn proc_stat_fields_are_counted_from_the_last_parenthesis() {
        let stat = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 \
                    4 0 1000 123456789 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        let stats = parse_stat(stat, 100.0, 4096, Some(1_700_000_000.0)).unwrap();
        assert_eq!(stats.cpu_seconds, Some(3.0));
        assert_eq!(stats.virtual_memory_bytes, Some(123_456_789));
        assert_eq!(stats.resident_memory_bytes, Some(300 * 4096));
        assert_eq!(stats.start_time_seconds, Some(1_700_000_010.0));
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 5\n"),
            Some(1_700_000_000.0)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n\
                      Max address space         unlimited            unlimited            bytes\n";
        assert_eq!(parse_soft_limit(limits, "Max open files"), Some(1024));
        assert_eq!(
            parse_soft_limit(limits, "Max address space"),
            Some(u64::MAX)
        );
    }
}
