//! `trace`: one new connection through the ruleset, as text or JSON (schema in
//! docs/trace.md). The evaluation is `ruleset::eval`; this module loads the IR (from
//! files, or `--live` from this node's kernel), names what the rules belong to, and
//! prints.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value as Json};

use super::config::RenderArgs;
use crate::model::Model;
use crate::nft::text;
use crate::ruleset::eval::{self, Fate, Origin, Packet, Path, Query, RuleRef, Step, Trace, Via};
use crate::ruleset::ir::{ElementData, Family, Hook, Proto, Ruleset, Value};
use crate::ruleset::names;

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtoArg {
    Tcp,
    Udp,
    Sctp,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FromArg {
    Pod,
    Node,
    External,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputArg {
    Text,
    Json,
}

#[derive(clap::Args, Debug, Clone)]
pub struct TraceArgs {
    #[command(flatten)]
    pub args: RenderArgs,
    /// Source address of the connection.
    #[arg(long)]
    pub src: IpAddr,
    #[arg(long, default_value_t = 40000)]
    pub src_port: u16,
    /// Destination address (a ClusterIP, node IP, external or load-balancer IP...).
    #[arg(long)]
    pub dst: IpAddr,
    /// Destination port.
    #[arg(long)]
    pub port: u16,
    #[arg(long, value_enum, default_value = "tcp")]
    pub proto: ProtoArg,
    /// Where the packet comes from. Default: `node` when --src is one of the node's
    /// addresses, `pod` when it is inside --cluster-cidr, else `external`.
    #[arg(long, value_enum)]
    pub from: Option<FromArg>,
    /// The interface the packet arrives on: what `detectLocalMode` InterfaceNamePrefix and
    /// BridgeInterface rules (`iifname`) match; needed for those modes unless --from node.
    #[arg(long)]
    pub in_interface: Option<String>,
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputArg,
    /// Trace the tables of this node's kernel (read over netlink) instead of rendering
    /// FILEs; FILEs, when given, only name what the rules belong to.
    #[arg(long)]
    pub live: bool,
    pub files: Vec<String>,
}

pub use super::render::{load, Loaded};

/// Our tables as this node's kernel holds them, read over netlink as IR (no `nft` binary
/// needed; reading needs CAP_NET_ADMIN in the node's network namespace).
pub fn live_ruleset() -> Result<Ruleset> {
    let rs = crate::nft::netlink::read_ruleset()
        .context("reading this node's kube-nftproxy tables over netlink")?;
    if rs.tables.is_empty() {
        bail!("this node has no kube-nftproxy table");
    }
    Ok(rs)
}

/// What elements, chains and endpoints belong to, from the model.
pub struct Owners {
    vips: BTreeMap<(IpAddr, Proto, u16), Vec<String>>,
    nodeports: BTreeMap<(Proto, u16), Vec<String>>,
    endpoints: BTreeMap<(IpAddr, u16), Vec<(Proto, String)>>,
    /// Only endpoints of this protocol (a trace knows its packet's).
    pub proto: Option<Proto>,
    chains: BTreeMap<String, String>,
}

impl Owners {
    pub fn new(m: &Model) -> Owners {
        let mut o = Owners {
            vips: BTreeMap::new(),
            nodeports: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            proto: None,
            chains: BTreeMap::new(),
        };
        for sp in &m.services {
            let id = format!("{}/{}:{}", sp.namespace, sp.name, sp.port_name);
            let mut vip = |a: &IpAddr, kind: &str| {
                (o.vips.entry((*a, sp.protocol, sp.port)).or_default()).push(format!("{id} {kind}"))
            };
            sp.cluster_ips.iter().for_each(|a| vip(a, "ClusterIP"));
            sp.external_ips.iter().for_each(|a| vip(a, "external IP"));
            (sp.load_balancer_ips.iter()).for_each(|a| vip(a, "load-balancer IP"));
            if let Some(np) = sp.node_port {
                (o.nodeports.entry((sp.protocol, np)).or_default()).push(format!("{id} NodePort"));
            }
            for e in &sp.endpoints {
                let mut s = format!("endpoint of {id}");
                if e.local {
                    s.push_str(" on this node");
                }
                if !e.ready {
                    s.push_str(if e.terminating {
                        ", terminating"
                    } else {
                        ", not ready"
                    });
                }
                (o.endpoints.entry((e.ip, e.port)).or_default()).push((sp.protocol, s));
            }
            let base = names::base(sp);
            for c in [
                names::service_chain(&base),
                names::local_chain(&base),
                names::external_chain(&base),
                names::firewall_chain(&base),
            ] {
                o.chains.insert(c, id.clone());
            }
        }
        o
    }

    /// The owner of a key (`addr . proto . port ...` or `proto . port ...`).
    pub fn of_key(&self, key: &[Value]) -> Vec<String> {
        for w in key.windows(3) {
            if let [Value::Addr(a), Value::Proto(p), Value::Port(n)] = w {
                if let Some(v) = self.vips.get(&(*a, *p, *n)) {
                    return v.clone();
                }
            }
        }
        for w in key.windows(2) {
            if let [Value::Proto(p), Value::Port(n)] = w {
                if let Some(v) = self.nodeports.get(&(*p, *n)) {
                    return v.clone();
                }
            }
        }
        Vec::new()
    }

    /// The Service ports (`ns/name:port`) a key belongs to: as a Service IP or NodePort,
    /// else as an endpoint (an address and a port anywhere in the key, e.g. hairpin).
    pub fn services_of_key(&self, key: &[Value]) -> Vec<String> {
        let first_word = |s: &String| s.split(' ').next().unwrap_or(s).to_string();
        let direct: Vec<String> = self.of_key(key).iter().map(first_word).collect();
        if !direct.is_empty() {
            return direct;
        }
        let mut out = Vec::new();
        for a in key.iter().filter_map(|v| match v {
            Value::Addr(a) => Some(*a),
            _ => None,
        }) {
            for p in key.iter().filter_map(|v| match v {
                Value::Port(p) => Some(*p),
                _ => None,
            }) {
                for o in self.of_endpoint(a, p) {
                    let id = o.trim_start_matches("endpoint of ");
                    let id = first_word(&id.split(',').next().unwrap_or(id).to_string());
                    if !out.contains(&id) {
                        out.push(id);
                    }
                }
            }
        }
        out
    }

    pub fn of_endpoint(&self, a: IpAddr, port: u16) -> Vec<String> {
        (self.endpoints.get(&(a, port)).into_iter().flatten())
            .filter(|(p, _)| self.proto.is_none_or(|x| x == *p))
            .map(|(_, s)| s.clone())
            .collect()
    }

    pub fn of_chain(&self, c: &str) -> Option<&String> {
        self.chains.get(c)
    }
}

fn hook_name(h: Hook) -> &'static str {
    match h {
        Hook::Prerouting => "prerouting",
        Hook::Input => "input",
        Hook::Forward => "forward",
        Hook::Output => "output",
        Hook::Postrouting => "postrouting",
    }
}

fn pct(p: f64) -> String {
    format!("{:.1}%", p * 100.0)
}

fn rule_line(r: &RuleRef) -> String {
    text::rule_text(r.family, &r.rule)
}

fn data_text(d: &Option<ElementData>) -> String {
    match d {
        None => String::new(),
        Some(ElementData::Verdict(_)) | Some(ElementData::Values(_)) => {
            let e = crate::ruleset::ir::Element {
                key: vec![],
                data: d.clone(),
            };
            let t = text::element_text(&e);
            t.trim_start_matches([' ', ':']).to_string()
        }
    }
}

fn step_text(s: &Step, o: &Owners) -> Option<(usize, String)> {
    Some(match s {
        Step::Hook(h) => (0, format!("hook {}", hook_name(*h))),
        Step::Route { daddr, local } => (
            0,
            format!(
                "routing: {daddr} is {}",
                if *local {
                    "a local address: input"
                } else {
                    "not local: forward"
                }
            ),
        ),
        Step::Chain {
            family,
            table,
            chain,
            base,
            via,
        } => {
            let mut t = format!("chain {chain}");
            match (base, via) {
                (Some(b), _) => {
                    let _ = write!(
                        t,
                        " ({} {table}, {} priority {})",
                        text::family_name(*family),
                        match b.kind {
                            crate::ruleset::ir::ChainType::Filter => "filter",
                            crate::ruleset::ir::ChainType::Nat => "nat",
                        },
                        b.priority
                    );
                }
                (None, Via::Jump) => t.push_str(" (jump)"),
                (None, Via::Goto) => t.push_str(" (goto)"),
                (None, Via::Hook) => {}
            }
            if let Some(svc) = o.of_chain(chain) {
                let _ = write!(t, "  [{svc}]");
            }
            (1, t)
        }
        Step::NatSkipped { chain } => (
            1,
            format!("chain {chain} skipped: the connection already has its NAT binding"),
        ),
        Step::Rule(r) => (2, format!("rule {}: {}", r.index + 1, rule_line(r))),
        Step::Element { set, key, data } => {
            let mut t = format!(
                "element {} : {} of @{set}",
                crate::ruleset::ir::concat_text(key),
                data_text(data)
            );
            let owners = o.of_key(key);
            if !owners.is_empty() {
                let _ = write!(t, "  [{}]", owners.join("; "));
            }
            (3, t)
        }
        Step::Miss { set, key } => (
            3,
            format!(
                "no element {} in @{set}: next rule",
                crate::ruleset::ir::concat_text(key)
            ),
        ),
        Step::Choice { .. } => return None,
        Step::NoMatch => (3, "does not match: next rule".into()),
        Step::Mark(m) => (3, format!("mark is now {m:#010x}")),
        Step::Remember { map, key, data } if data.is_empty() => (
            3,
            format!(
                "remembers {} in @{map}",
                crate::ruleset::ir::concat_text(key)
            ),
        ),
        Step::Remember { map, key, data } => (
            3,
            format!(
                "remembers {} : {} in @{map}",
                crate::ruleset::ir::concat_text(key),
                crate::ruleset::ir::concat_text(data)
            ),
        ),
        Step::Dnat { addr, port } => {
            let mut t = format!("DNAT to {}", sock(*addr, *port));
            let owners = o.of_endpoint(*addr, *port);
            if !owners.is_empty() {
                let _ = write!(t, "  [{}]", owners.join("; "));
            }
            (3, t)
        }
        Step::Masquerade => (3, "masquerade (source NAT to the outgoing address)".into()),
        Step::Return { chain } => (2, format!("end of {chain}: return")),
        Step::Accept { chain } => (2, format!("{chain} ends: accept")),
    })
}

pub fn sock(a: IpAddr, p: u16) -> String {
    match a {
        IpAddr::V4(_) => format!("{a}:{p}"),
        IpAddr::V6(_) => format!("[{a}]:{p}"),
    }
}

/// The text view: the steps as a tree (a branch per random choice), then the outcomes.
pub fn text_report(q: &Query, t: &Trace, o: &Owners, in_if: Option<&str>) -> String {
    let p = &q.packet;
    let mut out = format!(
        "trace: {} {} -> {}, a new connection from {}{}\n",
        p.proto.name(),
        sock(p.saddr, p.sport),
        sock(p.daddr, p.dport),
        match q.origin {
            Origin::Pod => "a pod",
            Origin::Node => "this node",
            Origin::External => "outside the cluster",
        },
        in_if.map(|i| format!(" on {i}")).unwrap_or_default()
    );
    let refs: Vec<&Path> = t.paths.iter().collect();
    tree(&mut out, &refs, 0, 0, "", o);
    out.push_str("\noutcome:\n");
    for (oc, prob) in t.outcomes() {
        let _ = writeln!(out, "  {:>6}  {}", pct(prob), outcome_text(&oc, o));
    }
    out
}

fn outcome_text(oc: &eval::Outcome, o: &Owners) -> String {
    let by = |b: &Option<(String, usize)>| {
        b.as_ref()
            .map(|(c, i)| format!(" by rule {} of chain {c}", i + 1))
            .unwrap_or_default()
    };
    match &oc.fate {
        Fate::Rejected => format!("REJECT{}", by(&oc.by)),
        Fate::Dropped => format!("DROP{}", by(&oc.by)),
        Fate::Delivered { addr, port, local } => {
            let mut s = match oc.dnat {
                Some(_) => format!("DNAT to {}", sock(*addr, *port)),
                None => format!(
                    "untouched: no rule translated it; delivered to {}",
                    sock(*addr, *port)
                ),
            };
            let owners = o.of_endpoint(*addr, *port);
            if oc.dnat.is_some() && !owners.is_empty() {
                let _ = write!(s, " [{}]", owners.join("; "));
            }
            s.push_str(if *local {
                ", delivered on this node"
            } else {
                ", forwarded"
            });
            match &oc.masquerade {
                Some(_) => {
                    let _ = write!(s, ", masqueraded{}", by(&oc.masquerade));
                }
                None => s.push_str(", not masqueraded (keeps its source)"),
            }
            s
        }
    }
}

/// Prints the steps the paths share from `from`, splitting at their first choice.
fn tree(out: &mut String, paths: &[&Path], from: usize, choice_no: usize, pre: &str, o: &Owners) {
    let first = paths[0];
    for (i, s) in first.steps.iter().enumerate().skip(from) {
        if let Step::Choice { what, options, .. } = s {
            let _ = writeln!(out, "{pre}      {what}:");
            let mut start = 0;
            while start < paths.len() {
                let c = paths[start].choices[choice_no];
                let end = (start..paths.len())
                    .find(|&j| paths[j].choices[choice_no] != c)
                    .unwrap_or(paths.len());
                let opt = &options[c];
                let _ = writeln!(out, "{pre}      - {} ({})", opt.label, pct(opt.probability));
                let inner = format!("{pre}      | ");
                tree(out, &paths[start..end], i + 1, choice_no + 1, &inner, o);
                start = end;
            }
            return;
        }
        if let Some((depth, t)) = step_text(s, o) {
            let _ = writeln!(out, "{pre}{}{t}", "  ".repeat(depth));
        }
    }
}

fn rule_json(
    family: Family,
    table: &str,
    chain: &str,
    index: usize,
    rule: Option<&RuleRef>,
) -> Json {
    json!({
        "family": text::family_name(family),
        "table": table,
        "chain": chain,
        "index": index,
        "text": rule.map(rule_line),
    })
}

fn step_json(s: &Step, o: &Owners) -> Json {
    match s {
        Step::Hook(h) => json!({"kind": "hook", "hook": hook_name(*h)}),
        Step::Route { daddr, local } => {
            json!({"kind": "route", "daddr": daddr.to_string(), "local": local})
        }
        Step::Chain {
            family,
            table,
            chain,
            base,
            via,
        } => json!({
            "kind": "chain",
            "family": text::family_name(*family),
            "table": table,
            "chain": chain,
            "via": match via { Via::Hook => "hook", Via::Jump => "jump", Via::Goto => "goto" },
            "base": base.map(|b| json!({
                "type": match b.kind { crate::ruleset::ir::ChainType::Filter => "filter", crate::ruleset::ir::ChainType::Nat => "nat" },
                "hook": hook_name(b.hook),
                "priority": b.priority,
            })),
            "service": o.of_chain(chain),
        }),
        Step::NatSkipped { chain } => json!({"kind": "nat-skipped", "chain": chain}),
        Step::Rule(r) => {
            let mut j = rule_json(r.family, &r.table, &r.chain, r.index, Some(r));
            j["kind"] = json!("rule");
            j
        }
        Step::Element { set, key, data } => json!({
            "kind": "element",
            "set": set,
            "key": crate::ruleset::ir::concat_text(key),
            "data": data_text(data),
            "services": o.of_key(key),
        }),
        Step::Miss { set, key } => json!({
            "kind": "miss", "set": set, "key": crate::ruleset::ir::concat_text(key),
        }),
        Step::Choice {
            what,
            options,
            chosen,
        } => json!({
            "kind": "choice",
            "what": what,
            "options": options.iter().map(|c| json!({"label": c.label, "probability": c.probability})).collect::<Vec<_>>(),
            "chosen": chosen,
        }),
        Step::Mark(m) => json!({"kind": "mark", "mark": m}),
        Step::Remember { map, key, data } => json!({
            "kind": "remember", "map": map,
            "key": crate::ruleset::ir::concat_text(key),
            "data": crate::ruleset::ir::concat_text(data),
        }),
        Step::Dnat { addr, port } => json!({
            "kind": "dnat", "addr": addr.to_string(), "port": port,
            "endpoint_of": o.of_endpoint(*addr, *port),
        }),
        Step::Masquerade => json!({"kind": "masquerade"}),
        Step::NoMatch => json!({"kind": "no-match"}),
        Step::Return { chain } => json!({"kind": "return", "chain": chain}),
        Step::Accept { chain } => json!({"kind": "accept", "chain": chain}),
    }
}

fn outcome_json(oc: &eval::Outcome, prob: f64, o: &Owners) -> Json {
    let at = |b: &Option<(String, usize)>| {
        b.as_ref()
            .map(|(c, i)| json!({"chain": c, "index": i}))
            .unwrap_or(Json::Null)
    };
    let (verdict, dest) = match &oc.fate {
        Fate::Rejected => ("reject", Json::Null),
        Fate::Dropped => ("drop", Json::Null),
        Fate::Delivered { addr, port, local } => (
            if oc.dnat.is_some() {
                "dnat"
            } else {
                "untouched"
            },
            json!({"addr": addr.to_string(), "port": port, "local": local,
                   "endpoint_of": if oc.dnat.is_some() { o.of_endpoint(*addr, *port) } else { vec![] }}),
        ),
    };
    json!({
        "probability": prob,
        "verdict": verdict,
        "destination": dest,
        "masquerade": oc.masquerade.is_some(),
        "masquerade_rule": at(&oc.masquerade),
        "rule": at(&oc.by),
    })
}

/// The JSON view (schema `kube-nftproxy.trace/v1`, docs/trace.md).
pub fn json_report(q: &Query, t: &Trace, o: &Owners, in_if: Option<&str>, live: bool) -> Json {
    let p = &q.packet;
    let outcomes = t.outcomes();
    json!({
        "schema": "kube-nftproxy.trace/v1",
        "source": if live { "live" } else { "files" },
        "packet": {
            "proto": p.proto.name(),
            "src": p.saddr.to_string(),
            "src_port": p.sport,
            "dst": p.daddr.to_string(),
            "dst_port": p.dport,
            "from": q.origin.name(),
            "in_interface": in_if,
            "ct_state": "new",
        },
        "local_addresses": q.local_addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "outcomes": outcomes.iter().map(|(oc, pr)| outcome_json(oc, *pr, o)).collect::<Vec<_>>(),
        "paths": t.paths.iter().map(|path| json!({
            "probability": path.probability,
            "outcome": outcomes.iter().position(|(oc, _)| *oc == path.outcome),
            "steps": path.steps.iter().map(|s| step_json(s, o)).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// Builds the query: `--from` defaults from the node's addresses and the cluster CIDRs.
pub fn query(a: &TraceArgs, m: &Model) -> Result<Query> {
    if Family::of(&a.src) != Family::of(&a.dst) {
        bail!("--src and --dst must be of the same IP family");
    }
    let origin = match a.from {
        Some(FromArg::Pod) => Origin::Pod,
        Some(FromArg::Node) => Origin::Node,
        Some(FromArg::External) => Origin::External,
        None if m.node_ips.contains(&a.src) || a.src.is_loopback() => Origin::Node,
        None if m.cluster_cidrs.iter().any(|c| c.contains(&a.src)) => Origin::Pod,
        None => Origin::External,
    };
    Ok(Query {
        packet: Packet {
            proto: match a.proto {
                ProtoArg::Tcp => Proto::Tcp,
                ProtoArg::Udp => Proto::Udp,
                ProtoArg::Sctp => Proto::Sctp,
            },
            saddr: a.src,
            sport: a.src_port,
            daddr: a.dst,
            dport: a.port,
        },
        origin,
        local_addrs: m.node_ips.clone(),
        in_interface: a.in_interface.clone(),
    })
}

/// Runs `trace`; returns the report.
pub fn run(a: &TraceArgs) -> Result<String> {
    if a.files.is_empty() && !a.live {
        bail!("give the cluster's FILEs (or --live)");
    }
    let loaded = load(&a.args, &a.files)?;
    let rs = if a.live {
        live_ruleset()?
    } else {
        loaded.ruleset.clone()
    };
    let q = query(a, &loaded.model)?;
    let t = eval::trace(&rs, &q)?;
    let mut owners = Owners::new(&loaded.model);
    owners.proto = Some(q.packet.proto);
    Ok(match a.output {
        OutputArg::Text => text_report(&q, &t, &owners, a.in_interface.as_deref()),
        OutputArg::Json => {
            let j = json_report(&q, &t, &owners, a.in_interface.as_deref(), a.live);
            serde_json::to_string_pretty(&j)? + "\n"
        }
    })
}
