//! The vocabulary every layer shares: address families, transport protocols, and the
//! notes a layer writes about an object it skipped or reduced. Plain data, no logic that
//! belongs to one layer.

use std::net::IpAddr;

/// The address family of one table. The IR is written once per family; fields such as
/// `Field::Saddr` print as `ip saddr` or `ip6 saddr` depending on the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// As Kubernetes spells `v1.IPFamily` (`IPv4`, `IPv6`): the value of upstream's
    /// `ip_family` metric label and the key of the health body's `status` map.
    pub fn k8s_name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// Transport protocols a Service port may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Sctp => 132,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

/// A note about an object that was skipped or reduced, and why. Printed one per line on
/// stderr by `render`, logged by the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub object: String,
    pub reason: String,
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "skipping {}: {}", self.object, self.reason)
    }
}
