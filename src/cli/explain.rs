//! `explain NAMESPACE/SERVICE`: every VIP and port of a Service, which endpoints this node
//! uses and why each other one is not used, the notes about it, and the map elements,
//! chains and rules that implement it.

use std::fmt::Write as _;

use anyhow::{bail, Result};

use super::config::RenderArgs;
use super::trace::{self, sock, Owners};
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

fn endpoint_lines(out: &mut String, m: &Model, sp: &ServicePort) {
    let _ = writeln!(out, "  endpoints:");
    if sp.endpoints.is_empty() {
        let _ = writeln!(out, "    (none)");
    }
    for e in &sp.endpoints {
        let f = Family::of(&e.ip);
        let state = if e.ready {
            "ready"
        } else if e.terminating {
            "terminating"
        } else {
            "not ready"
        };
        let mut line = format!(
            "    {:<22} {}{}",
            sock(e.ip, e.port),
            state,
            if e.local { ", on this node" } else { "" }
        );
        if !m.families.contains(&f) {
            let _ = write!(
                line,
                ": not used: wrong family (this node proxies {})",
                (m.families.iter().map(|f| f.k8s_name()))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let _ = writeln!(out, "{line}");
            continue;
        }
        let c = categorize(sp, f, m.node_zone.as_deref());
        let in_cluster = c.cluster.iter().any(|x| std::ptr::eq(*x, e));
        let in_local = c.local.iter().any(|x| std::ptr::eq(*x, e));
        let uses_cluster = !sp.internal_policy_local || sp.externally_accessible();
        let uses_local =
            sp.internal_policy_local || (sp.external_policy_local && sp.externally_accessible());
        let mut parts = Vec::new();
        if uses_cluster {
            parts.push(if in_cluster {
                "used for cluster traffic".to_string()
            } else {
                format!(
                    "not used for cluster traffic: {}",
                    why_not(e, &c.cluster, false)
                )
            });
        }
        if uses_local {
            let what = if sp.internal_policy_local {
                "local traffic"
            } else {
                "external traffic (Local)"
            };
            parts.push(if in_local {
                format!("used for {what}")
            } else {
                format!("not used for {what}: {}", why_not(e, &c.local, true))
            });
        }
        let _ = writeln!(out, "{line}: {}", parts.join("; "));
    }
}

fn port_lines(out: &mut String, m: &Model, sp: &ServicePort) {
    let proto = sp.protocol.name();
    let _ = writeln!(out, "port {} ({proto} {}):", sp.port_name, sp.port);
    for ip in &sp.cluster_ips {
        let _ = writeln!(out, "  ClusterIP        {}", sock(*ip, sp.port));
    }
    if let Some(np) = sp.node_port {
        for f in &m.families {
            let on = match model::nodeport_ips(m, *f) {
                NodePortIps::List(ips) if ips.is_empty() => "no address of this node".into(),
                NodePortIps::List(ips) => (ips.iter().map(|i| i.to_string()))
                    .collect::<Vec<_>>()
                    .join(", "),
                NodePortIps::AllLocal => "every local address (loopback excluded)".into(),
            };
            let _ = writeln!(
                out,
                "  NodePort         {proto} {np} on {on} ({})",
                f.k8s_name()
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
        if sp.internal_policy_local {
            "Local"
        } else {
            "Cluster"
        },
        if sp.external_policy_local {
            "Local"
        } else {
            "Cluster"
        },
        sp.affinity_timeout
            .map(|t| format!(", ClientIP session affinity ({t}s)"))
            .unwrap_or_default()
    );
}

fn implementation(out: &mut String, rs: &Ruleset, owners: &Owners, sp: &ServicePort) {
    let id = format!("{}/{}:{}", sp.namespace, sp.name, sp.port_name);
    let base = names::base(sp);
    let chains = [
        names::service_chain(&base),
        names::local_chain(&base),
        names::external_chain(&base),
        names::firewall_chain(&base),
    ];
    let _ = writeln!(out, "  implemented by:");
    let mut any = false;
    for t in &rs.tables {
        let fam = text::family_name(t.family);
        for s in &t.sets {
            for (key, data) in &s.elements {
                if owners.services_of_key(key).contains(&id) {
                    let e = Element {
                        key: key.clone(),
                        data: data.clone(),
                    };
                    let _ = writeln!(out, "    {fam} @{}: {}", s.name, text::element_text(&e));
                    any = true;
                }
            }
        }
        for c in t.chains.iter().filter(|c| chains.contains(&c.name)) {
            let _ = writeln!(out, "    {fam} chain {}:", c.name);
            for r in &c.rules {
                let _ = writeln!(out, "      {}", text::rule_text(t.family, r));
            }
            any = true;
        }
    }
    if !any {
        let _ = writeln!(out, "    nothing");
    }
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
    let owners = Owners::new(m);
    for sp in ports {
        out.push('\n');
        port_lines(&mut out, m, sp);
        endpoint_lines(&mut out, m, sp);
        implementation(&mut out, &rs, &owners, sp);
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
