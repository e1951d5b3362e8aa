//! kube-proxy's proxy health server (`pkg/proxy/healthcheck/proxy_health.go`): the state
//! behind `/healthz` and `/livez`, and the server that answers them.
//!
//! The rule, per IP family: [`ProxyHealth::queued_update`] when a change arrives that needs
//! programming, [`ProxyHealth::updated`] when a sync has programmed everything. A family is
//! unhealthy when it has been updated at least once and its oldest queued, unprogrammed change
//! is `health_timeout` old or older; the proxy is healthy when no family is unhealthy.
//! Upstream passes `health_timeout = 2 × syncPeriod` ([`health_timeout_for`]). As upstream,
//! a family that has never been updated counts as healthy (it is starting up).
//!
//! `/healthz` also answers 503 while the Node is not eligible to receive load-balanced
//! traffic (being deleted, or tainted `ToBeDeletedByClusterAutoscaler`), so load balancers
//! drain it; `/livez` ignores eligibility. Both answer JSON as upstream does with Go's
//! `json.Marshal`: `{"lastUpdated":…,"currentTime":…,"nodeEligible":…,"healthy":…,
//! "status":{"IPv4":{"lastUpdated":…,"healthy":…}}}` (no `nodeEligible` on `/livez`; `status`
//! only lists families updated at least once), times in RFC 3339 with nanoseconds, UTC.
//! While healthy, `lastUpdated` is the current time (upstream keeps that for compatibility).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::http;
use super::metrics::Metrics;
use super::HttpServer;
use crate::vocab::Family as IpFamily;

/// The taint the Cluster Autoscaler puts on a Node before deleting it (upstream's
/// `ToBeDeletedTaint`).
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// Upstream's health timeout for a given sync period: `2 * config.SyncPeriod.Duration`
/// (`cmd/kube-proxy/app/server.go`, `healthcheck.NewProxyHealthServer(...)`).
pub fn health_timeout_for(sync_period: Duration) -> Duration {
    sync_period * 2
}

/// Upstream's node eligibility (`NodeEligible`): a Node is eligible unless it has a
/// deletion timestamp or a taint with key [`TO_BE_DELETED_TAINT`] (any value or effect).
pub fn node_eligible<'a>(
    has_deletion_timestamp: bool,
    taint_keys: impl IntoIterator<Item = &'a str>,
) -> bool {
    !has_deletion_timestamp && !taint_keys.into_iter().any(|k| k == TO_BE_DELETED_TAINT)
}

/// One family's part of a [`HealthStatus`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxierHealth {
    /// When this family was last updated.
    pub last_updated: SystemTime,
    pub healthy: bool,
}

/// What the health state says at one moment (upstream's `ProxyHealth`, without the node).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthStatus {
    /// The most recent update of any family; `None` before the first.
    pub last_updated: Option<SystemTime>,
    pub current_time: SystemTime,
    /// No family is unhealthy.
    pub healthy: bool,
    /// The families updated at least once.
    pub status: BTreeMap<IpFamily, ProxierHealth>,
}

/// An HTTP answer: status code and JSON body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// The shared health state. Cheap to share behind an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct ProxyHealth {
    health_timeout: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Per family, when it was last updated (monotonic, for ordering; wall clock, to show).
    last_updated: BTreeMap<IpFamily, (Instant, SystemTime)>,
    /// Per family, the oldest change queued since its last update.
    oldest_pending: BTreeMap<IpFamily, Instant>,
    node_eligible: bool,
}

impl ProxyHealth {
    /// Health state with the given timeout (see [`health_timeout_for`]). The node counts as
    /// eligible until [`ProxyHealth::set_node_eligible`] says otherwise.
    pub fn new(health_timeout: Duration) -> ProxyHealth {
        ProxyHealth {
            health_timeout,
            state: Mutex::new(State {
                last_updated: BTreeMap::new(),
                oldest_pending: BTreeMap::new(),
                node_eligible: true,
            }),
        }
    }

    /// The timeout this state was made with.
    pub fn health_timeout(&self) -> Duration {
        self.health_timeout
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent whatever panicked while holding the lock.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A change for `family` was received and not yet programmed (upstream's
    /// `QueuedUpdate`): starts the clock, unless a queued change is already waiting.
    pub fn queued_update(&self, family: IpFamily) {
        self.queued_update_at(family, Instant::now());
    }

    fn queued_update_at(&self, family: IpFamily, now: Instant) {
        self.state().oldest_pending.entry(family).or_insert(now);
    }

    /// `family`'s rules now reflect every change received (upstream's `Updated`): clears
    /// the queued change and records the time.
    pub fn updated(&self, family: IpFamily) {
        self.updated_at(family, Instant::now(), SystemTime::now());
    }

    fn updated_at(&self, family: IpFamily, now: Instant, wall: SystemTime) {
        let mut state = self.state();
        state.oldest_pending.remove(&family);
        state.last_updated.insert(family, (now, wall));
    }

    /// Records whether the Node may receive load-balanced traffic (see [`node_eligible`]).
    pub fn set_node_eligible(&self, eligible: bool) {
        self.state().node_eligible = eligible;
    }

    /// Whether the Node is eligible (true until told otherwise).
    pub fn node_eligible(&self) -> bool {
        self.state().node_eligible
    }

    /// The proxy's health, ignoring the Node (upstream's `Health()`).
    pub fn health(&self) -> HealthStatus {
        self.health_at(Instant::now(), SystemTime::now())
    }

    /// `health().healthy`: what healthCheckNodePorts report as `serviceProxyHealthy`.
    pub fn is_healthy(&self) -> bool {
        self.health().healthy
    }

    fn health_at(&self, now: Instant, wall: SystemTime) -> HealthStatus {
        let state = self.state();
        let mut status = BTreeMap::new();
        let mut healthy = true;
        let mut latest: Option<(Instant, SystemTime)> = None;
        for (&family, &(mono, last_wall)) in &state.last_updated {
            if latest.is_none_or(|(m, _)| mono > m) {
                latest = Some((mono, last_wall));
            }
            let late = state.oldest_pending.get(&family).is_some_and(|&queued| {
                now.saturating_duration_since(queued) >= self.health_timeout
            });
            healthy &= !late;
            status.insert(
                family,
                ProxierHealth {
                    last_updated: last_wall,
                    healthy: !late,
                },
            );
        }
        HealthStatus {
            last_updated: latest.map(|(_, w)| w),
            current_time: wall,
            healthy,
            status,
        }
    }

    /// The `/healthz` answer: 200 when healthy and the Node is eligible, else 503.
    pub fn healthz(&self) -> Answer {
        let eligible = self.node_eligible();
        let health = self.health();
        answer(health, Some(eligible))
    }

    /// The `/livez` answer: 200 when healthy, else 503, whatever the Node.
    pub fn livez(&self) -> Answer {
        answer(self.health(), None)
    }
}

fn answer(mut health: HealthStatus, node_eligible: Option<bool>) -> Answer {
    let healthy = health.healthy && node_eligible.unwrap_or(true);
    if healthy {
        // Upstream: "the returned lastUpdated value is "recent" if the server is healthy".
        health.last_updated = Some(health.current_time);
    }
    Answer {
        status: if healthy { 200 } else { 503 },
        body: json(&health, node_eligible),
    }
}

/// Go's `json.Marshal` of upstream's `ProxyHealth`: field order lastUpdated, currentTime,
/// nodeEligible (omitted when nil), healthy, status (omitted when empty; keys sorted).
fn json(health: &HealthStatus, node_eligible: Option<bool>) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "{{\"lastUpdated\":\"{}\",\"currentTime\":\"{}\"",
        health.last_updated.map_or_else(go_zero_time, rfc3339_nano),
        rfc3339_nano(health.current_time)
    );
    if let Some(eligible) = node_eligible {
        let _ = write!(out, ",\"nodeEligible\":{eligible}");
    }
    let _ = write!(out, ",\"healthy\":{}", health.healthy);
    if !health.status.is_empty() {
        out.push_str(",\"status\":{");
        for (i, (family, proxier)) in health.status.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(
                out,
                "\"{}\":{{\"lastUpdated\":\"{}\",\"healthy\":{}}}",
                family.k8s_name(),
                rfc3339_nano(proxier.last_updated),
                proxier.healthy
            );
        }
        out.push('}');
    }
    out.push('}');
    out
}

/// Go's zero `time.Time` as JSON.
fn go_zero_time() -> String {
    "0001-01-01T00:00:00Z".to_string()
}

/// A time as Go's `time.Time.MarshalJSON` writes a UTC time: RFC 3339 with up to nine
/// fractional digits, trailing zeros dropped (`2024-05-06T07:08:09.12Z`).
pub fn rfc3339_nano(t: SystemTime) -> String {
    let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let (s, n) = (d.as_secs() as i64, d.subsec_nanos());
            if n == 0 {
                (-s, 0)
            } else {
                (-s - 1, 1_000_000_000 - n)
            }
        }
    };
    let days = secs.div_euclid(86_400);
    let in_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let mut out = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        in_day / 3600,
        in_day % 3600 / 60,
        in_day % 60
    );
    if nanos != 0 {
        let fraction = format!("{nanos:09}");
        out.push('.');
        out.push_str(fraction.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Serves `/healthz` and `/livez` on `addr` (kube-proxy's default `0.0.0.0:10256`; port 0:
/// any free port, see [`HttpServer::local_addr`]) with upstream's headers
/// (`Content-Type: application/json`, `X-Content-Type-Options: nosniff`); other paths get
/// Go's 404. Each answer is counted in `kubeproxy_proxy_healthz_total{code}` /
/// `kubeproxy_proxy_livez_total{code}` when `metrics` is given. A bind error is returned (the
/// caller logs it); the server runs until the returned value is shut down or dropped. Call it
/// inside a Tokio runtime.
pub async fn serve_health(
    addr: SocketAddr,
    health: Arc<ProxyHealth>,
    metrics: Option<Arc<Metrics>>,
) -> io::Result<HttpServer> {
    let listener = http::bind(addr)?;
    http::spawn(listener, move |request| {
        let answer = match request.uri().path() {
            "/healthz" => {
                let answer = health.healthz();
                if let Some(m) = &metrics {
                    m.inc_healthz(answer.status);
                }
                answer
            }
            "/livez" => {
                let answer = health.livez();
                if let Some(m) = &metrics {
                    m.inc_livez(answer.status);
                }
                answer
            }
            _ => return http::not_found(),
        };
        http::reply(
            answer.status,
            &[
                ("Content-Type", "application/json"),
                ("X-Content-Type-Options", "nosniff"),
            ],
            answer.body,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: IpFamily = IpFamily::V4;
    const V6: IpFamily = IpFamily::V6;

    #[test]
    fn times_are_written_as_go_marshals_them() {
        let t = |s: u64, n: u32| UNIX_EPOCH + Duration::new(s, n);
        assert_eq!(rfc3339_nano(t(0, 0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_nano(t(1_700_000_000, 0)), "2023-11-14T22:13:20Z");
        assert_eq!(
            rfc3339_nano(t(1_700_000_000, 120_000_000)),
            "2023-11-14T22:13:20.12Z"
        );
        assert_eq!(
            rfc3339_nano(t(951_825_600, 1)),
            "2000-02-29T12:00:00.000000001Z"
        );
        assert_eq!(rfc3339_nano(t(4_102_444_800, 0)), "2100-01-01T00:00:00Z");
        assert_eq!(
            rfc3339_nano(UNIX_EPOCH - Duration::from_millis(500)),
            "1969-12-31T23:59:59.5Z"
        );
    }

    #[test]
    fn health_follows_upstreams_timeline() {
        // Upstream's TestHealthzServer / testProxyHealthUpdater, with a 10 s timeout.
        let h = ProxyHealth::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let w0 = SystemTime::now();
        let at = |s: u64| (t0 + Duration::from_secs(s), w0 + Duration::from_secs(s));

        // Healthy by default, nothing in status.
        let (n, w) = at(0);
        let s = h.health_at(n, w);
        assert!(s.healthy && s.status.is_empty() && s.last_updated.is_none());

        // Queued but never updated: still starting up, healthy (upstream's per-family maps).
        h.queued_update_at(V4, n);
        assert!(h.health_at(at(60).0, at(60).1).healthy);

        h.updated_at(V4, n, w);
        h.updated_at(V6, n, w);
        let (n25, w25) = at(25);
        let s = h.health_at(n25, w25);
        assert!(s.healthy);
        assert_eq!(s.last_updated, Some(w));
        assert_eq!(s.status.len(), 2);

        // IPv4 queued at 25 s; at 34.9 s still fine, at 35 s late.
        h.queued_update_at(V4, n25);
        let s = h.health_at(n25 + Duration::from_millis(9_900), w25);
        assert!(s.healthy);
        // A second queued change does not restart the clock.
        h.queued_update_at(V4, at(30).0);
        let (n35, w35) = at(35);
        let s = h.health_at(n35, w35);
        assert!(!s.healthy);
        assert!(!s.status[&V4].healthy && s.status[&V6].healthy);
        assert_eq!(s.last_updated, Some(w));

        // Updating IPv6 alone changes nothing for IPv4.
        h.updated_at(V6, n35, w35);
        let s = h.health_at(n35, w35);
        assert!(!s.healthy);
        assert_eq!(s.last_updated, Some(w35));

        h.updated_at(V4, n35, w35);
        assert!(h.health_at(at(40).0, at(40).1).healthy);
    }

    #[test]
    fn healthz_and_livez_bodies_and_codes() {
        let h = ProxyHealth::new(Duration::from_secs(10));
        let a = h.healthz();
        assert_eq!(a.status, 200);
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(v["nodeEligible"], true);
        assert_eq!(v["healthy"], true);
        assert_eq!(v["lastUpdated"], v["currentTime"]);
        assert!(v.get("status").is_none());
        assert!(a.body.starts_with("{\"lastUpdated\":\""));

        h.updated(V4);
        h.set_node_eligible(false);
        let a = h.healthz();
        assert_eq!(a.status, 503);
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(v["nodeEligible"], false);
        assert_eq!(v["healthy"], true);
        assert_eq!(v["status"]["IPv4"]["healthy"], true);
        let text = |k: &str| v[k].as_str().unwrap().to_string();
        let expected = format!(
            "{{\"lastUpdated\":\"{}\",\"currentTime\":\"{}\",\"nodeEligible\":false,\
             \"healthy\":true,\"status\":{{\"IPv4\":{{\"lastUpdated\":\"{}\",\"healthy\":true}}}}}}",
            text("lastUpdated"),
            text("currentTime"),
            v["status"]["IPv4"]["lastUpdated"].as_str().unwrap()
        );
        assert_eq!(a.body, expected);
        // Not healthy (the node), so lastUpdated is the IPv4 update, not now.
        assert_eq!(text("lastUpdated"), v["status"]["IPv4"]["lastUpdated"]);

        let l = h.livez();
        assert_eq!(l.status, 200);
        let v: serde_json::Value = serde_json::from_str(&l.body).unwrap();
        assert!(v.get("nodeEligible").is_none());
    }

    #[test]
    fn eligibility_follows_deletion_and_the_autoscaler_taint() {
        assert!(node_eligible(false, []));
        assert!(node_eligible(
            false,
            ["other", "node.kubernetes.io/unschedulable"]
        ));
        assert!(!node_eligible(true, []));
        assert!(!node_eligible(false, ["other", TO_BE_DELETED_TAINT]));
        assert_eq!(
            health_timeout_for(Duration::from_secs(30)),
            Duration::from_secs(60)
        );
    }
}
