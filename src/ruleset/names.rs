//! Chain names for Service ports, in upstream's scheme: a prefix, an 8-character hash and
//! the readable `ns/name/proto/port` base, truncated so the whole stays within nft's limit.

use data_encoding::BASE32;
use sha2::{Digest, Sha256};

use crate::model::ServicePort;

/// nft allows 256 bytes including the NUL; leave room for the longest prefix.
const BASE_MAX: usize = 256 - 16;

pub fn base(sp: &ServicePort) -> String {
    let raw = format!(
        "{}/{}/{}/{}",
        sp.namespace,
        sp.name,
        sp.protocol.name(),
        sp.port_name
    );
    hash_and_truncate(&raw)
}

fn hash_and_truncate(name: &str) -> String {
    let hash = Sha256::digest(name.as_bytes());
    let encoded = BASE32.encode(&hash);
    let mut out = format!("{}-{}", &encoded[..8], name);
    if out.len() > BASE_MAX {
        out.truncate(BASE_MAX - 3);
        out.push_str("...");
    }
    out
}

/// The dynamic set remembering the clients of one endpoint of a Service port with session
/// affinity, as upstream names it: `affinity-<hash>-ns/name/proto/port__10.244.0.2/8080`
/// (an IPv6 address with dots for colons, which nft does not allow in a name).
pub fn affinity_set(sp: &ServicePort, ip: std::net::IpAddr, port: u16) -> String {
    let raw = format!(
        "{}/{}/{}/{}__{}/{port}",
        sp.namespace,
        sp.name,
        sp.protocol.name(),
        sp.port_name,
        ip.to_string().replace(':', ".")
    );
    format!("affinity-{}", hash_and_truncate(&raw))
}

pub fn service_chain(base: &str) -> String {
    format!("service-{base}")
}
pub fn local_chain(base: &str) -> String {
    format!("local-{base}")
}
pub fn external_chain(base: &str) -> String {
    format!("external-{base}")
}
pub fn firewall_chain(base: &str) -> String {
    format!("firewall-{base}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_upstream_hash() {
        // Upstream's TestOverallNFTablesRules names this chain service-ULMVA6XW-ns1/svc1/tcp/p80.
        assert_eq!(
            hash_and_truncate("ns1/svc1/tcp/p80"),
            "ULMVA6XW-ns1/svc1/tcp/p80"
        );
    }

    #[test]
    fn long_names_are_truncated() {
        let long = "a".repeat(400);
        let n = hash_and_truncate(&long);
        assert_eq!(n.len(), BASE_MAX);
        assert!(n.ends_with("..."));
    }
}
