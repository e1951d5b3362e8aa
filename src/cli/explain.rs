//! `explain NAMESPACE/SERVICE`: every VIP and port of a Service, which endpoints this node
//! uses and why each other one is not used, the notes about it, and the map elements,
//! chains and rules that implement it.

use std::fmt::Write as _;

use std::net::IpAddr;

use anyhow::{bail, Result};
use serde_json::{json, Value as Json};

use super::config::RenderArgs;
use super::trace::{self, sock, OutputArg, Owners};
use crate::model::{self, categorize, Endpoint, Model, NodePortIps, ServicePort};
use crate::nft::text;
use crate::ruleset::ir::{Element, Family, Ruleset};
use crate::ruleset::names;

#[derive(clap::Args, Debug, Clone)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub args: RenderArgs,
    /// The Service, as NAMESPACE/NAME.
    pub service: String,
    /// Show the rules of this node's kernel (read over netlink) instead of the rendered
    /// ones; FILEs still give the Service and its endpoints.
    #[arg(long)]
    pub live: bool,
    /// `json`: the same as one JSON document (schema in docs/trace.md).
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputArg,
    #[arg(required = true)]
    pub files: Vec<String>,
}

/// Why `e` is not among the endpoints `used` for one kind of traffic.
fn why_not(e: &Endpoint, used: &[&Endpoint], local_only: bool) -> String {
    if local_only && !e.local {
        return "on another node (traffic policy Local)".into();
    }
    if !(e.ready || (e.serving && e.terminating)) {
        return "not ready".into();
    }
    if !e.ready && used.iter().any(|u| u.ready) {
        return "terminating while ready endpoints exist".into();
    }
    if e.ready && e.zone_hints.is_some() {
        return "topology hints name another zone".into();
    }
    "not selected".into()
}

/// How one endpoint serves one kind of traffic.
struct Usage {
    /// `cluster`, `local` or `external-local` (JSON), with the text's wording.
    traffic: &'static str,
    text: &'static str,
    used: bool,
    why_not: Option<String>,
}

struct EndpointReport {
    addr: IpAddr,
    port: u16,
    state: &'static str,
    local: bool,
    /// Set when this node does not proxy the endpoint's family at all.
    wrong_family: Option<String>,
    usage: Vec<Usage>,
}

fn endpoints(m: &Model, sp: &ServicePort) -> Vec<EndpointReport> {
    let mut out = Vec::new();
    for e in &sp.endpoints {
        let f = Family::of(&e.ip);
        let state = if e.ready {
            "ready"
        } else if e.terminating {
            "terminating"
        } else {
            "not ready"
        };
        let mut r = EndpointReport {
            addr: e.ip,
            port: e.port,
            state,
            local: e.local,
            wrong_family: None,
            usage: Vec::new(),
        };
        if !m.families.contains(&f) {
            r.wrong_family = Some(format!(
                "wrong family (this node proxies {})",
                (m.families.iter().map(|f| f.k8s_name()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            out.push(r);
            continue;
        }
        let c = categorize(sp, f, m.node_zone.as_deref());
        let in_cluster = c.cluster.iter().any(|x| std::ptr::eq(*x, e));
        let in_local = c.local.iter().any(|x| std::ptr::eq(*x, e));
        let uses_cluster = !sp.internal_policy_local || sp.externally_accessible();
        let uses_local =
            sp.internal_policy_local || (sp.external_policy_local && sp.externally_accessible());
        if uses_cluster {
            r.usage.push(Usage {
                traffic: "cluster",
                text: "cluster traffic",
                used: in_cluster,
                why_not: (!in_cluster).then(|| why_not(e, &c.cluster, false)),
            });
        }
        if uses_local {
            let (traffic, text) = if sp.internal_policy_local {
                ("local", "local traffic")
            } else {
                ("external-local", "external traffic (Local)")
            };
            r.usage.push(Usage {
                traffic,
                text,
                used: in_local,
                why_not: (!in_local).then(|| why_not(e, &c.local, true)),
            });
        }
        out.push(r);
    }
    out
}

fn endpoint_lines(out: &mut String, eps: &[EndpointReport]) {
    let _ = writeln!(out, "  endpoints:");
    if eps.is_empty() {
        let _ = writeln!(out, "    (none)");
    }
    for e in eps {
        let line = format!(
            "    {:<22} {}{}",
            sock(e.addr, e.port),
            e.state,
            if e.local { ", on this node" } else { "" }
        );
        if let Some(w) = &e.wrong_family {
            let _ = writeln!(out, "{line}: not used: {w}");
            continue;
        }
        let parts: Vec<String> = (e.usage.iter())
            .map(|u| match &u.why_not {
                None => format!("used for {}", u.text),
                Some(w) => format!("not used for {}: {w}", u.text),
            })
            .collect();
        let _ = writeln!(out, "{line}: {}", parts.join("; "));
    }
}

/// The addresses a NodePort is served on, for one family.
enum NodePortOn {
    None,
    List(Vec<IpAddr>),
    AllLocal,
}

struct NodePortReport {
    family: Family,
    on: NodePortOn,
}

fn node_ports(m: &Model, sp: &ServicePort) -> Vec<NodePortReport> {
    if sp.node_port.is_none() {
        return Vec::new();
    }
    (m.families.iter())
        .map(|f| NodePortReport {
            family: *f,
            on: match model::nodeport_ips(m, *f) {
                NodePortIps::List(ips) if ips.is_empty() => NodePortOn::None,
                NodePortIps::List(ips) => NodePortOn::List(ips.to_vec()),
                NodePortIps::AllLocal => NodePortOn::AllLocal,
            },
        })
        .collect()
}

fn policy(local: bool) -> &'static str {
    if local {
        "Local"
    } else {
        "Cluster"
    }
}

fn port_lines(out: &mut String, sp: &ServicePort, nps: &[NodePortReport]) {
    let proto = sp.protocol.name();
    let _ = writeln!(out, "port {} ({proto} {}):", sp.port_name, sp.port);
    for ip in &sp.cluster_ips {
        let _ = writeln!(out, "  ClusterIP        {}", sock(*ip, sp.port));
    }
    if let Some(np) = sp.node_port {
        for n in nps {
            let on = match &n.on {
                NodePortOn::None => "no address of this node".into(),
                NodePortOn::List(ips) => (ips.iter().map(|i| i.to_string()))
                    .collect::<Vec<_>>()
                    .join(", "),
                NodePortOn::AllLocal => "every local address (loopback excluded)".into(),
            };
            let _ = writeln!(
                out,
                "  NodePort         {proto} {np} on {on} ({})",
                n.family.k8s_name()
            );
        }
    }
    for ip in &sp.external_ips {
        let _ = writeln!(out, "  external IP      {}", sock(*ip, sp.port));
    }
    for ip in &sp.load_balancer_ips {
        let _ = writeln!(out, "  load-balancer IP {}", sock(*ip, sp.port));
    }
    if !sp.load_balancer_source_ranges.is_empty() {
        let r: Vec<String> = (sp.load_balancer_source_ranges.iter())
            .map(|r| r.to_string())
            .collect();
        let _ = writeln!(out, "  source ranges    {}", r.join(", "));
    }
    if let Some(h) = sp.health_check_node_port {
        let _ = writeln!(out, "  health check     node port {h}");
    }
    let _ = writeln!(
        out,
        "  policies         internal {}, external {}{}",
        policy(sp.internal_policy_local),
        policy(sp.external_policy_local),
        sp.affinity_timeout
            .map(|t| format!(", ClientIP session affinity ({t}s)"))
            .unwrap_or_default()
    );
}

/// A map element or a chain that implements a Service port.
enum Part {
    Element {
        family: Family,
        set: String,
        element: Element,
    },
    Chain {
        family: Family,
        name: String,
        rules: Vec<String>,
    },
}

fn implementation(rs: &Ruleset, owners: &Owners, sp: &ServicePort) -> Vec<Part> {
    let id = format!("{}/{}:{}", sp.namespace, sp.name, sp.port_name);
    let base = names::base(sp);
    let chains = [
        names::service_chain(&base),
        names::local_chain(&base),
        names::external_chain(&base),
        names::firewall_chain(&base),
    ];
    let mut out = Vec::new();
    for t in &rs.tables {
        for s in &t.sets {
            for (key, data) in &s.elements {
                if owners.services_of_key(key).contains(&id) {
                    out.push(Part::Element {
                        family: t.family,
                        set: s.name.clone(),
                        element: Element {
                            key: key.clone(),
                            data: data.clone(),
                        },
                    });
                }
            }
        }
        for c in t.chains.iter().filter(|c| chains.contains(&c.name)) {
            out.push(Part::Chain {
                family: t.family,
                name: c.name.clone(),
                rules: (c.rules.iter())
                    .map(|r| text::rule_text(t.family, r))
                    .collect(),
            });
        }
    }
    out
}

fn implementation_lines(out: &mut String, parts: &[Part]) {
    let _ = writeln!(out, "  implemented by:");
    for p in parts {
        match p {
            Part::Element {
                family,
                set,
                element,
            } => {
                let fam = text::family_name(*family);
                let _ = writeln!(out, "    {fam} @{set}: {}", text::element_text(element));
            }
            Part::Chain {
                family,
                name,
                rules,
            } => {
                let _ = writeln!(out, "    {} chain {name}:", text::family_name(*family));
                for r in rules {
                    let _ = writeln!(out, "      {r}");
                }
            }
        }
    }
    if parts.is_empty() {
        let _ = writeln!(out, "    nothing");
    }
}

fn port_json(
    sp: &ServicePort,
    nps: &[NodePortReport],
    eps: &[EndpointReport],
    parts: &[Part],
) -> Json {
    let addrs = |v: &[IpAddr]| -> Vec<String> { v.iter().map(|a| a.to_string()).collect() };
    let node_port = sp.node_port.map(|np| {
        json!({
            "port": np,
            "on": nps.iter().map(|n| json!({
                "family": n.family.k8s_name(),
                "addresses": match &n.on {
                    NodePortOn::List(ips) => json!(addrs(ips)),
                    NodePortOn::None => json!([]),
                    NodePortOn::AllLocal => Json::Null,
                },
                "every_local_address": matches!(n.on, NodePortOn::AllLocal),
            })).collect::<Vec<_>>(),
        })
    });
    json!({
        "name": sp.port_name,
        "proto": sp.protocol.name(),
        "port": sp.port,
        "cluster_ips": addrs(&sp.cluster_ips),
        "node_port": node_port,
        "external_ips": addrs(&sp.external_ips),
        "load_balancer_ips": addrs(&sp.load_balancer_ips),
        "load_balancer_source_ranges": (sp.load_balancer_source_ranges.iter())
            .map(|r| r.to_string())
            .collect::<Vec<_>>(),
        "health_check_node_port": sp.health_check_node_port,
        "internal_traffic_policy": policy(sp.internal_policy_local),
        "external_traffic_policy": policy(sp.external_policy_local),
        "session_affinity_timeout": sp.affinity_timeout,
        "endpoints": eps.iter().map(|e| json!({
            "addr": e.addr.to_string(),
            "port": e.port,
            "state": e.state,
            "local": e.local,
            "not_proxied": e.wrong_family,
            "usage": e.usage.iter().map(|u| json!({
                "traffic": u.traffic,
                "used": u.used,
                "why_not": u.why_not,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "implemented_by": parts.iter().map(|p| match p {
            Part::Element { family, set, element } => json!({
                "kind": "element",
                "family": text::family_name(*family),
                "set": set,
                "element": text::element_text(element),
            }),
            Part::Chain { family, name, rules } => json!({
                "kind": "chain",
                "family": text::family_name(*family),
                "chain": name,
                "rules": rules,
            }),
        }).collect::<Vec<_>>(),
    })
}

pub fn run(a: &ExplainArgs) -> Result<String> {
    let Some((ns, name)) = a.service.split_once('/') else {
        bail!("give the Service as NAMESPACE/NAME");
    };
    let loaded = trace::load(&a.args, &a.files)?;
    let m = &loaded.model;
    let rs = if a.live {
        trace::live_ruleset()?
    } else {
        loaded.ruleset.clone()
    };
    let ports: Vec<&ServicePort> = (m.services.iter())
        .filter(|s| s.namespace == ns && s.name == name)
        .collect();
    let notes: Vec<String> = (loaded.notes.iter())
        .filter(|n| n.object.contains(&format!("{ns}/{name}")))
        .map(|n| n.to_string())
        .collect();
    if ports.is_empty() && notes.is_empty() {
        bail!("no Service {ns}/{name} in the input");
    }
    let owners = Owners::new(m);
    let reports: Vec<_> = (ports.iter())
        .map(|sp| {
            (
                *sp,
                node_ports(m, sp),
                endpoints(m, sp),
                implementation(&rs, &owners, sp),
            )
        })
        .collect();
    if a.output == OutputArg::Json {
        let j = json!({
            "schema": "kube-nftproxy.explain/v1",
            "source": if a.live { "live" } else { "files" },
            "service": {"namespace": ns, "name": name},
            "node": {"name": m.node_name, "zone": m.node_zone},
            "ports": reports.iter().map(|(sp, nps, eps, parts)| port_json(sp, nps, eps, parts))
                .collect::<Vec<_>>(),
            "notes": notes,
        });
        return Ok(serde_json::to_string_pretty(&j)? + "\n");
    }
    let mut out = format!(
        "Service {ns}/{name} as node {}{} sees it{}\n",
        m.node_name,
        m.node_zone
            .as_deref()
            .map(|z| format!(" (zone {z})"))
            .unwrap_or_default(),
        if a.live {
            " (rules: this node's kernel)"
        } else {
            ""
        }
    );
    if ports.is_empty() {
        out.push_str("no port of it is proxied\n");
    }
    for (sp, nps, eps, parts) in &reports {
        out.push('\n');
        port_lines(&mut out, sp, nps);
        endpoint_lines(&mut out, eps);
        implementation_lines(&mut out, parts);
    }
    out.push_str("\nnotes:\n");
    if notes.is_empty() {
        out.push_str("  none\n");
    }
    for n in notes {
        let _ = writeln!(out, "  {n}");
    }
    Ok(out)
}
