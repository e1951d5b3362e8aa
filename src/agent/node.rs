//! What kube-proxy sets on the node before it syncs: its own OOM score and the conntrack
//! sysctls (`cmd/kube-proxy/app/conntrack.go`). The list of sysctls is computed purely;
//! writing them is a separate step whose failures the caller logs (a container without
//! write access to /proc/sys, or a sysctl the kernel keeps per host, is not fatal).

use std::io;
use std::path::Path;
use std::time::Duration;

/// kube-proxy's `conntrack` settings. A zero duration or a zero `max_per_core` means
/// "leave the kernel's value as it is", as upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConntrackLimits {
    /// Entries per CPU core for `nf_conntrack_max` (default 32768).
    pub max_per_core: i32,
    /// Lower bound of `nf_conntrack_max` (default 131072).
    pub min: i32,
    /// `nf_conntrack_tcp_timeout_established` (default 24h).
    pub tcp_established: Duration,
    /// `nf_conntrack_tcp_timeout_close_wait` (default 1h).
    pub tcp_close_wait: Duration,
    /// `nf_conntrack_tcp_be_liberal` (default false: leave as is).
    pub tcp_be_liberal: bool,
    /// `nf_conntrack_udp_timeout` (default 0: leave as is).
    pub udp_timeout: Duration,
    /// `nf_conntrack_udp_timeout_stream` (default 0: leave as is).
    pub udp_stream_timeout: Duration,
}

impl Default for ConntrackLimits {
    fn default() -> Self {
        ConntrackLimits {
            max_per_core: 32768,
            min: 131072,
            tcp_established: Duration::from_secs(24 * 3600),
            tcp_close_wait: Duration::from_secs(3600),
            tcp_be_liberal: false,
            udp_timeout: Duration::ZERO,
            udp_stream_timeout: Duration::ZERO,
        }
    }
}

const NF: &str = "net/netfilter/";

/// The sysctls (path under /proc/sys, value) these settings ask for, in upstream's order:
/// `nf_conntrack_max` = max(max_per_core x cpus, min) when max_per_core > 0, then each
/// timeout that is set, in seconds, and `tcp_be_liberal` only when true.
pub fn conntrack_sysctls(c: &ConntrackLimits, cpus: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if c.max_per_core > 0 {
        let max = (i64::from(c.max_per_core) * cpus as i64).max(i64::from(c.min));
        out.push((format!("{NF}nf_conntrack_max"), max.to_string()));
    }
    let timeouts = [
        ("nf_conntrack_tcp_timeout_established", c.tcp_established),
        ("nf_conntrack_tcp_timeout_close_wait", c.tcp_close_wait),
    ];
    for (name, d) in timeouts {
        if !d.is_zero() {
            out.push((format!("{NF}{name}"), d.as_secs().to_string()));
        }
    }
    if c.tcp_be_liberal {
        out.push((format!("{NF}nf_conntrack_tcp_be_liberal"), "1".into()));
    }
    let udp = [
        ("nf_conntrack_udp_timeout", c.udp_timeout),
        ("nf_conntrack_udp_timeout_stream", c.udp_stream_timeout),
    ];
    for (name, d) in udp {
        if !d.is_zero() {
            out.push((format!("{NF}{name}"), d.as_secs().to_string()));
        }
    }
    out
}

/// Writes each sysctl whose current value differs (for `nf_conntrack_max`, only when the
/// current limit is lower, as upstream never lowers it); returns the ones that failed.
pub fn apply_sysctls(list: &[(String, String)]) -> Vec<(String, String, io::Error)> {
    apply_sysctls_under(Path::new("/proc/sys"), list)
}

fn apply_sysctls_under(root: &Path, list: &[(String, String)]) -> Vec<(String, String, io::Error)> {
    let mut failed = Vec::new();
    for (name, value) in list {
        let path = root.join(name);
        let current = std::fs::read_to_string(&path).map(|s| s.trim().to_string());
        let wanted_is_lower = name.ends_with("nf_conntrack_max")
            && matches!((&current, value.parse::<u64>()), (Ok(c), Ok(v)) if c.parse::<u64>().is_ok_and(|c| c >= v));
        if current.as_deref().ok() == Some(value.as_str()) || wanted_is_lower {
            continue;
        }
        match std::fs::write(&path, value) {
            Ok(()) => tracing::info!(sysctl = %name, %value, "set"),
            Err(e) => failed.push((name.clone(), value.clone(), e)),
        }
    }
    failed
}

/// `oomScoreAdj`: kube-proxy runs at -999 so the kernel kills it last.
pub fn set_oom_score_adj(score: i32) -> io::Result<()> {
    std::fs::write("/proc/self/oom_score_adj", score.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// kube-proxy's defaults.
    fn limits() -> ConntrackLimits {
        ConntrackLimits::default()
    }

    #[test]
    fn kube_proxy_defaults_give_its_sysctls() {
        let got = conntrack_sysctls(&limits(), 2);
        assert_eq!(
            got,
            [
                (
                    "net/netfilter/nf_conntrack_max".to_string(),
                    "131072".to_string()
                ),
                (
                    "net/netfilter/nf_conntrack_tcp_timeout_established".into(),
                    "86400".into()
                ),
                (
                    "net/netfilter/nf_conntrack_tcp_timeout_close_wait".into(),
                    "3600".into()
                ),
            ]
        );
        // Eight CPUs exceed the minimum.
        assert_eq!(conntrack_sysctls(&limits(), 8)[0].1, "262144");
    }

    #[test]
    fn each_setting_changes_the_list() {
        let base = conntrack_sysctls(&limits(), 2);
        let with = |f: &dyn Fn(&mut ConntrackLimits)| {
            let mut l = limits();
            f(&mut l);
            conntrack_sysctls(&l, 2)
        };
        assert!(with(&|l| l.max_per_core = 0)
            .iter()
            .all(|(n, _)| !n.ends_with("_max")));
        assert_ne!(with(&|l| l.min = 500_000), base);
        assert_ne!(with(&|l| l.tcp_established = Duration::from_secs(60)), base);
        assert_ne!(with(&|l| l.tcp_close_wait = Duration::ZERO), base);
        assert!(with(&|l| l.tcp_be_liberal = true).contains(&(
            "net/netfilter/nf_conntrack_tcp_be_liberal".into(),
            "1".into()
        )));
        assert!(with(&|l| l.udp_timeout = Duration::from_secs(30))
            .contains(&("net/netfilter/nf_conntrack_udp_timeout".into(), "30".into())));
        assert!(
            with(&|l| l.udp_stream_timeout = Duration::from_secs(120)).contains(&(
                "net/netfilter/nf_conntrack_udp_timeout_stream".into(),
                "120".into()
            ))
        );
    }

    #[test]
    fn sysctls_are_written_only_when_different_and_the_limit_never_lowered() {
        let dir = std::env::temp_dir().join(format!("kntp-sysctl-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("net/netfilter")).unwrap();
        let file = |n: &str| dir.join("net/netfilter").join(n);
        std::fs::write(file("nf_conntrack_max"), "500000\n").unwrap();
        std::fs::write(file("nf_conntrack_tcp_timeout_established"), "432000\n").unwrap();
        // A directory where close_wait should be: writing it fails like a read-only sysctl.
        std::fs::create_dir_all(file("nf_conntrack_tcp_timeout_close_wait")).unwrap();
        let failed = apply_sysctls_under(&dir, &conntrack_sysctls(&limits(), 2));
        // close_wait cannot be written: that one fails, the rest applies.
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(failed[0].0.ends_with("close_wait"));
        assert_eq!(
            std::fs::read_to_string(file("nf_conntrack_max"))
                .unwrap()
                .trim(),
            "500000"
        );
        assert_eq!(
            std::fs::read_to_string(file("nf_conntrack_tcp_timeout_established")).unwrap(),
            "86400"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
