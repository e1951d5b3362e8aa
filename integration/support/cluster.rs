//! The "node network" topology.
//!
//! ```text
//!                     lan ns: bridge br0 (pure L2)
//!          ┌───────────────────┼────────────────────┐
//!   node (eth0)           node2 (eth0)          client (eth0)
//!   192.168.0.10/24       192.168.0.11/24       192.168.0.100/24
//!   fd00:192::10/64       fd00:192::11/64       fd00:192::100/64
//!    │ vpN (10.244.0.1/32, fe80::1)  │ vpN (10.244.1.1/32, fe80::1)
//!   pods 10.244.0.x       pods 10.244.1.x
//!   [fd00:244::x]         [fd00:244:1::x]
//! ```
//!
//! Routes: node <-> node2 pod CIDRs via each other's LAN IP; pods default via
//! their node; node/node2 have on-link routes for the service/LB ranges so
//! node-local connect() reaches the nat output hook; the client routes the
//! service/LB ranges via the node (192.168.0.10 / fd00:192::10).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::netns::Netns;
use super::{random_id, ToIp};

pub const NODE_IP: &str = "192.168.0.10";
pub const NODE2_IP: &str = "192.168.0.11";
pub const CLIENT_IP: &str = "192.168.0.100";
pub const NODE_IP6: &str = "fd00:192::10";
pub const NODE2_IP6: &str = "fd00:192::11";
pub const CLIENT_IP6: &str = "fd00:192::100";
pub const LAN_CIDR: &str = "192.168.0.0/24";
pub const LAN_CIDR6: &str = "fd00:192::/64";
pub const POD_CIDR: &str = "10.244.0.0/24";
pub const POD2_CIDR: &str = "10.244.1.0/24";
pub const POD_CIDR6: &str = "fd00:244::/64";
pub const POD2_CIDR6: &str = "fd00:244:1::/64";
pub const POD_GW: &str = "10.244.0.1";
pub const POD2_GW: &str = "10.244.1.1";
/// Node-side link-local address of every pod veth (IPv6 default gateway).
pub const POD_GW6: &str = "fe80::1";
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
pub const SERVICE_CIDR6: &str = "fd00:96::/112";
pub const LB_CIDR: &str = "203.0.113.0/24";
pub const LB_CIDR6: &str = "fd00:203::/64";

/// Which node a pod lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeId {
    Node,
    Node2,
}

/// A pod: its own namespace with `eth0` veth to its node.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub node: NodeId,
    pub ip: Ipv4Addr,
    pub ip6: Option<Ipv6Addr>,
    /// Name of the node-side veth (in the node namespace).
    pub host_veth: String,
    pub ns: Netns,
}

/// The whole topology. Dropping it destroys every namespace it created
/// (servers stopped and joined first), also during panic unwinding.
pub struct Cluster {
    id: String,
    // Field order = drop order (pods first); Drop also destroys explicitly.
    pods: Vec<Pod>,
    client: Netns,
    node2: Netns,
    node: Netns,
    lan: Netns,
    next_veth: u32,
}

impl Cluster {
    /// Builds lan + node + node2 + client. Panics on failure (namespaces
    /// already created are cleaned up).
    pub fn new() -> Cluster {
        Cluster::try_new().unwrap_or_else(|e| panic!("building test cluster: {e}"))
    }

    pub fn try_new() -> io::Result<Cluster> {
        let id = random_id();
        let mk = |role: &str| Netns::create(&format!("kntp-{id}-{role}"), role);
        let lan = mk("lan")?;
        let node = mk("node")?;
        let node2 = mk("node2")?;
        let client = mk("client")?;

        let node_sysctls = [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv6.conf.default.forwarding", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ];
        node.sysctls(&node_sysctls)?;
        node2.sysctls(&node_sysctls)?;

        let mut lan_cmds = vec![
            "link add br0 type bridge mcast_snooping 0 forward_delay 0 stp_state 0".to_string(),
            "link set br0 up".to_string(),
        ];
        for host in [&node, &node2, &client] {
            let port = format!("ln-{}", host.role());
            lan_cmds.push(format!(
                "link add {port} type veth peer name eth0 netns {}",
                host.name()
            ));
            lan_cmds.push(format!("link set {port} master br0 up"));
        }
        lan.ip_batch(&lan_cmds)?;

        let node_cmds = |me4: &str, me6: &str, peer4: &str, peer6: &str, c4: &str, c6: &str| {
            vec![
                "link set eth0 up".to_string(),
                format!("addr add {me4}/24 dev eth0"),
                format!("addr add {me6}/64 dev eth0 nodad"),
                format!("route add {c4} via {peer4} dev eth0"),
                format!("route add {c6} via {peer6} dev eth0"),
                format!("route add {SERVICE_CIDR} dev eth0"),
                format!("route add {LB_CIDR} dev eth0"),
                format!("route add {SERVICE_CIDR6} dev eth0"),
                format!("route add {LB_CIDR6} dev eth0"),
            ]
        };
        node.ip_batch(&node_cmds(
            NODE_IP, NODE_IP6, NODE2_IP, NODE2_IP6, POD2_CIDR, POD2_CIDR6,
        ))?;
        node2.ip_batch(&node_cmds(
            NODE2_IP, NODE2_IP6, NODE_IP, NODE_IP6, POD_CIDR, POD_CIDR6,
        ))?;
        client.ip_batch(&[
            "link set eth0 up".to_string(),
            format!("addr add {CLIENT_IP}/24 dev eth0"),
            format!("addr add {CLIENT_IP6}/64 dev eth0 nodad"),
            format!("route add {SERVICE_CIDR} via {NODE_IP} dev eth0"),
            format!("route add {LB_CIDR} via {NODE_IP} dev eth0"),
            format!("route add {SERVICE_CIDR6} via {NODE_IP6} dev eth0"),
            format!("route add {LB_CIDR6} via {NODE_IP6} dev eth0"),
        ])?;

        Ok(Cluster {
            id,
            pods: Vec::new(),
            client,
            node2,
            node,
            lan,
            next_veth: 0,
        })
    }

    /// Random id shared by all namespace names of this cluster.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The node under test (192.168.0.10); run kube-nftproxy / nft here.
    pub fn node(&self) -> &Netns {
        &self.node
    }
    /// The second node (192.168.0.11).
    pub fn node2(&self) -> &Netns {
        &self.node2
    }
    pub fn node_ns(&self, n: NodeId) -> &Netns {
        match n {
            NodeId::Node => &self.node,
            NodeId::Node2 => &self.node2,
        }
    }
    /// External client on the LAN (192.168.0.100).
    pub fn client(&self) -> &Netns {
        &self.client
    }
    /// The L2-only namespace holding the LAN bridge.
    pub fn lan(&self) -> &Netns {
        &self.lan
    }
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }
    /// Pod by name; panics if unknown.
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name:?}"))
    }

    /// Names of every namespace this cluster created.
    pub fn namespace_names(&self) -> Vec<String> {
        let mut v: Vec<String> = [&self.lan, &self.node, &self.node2, &self.client]
            .iter()
            .map(|n| n.name().to_string())
            .collect();
        v.extend(self.pods.iter().map(|p| p.ns.name().to_string()));
        v
    }

    /// IPv4-only pod on `node`. Returns its namespace handle.
    pub fn add_pod(&mut self, name: &str, ip: impl ToIp) -> Netns {
        self.add_pod_on(NodeId::Node, name, ip, None::<IpAddr>)
    }

    /// Dual-stack pod on `node`.
    pub fn add_pod_dual(&mut self, name: &str, ip: impl ToIp, ip6: impl ToIp) -> Netns {
        self.add_pod_on(NodeId::Node, name, ip, Some(ip6))
    }

    /// IPv4-only pod on `node2`.
    pub fn add_pod2(&mut self, name: &str, ip: impl ToIp) -> Netns {
        self.add_pod_on(NodeId::Node2, name, ip, None::<IpAddr>)
    }

    /// Pod on the given node, optional IPv6 address. Panics on failure.
    pub fn add_pod_on<I6: ToIp>(
        &mut self,
        node: NodeId,
        name: &str,
        ip: impl ToIp,
        ip6: Option<I6>,
    ) -> Netns {
        let IpAddr::V4(ip) = ip.to_ip() else {
            panic!("pod {name}: primary IP must be IPv4")
        };
        let ip6 = ip6.map(|a| match a.to_ip() {
            IpAddr::V6(a) => a,
            IpAddr::V4(_) => panic!("pod {name}: ip6 must be IPv6"),
        });
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                && !name.contains(char::is_whitespace),
            "pod name must be [A-Za-z0-9_-]+: {name:?}"
        );
        assert!(
            self.pods.iter().all(|p| p.name != name),
            "duplicate pod {name}"
        );
        let ns = Netns::create(&format!("kntp-{}-pod-{name}", self.id), name)
            .unwrap_or_else(|e| panic!("creating pod {name}: {e}"));
        let veth = format!("vp{}", self.next_veth);
        self.next_veth += 1;
        let gw = match node {
            NodeId::Node => POD_GW,
            NodeId::Node2 => POD2_GW,
        };
        // Register before configuring so a failure still cleans it up.
        self.pods.push(Pod {
            name: name.to_string(),
            node,
            ip,
            ip6,
            host_veth: veth.clone(),
            ns: ns.clone(),
        });

        let mut host = vec![
            format!(
                "link add {veth} type veth peer name eth0 netns {}",
                ns.name()
            ),
            format!("link set {veth} up"),
            format!("addr add {gw}/32 dev {veth}"),
            format!("addr add {POD_GW6}/64 dev {veth} nodad"),
            format!("route add {ip}/32 dev {veth}"),
        ];
        let mut pod = vec![
            "link set eth0 up".to_string(),
            format!("addr add {ip}/32 dev eth0"),
            format!("route add {gw}/32 dev eth0"),
            format!("route add default via {gw} dev eth0"),
        ];
        if let Some(ip6) = ip6 {
            host.push(format!("route add {ip6}/128 dev {veth}"));
            pod.push(format!("addr add {ip6}/128 dev eth0 nodad"));
            pod.push(format!("route add ::/0 via {POD_GW6} dev eth0"));
        }
        self.node_ns(node)
            .ip_batch(&host)
            .and_then(|_| ns.ip_batch(&pod))
            .unwrap_or_else(|e| panic!("wiring pod {name}: {e}"));
        ns
    }

    /// Adds an extra source address to the client (e.g. 198.51.100.7 for
    /// loadBalancerSourceRanges tests) and routes it back to the client from
    /// node and node2. Use with `client().tcp_request_from(sa(ip, 0), ...)`.
    pub fn add_client_address(&self, ip: impl ToIp) {
        let ip = ip.to_ip();
        let (addr, via) = match ip {
            IpAddr::V4(_) => (format!("addr add {ip}/32 dev eth0"), CLIENT_IP),
            IpAddr::V6(_) => (format!("addr add {ip}/128 dev eth0 nodad"), CLIENT_IP6),
        };
        self.client
            .ip_batch(&[addr])
            .unwrap_or_else(|e| panic!("client address {ip}: {e}"));
        for n in [&self.node, &self.node2] {
            n.ip_batch(&[format!("route add {ip} via {via} dev eth0")])
                .unwrap_or_else(|e| panic!("route to client address {ip}: {e}"));
        }
    }

    /// Destroys everything now (same as dropping).
    pub fn destroy(&self) {
        for p in &self.pods {
            p.ns.destroy();
        }
        for n in [&self.client, &self.node2, &self.node, &self.lan] {
            n.destroy();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.destroy();
    }
}
