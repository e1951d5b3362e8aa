//! Real-kernel test harness: network namespaces, veths, a bridge "LAN",
//! in-process TCP/UDP servers and clients (thread + setns), nft helpers.
//!
//! Everything is created inside namespaces named `kntp-<random>-<role>`;
//! nothing is ever changed in the root network namespace.
//!
//! Usage from an integration test (`integration/foo.rs`):
//! ```ignore
//! mod support;
//! use support::*;
//!
//! #[test]
//! fn my_test() {
//!     if !require_root_and_tools() { return; }
//!     let mut c = Cluster::new();
//!     let a = c.add_pod("a", "10.244.0.2");
//!     a.spawn_tcp_server("10.244.0.2", 8080).unwrap();
//!     c.node().nft_apply("table ip t { ... }").unwrap();
//!     let reply = c.client().tcp_request("10.96.0.10", 80, TIMEOUT).unwrap();
//!     assert_eq!(Identity::parse(&reply).server, "a");
//! }
//! ```
#![allow(dead_code)]

mod cluster;
pub mod fakeapi;
mod files;
mod netns;
mod sys;

#[allow(unused_imports)]
pub use cluster::*;
#[allow(unused_imports)]
pub use files::*;
#[allow(unused_imports)]
pub use netns::*;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A reasonable per-request timeout for traffic that is expected to succeed.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// Short timeout for traffic that is expected to be dropped.
pub const DROP_TIMEOUT: Duration = Duration::from_millis(300);

/// Returns true when the real-kernel tests can run (root + `ip` + `nft`).
/// Otherwise prints `skipping: ...` to stderr and returns false, or panics
/// when `CI=true` (CI must run these tests).
pub fn require_root_and_tools() -> bool {
    let mut missing = Vec::new();
    if sys::euid() != 0 {
        missing.push("root (euid 0)".to_string());
    }
    for (tool, arg) in [("ip", "-V"), ("nft", "--version")] {
        let ok = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            missing.push(format!("`{tool}` in PATH"));
        }
    }
    if !std::path::Path::new("/proc/thread-self/ns/net").exists() {
        missing.push("/proc/thread-self/ns/net".to_string());
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "skipping: needs root and nft/ip (missing: {})",
        missing.join(", ")
    );
    let ci = std::env::var("CI")
        .map(|v| v.eq_ignore_ascii_case("true") || v == "1")
        .unwrap_or(false);
    if ci {
        panic!("CI=true but real-kernel test requirements are missing: {msg}");
    }
    eprintln!("{msg}");
    false
}

/// Anything that can be turned into an IP address (`&str`, `String`,
/// `IpAddr`, `Ipv4Addr`, `Ipv6Addr`). Panics on an unparsable string.
pub trait ToIp {
    fn to_ip(&self) -> IpAddr;
}

impl ToIp for &str {
    fn to_ip(&self) -> IpAddr {
        self.parse()
            .unwrap_or_else(|e| panic!("invalid IP address {self:?}: {e}"))
    }
}
impl ToIp for String {
    fn to_ip(&self) -> IpAddr {
        self.as_str().to_ip()
    }
}
impl ToIp for &String {
    fn to_ip(&self) -> IpAddr {
        self.as_str().to_ip()
    }
}
impl ToIp for IpAddr {
    fn to_ip(&self) -> IpAddr {
        *self
    }
}
impl ToIp for Ipv4Addr {
    fn to_ip(&self) -> IpAddr {
        IpAddr::V4(*self)
    }
}
impl ToIp for Ipv6Addr {
    fn to_ip(&self) -> IpAddr {
        IpAddr::V6(*self)
    }
}

/// `SocketAddr` from an IP-like value and a port (handy for `*_from`).
pub fn sa(ip: impl ToIp, port: u16) -> SocketAddr {
    SocketAddr::new(ip.to_ip(), port)
}

/// Parsed server reply: `"<server> <peer-ip:port> <local-ip:port>"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Role of the namespace that served (pod name, `node`, ...).
    pub server: String,
    /// Source address the server saw (client IP preserved vs masqueraded).
    pub peer: SocketAddr,
    /// Local address of the server socket (the endpoint actually hit).
    pub local: SocketAddr,
}

impl Identity {
    /// Parses a reply; panics with the raw text if it is malformed.
    pub fn parse(reply: &str) -> Identity {
        let mut it = reply.split_whitespace();
        let (Some(server), Some(peer), Some(local)) = (it.next(), it.next(), it.next()) else {
            panic!("malformed server reply {reply:?}");
        };
        Identity {
            server: server.to_string(),
            peer: peer
                .parse()
                .unwrap_or_else(|e| panic!("bad peer in {reply:?}: {e}")),
            local: local
                .parse()
                .unwrap_or_else(|e| panic!("bad local in {reply:?}: {e}")),
        }
    }
}

/// Counts successful replies per serving role; returns (counts, errors).
pub fn tally(
    results: &[std::io::Result<String>],
) -> (std::collections::BTreeMap<String, usize>, Vec<String>) {
    let mut counts = std::collections::BTreeMap::new();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(s) => *counts.entry(Identity::parse(s).server).or_insert(0) += 1,
            Err(e) => errors.push(format!("{:?}: {e}", e.kind())),
        }
    }
    (counts, errors)
}

/// Names from `ip netns list` (root namespace listing; read-only).
pub fn list_netns() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// 8 random hex chars from /dev/urandom (unique namespace names).
pub fn random_id() -> String {
    use std::io::Read;
    let mut b = [0u8; 4];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("read /dev/urandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `kube-nftproxy render ARGS FILE` of `docs`, written to `dir/cluster.yaml`: the script it
/// prints. Panics (with render's error) when render fails.
pub fn render_script(args: &[&str], dir: &std::path::Path, docs: &str) -> String {
    let file = dir.join("cluster.yaml");
    std::fs::write(&file, docs).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kube-nftproxy"))
        .arg("render")
        .args(args)
        .arg(&file)
        .stdin(Stdio::null())
        .output()
        .expect("run kube-nftproxy render");
    assert!(
        out.status.success(),
        "render failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
