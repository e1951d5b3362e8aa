//! Cluster objects + options -> `Model`. Every defect in an object reduces or skips that
//! object with a note; nothing here fails the whole render.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::{Endpoint, Family, LocalTraffic, Model, Proto, ServicePort};
use crate::model::options::{LocalDetect, NodePortAddresses, Options};
use crate::objects::input::ClusterObjects;
use crate::objects::{Address, EndpointSlice, Endpoints, Meta, Node, Service, ServiceType};
use crate::vocab::Note;

pub use crate::objects::LABEL_SERVICE_NAME;
const DEFAULT_AFFINITY_TIMEOUT: i32 = 10800;

pub fn build(objects: &ClusterObjects, opts: &Options) -> (Model, Vec<Note>) {
    let mut notes = Vec::new();
    let mut model = globals(objects, opts, &mut notes);
    let slices = group_slices(objects, &mut notes);
    let endpoints_by_svc = legacy_by_service(objects);

    let mut services = Vec::new();
    let mut known = BTreeSet::new();
    for svc in &objects.services {
        let Some(key) = obj_key(&svc.metadata) else {
            notes.push(skip("Service (unnamed)", "has no name or namespace"));
            continue;
        };
        if !known.insert(key) {
            let what = format!("Service {}/{}", key.0, key.1);
            notes.push(skip(
                &what,
                "appears twice in the input; the first copy is used",
            ));
            continue;
        }
        let svc_slices = slices.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        let legacy = endpoints_by_svc.get(&key).map(|e| &***e);
        services.extend(service(&model, svc, svc_slices, legacy, &mut notes));
    }
    for (key, list) in &slices {
        if !known.contains(key) {
            for s in list {
                notes.push(skip(
                    &format!(
                        "EndpointSlice {}/{}",
                        key.0,
                        s.metadata.name.as_deref().unwrap_or("")
                    ),
                    &format!("its Service {}/{} does not exist", key.0, key.1),
                ));
            }
        }
    }
    // Services come sorted by namespace and name; `service` sorts each one's ports.
    services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    model.services = services;
    (model, notes)
}

/// Everything in the model that no single Service decides: the node, its IPs and zone,
/// the families and CIDRs. `services` is left empty.
pub fn globals(objects: &ClusterObjects, opts: &Options, notes: &mut Vec<Note>) -> Model {
    let node = objects
        .nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(opts.hostname.as_str()));
    if node.is_none() && !objects.nodes.is_empty() {
        notes.push(Note {
            object: format!("Node {}", opts.hostname),
            reason: "this node is not in the input (pick one with --hostname-override); its IPs and zone are unknown, so NodePorts get no addresses".into(),
        });
    }
    let node_ips = if opts.node_ips.is_empty() {
        node.map(|n| node_addresses(n, notes)).unwrap_or_default()
    } else {
        opts.node_ips.clone()
    };
    let node_zone = node.and_then(|n| n.zone.as_deref()).map(String::from);
    let service_cidrs = if opts.service_cidrs.is_empty() {
        service_cidrs_from_objects(objects, notes)
    } else {
        opts.service_cidrs.clone()
    };

    let mut families: BTreeSet<Family> = node_ips
        .iter()
        .map(Family::of)
        .chain(opts.cluster_cidrs.iter().map(net_family))
        .chain(service_cidrs.iter().map(net_family))
        .collect();
    if families.is_empty() {
        // Nothing says which families the cluster has: follow the Services.
        families = objects
            .services
            .iter()
            .filter_map(|s| {
                s.spec
                    .as_ref()?
                    .cluster_ip
                    .as_deref()
                    .and_then(parse_ip_sloppy)
            })
            .map(|(ip, _)| Family::of(&ip))
            .collect();
        if families.is_empty() {
            families.insert(Family::V4);
        }
    }
    let local_traffic = match &opts.detect_local {
        LocalDetect::ClusterCidr => LocalTraffic::Cidrs(opts.cluster_cidrs.clone()),
        LocalDetect::NodeCidr => {
            LocalTraffic::Cidrs(node.map(|n| node_pod_cidrs(n, notes)).unwrap_or_default())
        }
        LocalDetect::InterfaceNamePrefix(p) => LocalTraffic::InterfacePrefix(p.clone()),
        LocalDetect::BridgeInterface(b) => LocalTraffic::Interface(b.clone()),
    };
    if opts.detect_local == LocalDetect::NodeCidr {
        if let LocalTraffic::Cidrs(c) = &local_traffic {
            if c.is_empty() {
                // Upstream (getLocalDetectors) logs this and runs with a no-op detector:
                // no ClusterIP masquerading by source, no short-circuit of pod traffic.
                notes.push(Note {
                    object: format!("Node {}", opts.hostname),
                    reason: "detectLocalMode is NodeCIDR but this Node has no spec.podCIDRs \
                             (yet); pod traffic is not told apart until it has"
                        .into(),
                });
            }
        }
    }
    Model {
        node_name: opts.hostname.clone(),
        node_zone,
        node_ips,
        host_addresses: opts.host_addresses.clone(),
        families: families.into_iter().collect(),
        cluster_cidrs: opts.cluster_cidrs.clone(),
        service_cidrs,
        nodeport_addresses: opts.nodeport_addresses.clone(),
        masquerade_all: opts.masquerade_all,
        masquerade_mark: opts.masquerade_mark(),
        local_traffic,
        services: Vec::new(),
    }
}

/// The Node's `spec.podCIDRs`, at most one per family as the API allows (upstream's
/// detector takes the first of each family).
fn node_pod_cidrs(n: &Node, notes: &mut Vec<Note>) -> Vec<IpNet> {
    let what = format!("Node {}", n.metadata.name.as_deref().unwrap_or(""));
    let mut out: Vec<IpNet> = Vec::new();
    for c in &n.pod_cidrs {
        match object_cidr(c, "podCIDR", &what, notes) {
            Some(net) if !out.iter().any(|o| net_family(o) == net_family(&net)) => out.push(net),
            Some(_) => {}
            None => notes.push(skip(&what, &format!("invalid podCIDR {c:?} ignored"))),
        }
    }
    out
}

/// The ports of one Service with their endpoints, sorted by port name and protocol.
/// `slices` are the Service's EndpointSlices; `legacy` its v1 Endpoints, used only when it
/// has no slices. `globals` is what `globals` returned.
pub fn service<S: AsRef<EndpointSlice>>(
    globals: &Model,
    svc: &Service,
    slices: &[S],
    legacy: Option<&Endpoints>,
    notes: &mut Vec<Note>,
) -> Vec<ServicePort> {
    let Some(key) = object_key(&svc.metadata) else {
        return Vec::new();
    };
    let what = format!("Service {}/{}", key.0, key.1);
    let families: BTreeSet<Family> = globals.families.iter().copied().collect();
    let Some(mut ports) = service_ports(svc, &families, notes, &what) else {
        return Vec::new();
    };
    let legacy = if slices.is_empty() { legacy } else { None };
    let first_port = ports
        .first()
        .map(|p| p.port_name.clone())
        .unwrap_or_default();
    let node = &globals.node_name;
    for sp in &mut ports {
        sp.endpoints = if legacy.is_some() {
            legacy_endpoints(legacy, sp, node, notes)
        } else {
            slice_endpoints(slices, sp, &first_port, node, notes)
        };
    }
    ports.sort_by(|a, b| (&a.port_name, a.protocol).cmp(&(&b.port_name, b.protocol)));
    // Kept between syncs by the agent; drop the slack of vectors grown by pushing.
    for sp in &mut ports {
        sp.endpoints.shrink_to_fit();
    }
    ports.shrink_to_fit();
    ports
}

/// v1 Endpoints by Service (namespace, name).
pub fn legacy_by_service(objects: &ClusterObjects) -> BTreeMap<ObjKey<'_>, &Arc<Endpoints>> {
    objects
        .endpoints
        .iter()
        .filter_map(|e| Some((obj_key(&e.metadata)?, e)))
        .collect()
}

fn skip(object: &str, reason: &str) -> Note {
    Note {
        object: object.to_string(),
        reason: reason.to_string(),
    }
}

fn net_family(n: &IpNet) -> Family {
    Family::of(&n.addr())
}

/// The namespace and name of an object, borrowed.
pub fn obj_key(m: &Meta) -> Option<ObjKey<'_>> {
    Some((m.namespace.as_deref()?, m.name.as_deref()?))
}

fn object_key(m: &Meta) -> Option<(String, String)> {
    let (ns, name) = obj_key(m)?;
    Some((ns.to_string(), name.to_string()))
}

/// InternalIPs first (kube-proxy's choice), ExternalIPs only when there is none.
fn node_addresses(n: &Node, notes: &mut Vec<Note>) -> Vec<IpAddr> {
    let what = format!("Node {}", n.metadata.name.as_deref().unwrap_or(""));
    let mut pick = |t: &str| -> Vec<IpAddr> {
        n.addresses
            .iter()
            .filter(|a| &*a.type_ == t)
            .filter_map(|a| object_ip(&a.address, &format!("{t} address"), &what, notes))
            .collect()
    };
    let internal = pick("InternalIP");
    if internal.is_empty() {
        pick("ExternalIP")
    } else {
        internal
    }
}

fn service_cidrs_from_objects(o: &ClusterObjects, notes: &mut Vec<Note>) -> Vec<IpNet> {
    let mut out = Vec::new();
    for sc in &o.service_cidrs {
        let what = format!("ServiceCIDR {}", sc.metadata.name.as_deref().unwrap_or(""));
        for c in &sc.cidrs {
            match object_cidr(c, "CIDR", &what, notes) {
                Some(n) => out.push(n),
                None => notes.push(skip(&what, &format!("invalid CIDR {c:?} ignored"))),
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Parses a CIDR the way upstream tolerates it: surrounding spaces, host bits set, IPv4
/// leading zeros (`ParseCIDRSloppy`), an IPv4-mapped address taken as IPv4.
pub fn parse_cidr(s: &str) -> Option<IpNet> {
    parse_cidr_sloppy(s).map(|(n, _)| n)
}

/// `parse_cidr`, and why the text was not canonical (see `parse_ip_sloppy`).
fn parse_cidr_sloppy(s: &str) -> Option<(IpNet, Option<&'static str>)> {
    let s = s.trim();
    let Some((addr, len)) = s.split_once('/') else {
        // A bare address is a host route.
        return parse_ip_sloppy(s).map(|(ip, why)| (IpNet::from(ip), why));
    };
    if !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let len: u8 = len.parse().ok()?;
    let (ip, why) = parse_ip_sloppy(addr)?;
    // `::ffff:10.0.0.0/104` is 10.0.0.0/8.
    let len = match (why, addr.trim().parse::<IpAddr>()) {
        (Some(_), Ok(IpAddr::V6(_))) if ip.is_ipv4() => len.checked_sub(96)?,
        _ => len,
    };
    Some((IpNet::new(ip, len).ok()?.trunc(), why))
}

/// `parse_cidr_sloppy` for a field of object `what`, with a note when not canonical.
fn object_cidr(raw: &str, field: &str, what: &str, notes: &mut Vec<Note>) -> Option<IpNet> {
    let (net, why) = parse_cidr_sloppy(raw)?;
    if let Some(why) = why {
        notes.push(sloppy_note(what, field, raw, why, &net.to_string()));
    }
    Some(net)
}

/// Reads an IP address from an object field as kube-proxy does (`netutils.ParseIPSloppy`,
/// then Go's `net.IP` family test and printing): surrounding spaces tolerated, IPv4 octets
/// with leading zeros read as decimal (`172.30.0.041` is 172.30.0.41; API servers before
/// 1.33 accepted them), and an IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) taken as the
/// IPv4 address, which is how kube-proxy classifies (`To4() != nil`) and writes it. Returns
/// the address and, when the text was not canonical, why (for a note).
pub fn parse_ip_sloppy(s: &str) -> Option<(IpAddr, Option<&'static str>)> {
    let s = s.trim();
    let (ip, zeros) = match s.parse::<IpAddr>() {
        Ok(ip) => (ip, false),
        Err(_) => (leading_zero_ip(s)?, true),
    };
    let canonical = ip.to_canonical();
    let why = match (zeros, canonical != ip) {
        (_, true) => Some("is an IPv4-mapped IPv6 address; used as IPv4"),
        (true, false) => Some("has leading zeros; read as decimal"),
        (false, false) => None,
    };
    Some((canonical, why))
}

/// Dotted quads with leading zeros (at most 3 digits an octet, each at most 255), alone or
/// as the tail of an IPv6 address, as Go 1.16's `net.ParseIP` read them.
fn leading_zero_ip(s: &str) -> Option<IpAddr> {
    let (head, quad) = match s.rfind(':') {
        Some(i) => (Some(&s[..=i]), &s[i + 1..]),
        None => (None, s),
    };
    let mut octets = [0u8; 4];
    let mut parts = quad.split('.');
    for o in &mut octets {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *o = p.parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    let v4 = std::net::Ipv4Addr::from(octets);
    match head {
        None => Some(IpAddr::V4(v4)),
        Some(h) => format!("{h}{v4}").parse().ok(),
    }
}

/// `parse_ip_sloppy` for a field of object `what`: the note says how a non-canonical
/// address was read.
fn object_ip(raw: &str, field: &str, what: &str, notes: &mut Vec<Note>) -> Option<IpAddr> {
    let (ip, why) = parse_ip_sloppy(raw)?;
    if let Some(why) = why {
        notes.push(sloppy_note(what, field, raw, why, &ip.to_string()));
    }
    Some(ip)
}

fn sloppy_note(what: &str, field: &str, raw: &str, why: &str, read: &str) -> Note {
    Note {
        object: what.to_string(),
        reason: format!("{field} {:?} {why} {read}, as kube-proxy does", raw.trim()),
    }
}

/// An endpoint address: parsed by `objects` when canonical, else read sloppily here.
fn address(a: &Address, field: &str, what: &str, notes: &mut Vec<Note>) -> Option<IpAddr> {
    match a {
        Address::Ip(ip) if ip.to_canonical() == *ip => Some(*ip),
        Address::Ip(ip) => object_ip(&ip.to_string(), field, what, notes),
        Address::Invalid(raw) => object_ip(raw, field, what, notes),
    }
}

fn raw(a: &Address) -> String {
    match a {
        Address::Ip(ip) => ip.to_string(),
        Address::Invalid(raw) => raw.to_string(),
    }
}

/// DNS-1123 label: what namespaces and Service names must be. Everything we put in chain
/// names comes through here or `valid_port_name`, so nft never sees odd characters.
fn valid_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn valid_port_name(s: &str) -> bool {
    s.is_empty() || valid_dns_label(s)
}

fn service_ports(
    svc: &Service,
    families: &BTreeSet<Family>,
    notes: &mut Vec<Note>,
    what: &str,
) -> Option<Vec<ServicePort>> {
    let (ns, name) = object_key(&svc.metadata)?;
    if svc.other_proxy {
        tracing::debug!(service = what, "served by another proxy");
        return None;
    }
    if svc.headless_label {
        return None;
    }
    if !valid_dns_label(&ns) || !valid_dns_label(&name) {
        notes.push(skip(
            &format!("Service {}", shorten(&format!("{ns}/{name}"))),
            "namespace and name must be DNS labels of at most 63 characters",
        ));
        return None;
    }
    if let Some(why) = &svc.invalid {
        notes.push(skip(
            &format!("Service {ns}/{name}"),
            &format!("does not decode: {why}"),
        ));
        return None;
    }
    let spec = svc.spec.as_ref()?;
    if spec.type_ == ServiceType::ExternalName {
        return None;
    }
    let raw_ips: &[Box<str>] = match &spec.cluster_ip {
        _ if !spec.cluster_ips.is_empty() => &spec.cluster_ips,
        Some(ip) => std::slice::from_ref(ip),
        None => &[],
    };
    if raw_ips.is_empty() || raw_ips.iter().any(|s| &**s == "None" || s.is_empty()) {
        return None; // headless
    }
    let mut cluster_ips = Vec::new();
    for s in raw_ips {
        match object_ip(s, "clusterIP", what, notes).ok_or(()) {
            Ok(ip) if !families.contains(&Family::of(&ip)) => notes.push(skip(
                what,
                &format!("cluster IP {ip} is of an IP family this node does not proxy; ignored"),
            )),
            Ok(ip) if cluster_ips.iter().any(|c| Family::of(c) == Family::of(&ip)) => {}
            Ok(ip) => cluster_ips.push(ip),
            Err(()) => {
                notes.push(skip(what, &format!("invalid cluster IP {s:?}")));
                return None;
            }
        }
    }
    if cluster_ips.is_empty() {
        return None;
    }
    let ips_of = |list: &[Box<str>], field: &str, notes: &mut Vec<Note>| -> Vec<IpAddr> {
        let mut out = Vec::new();
        for s in list {
            match object_ip(s, field, what, notes) {
                Some(ip) if families.contains(&Family::of(&ip)) => out.push(ip),
                Some(_) => {}
                None => notes.push(skip(what, &format!("invalid {field} {s:?} ignored"))),
            }
        }
        out.sort();
        out.dedup();
        out
    };
    let external_ips = ips_of(&spec.external_ips, "externalIP", notes);
    let is_lb = spec.type_ == ServiceType::LoadBalancer;
    // Proxy-mode load balancers deliver to the node, not to the VIP: the objects keep only
    // the others.
    let lb_raw: &[Box<str>] = if is_lb {
        &svc.load_balancer_ingress_ips
    } else {
        &[]
    };
    let load_balancer_ips = ips_of(lb_raw, "load balancer ingress IP", notes);
    let mut load_balancer_source_ranges = Vec::new();
    for r in &spec.load_balancer_source_ranges {
        match object_cidr(r, "loadBalancerSourceRange", what, notes) {
            Some(n) if families.contains(&net_family(&n)) => load_balancer_source_ranges.push(n),
            Some(_) => {}
            None => notes.push(skip(
                what,
                &format!("invalid loadBalancerSourceRange {r:?} ignored"),
            )),
        }
    }
    load_balancer_source_ranges.sort();
    load_balancer_source_ranges.dedup();
    let affinity_timeout = if spec.client_ip_affinity {
        let t = spec.affinity_timeout.unwrap_or(DEFAULT_AFFINITY_TIMEOUT);
        if (1..=86400).contains(&t) {
            Some(t as u32)
        } else {
            notes.push(skip(
                what,
                &format!("session affinity timeout {t} out of range 1..86400; using 10800"),
            ));
            Some(DEFAULT_AFFINITY_TIMEOUT as u32)
        }
    } else {
        None
    };
    let node_port_type = matches!(
        spec.type_,
        ServiceType::NodePort | ServiceType::LoadBalancer
    );
    let mut out: Vec<ServicePort> = Vec::new();
    for p in &spec.ports {
        let port_name = p.name.to_string();
        let pwhat = format!("{what} port {:?}", port_name);
        if !valid_port_name(&port_name) {
            notes.push(skip(&pwhat, "invalid port name"));
            continue;
        }
        let protocol = match p.protocol.as_str() {
            "TCP" => Proto::Tcp,
            "UDP" => Proto::Udp,
            "SCTP" => Proto::Sctp,
            other => {
                notes.push(skip(&pwhat, &format!("unsupported protocol {other:?}")));
                continue;
            }
        };
        let Ok(port) =
            u16::try_from(p.port).map_err(|_| ()).and_then(
                |v| {
                    if v == 0 {
                        Err(())
                    } else {
                        Ok(v)
                    }
                },
            )
        else {
            notes.push(skip(
                &pwhat,
                &format!("port {} out of range 1..65535", p.port),
            ));
            continue;
        };
        let node_port = match p.node_port {
            Some(n) if node_port_type && n != 0 => match u16::try_from(n) {
                Ok(v) => Some(v),
                Err(_) => {
                    notes.push(skip(&pwhat, &format!("nodePort {n} out of range; ignored")));
                    None
                }
            },
            _ => None,
        };
        if out
            .iter()
            .any(|o| o.port_name == port_name || (o.port == port && o.protocol == protocol))
        {
            notes.push(skip(&pwhat, "duplicate port in the Service"));
            continue;
        }
        out.push(ServicePort {
            namespace: ns.clone(),
            name: name.clone(),
            port_name,
            protocol,
            cluster_ips: cluster_ips.clone(),
            port,
            node_port,
            external_ips: external_ips.clone(),
            load_balancer_ips: load_balancer_ips.clone(),
            load_balancer_source_ranges: load_balancer_source_ranges.clone(),
            external_policy_local: spec.external_policy_local,
            internal_policy_local: spec.internal_policy_local,
            health_check_node_port: spec
                .health_check_node_port
                .filter(|_| spec.external_policy_local)
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0),
            affinity_timeout,
            endpoints: vec![],
        });
    }
    Some(out)
}

fn shorten(s: &str) -> String {
    if s.len() > 80 {
        format!(
            "{}...",
            &s[..s.char_indices().nth(77).map(|(i, _)| i).unwrap_or(s.len())]
        )
    } else {
        s.to_string()
    }
}

pub type SvcKey = (String, String);

/// A namespace and name borrowed from an object.
pub type ObjKey<'a> = (&'a str, &'a str);

/// EndpointSlices by the Service (namespace, name) they belong to.
pub fn group_slices<'a>(
    o: &'a ClusterObjects,
    notes: &mut Vec<Note>,
) -> BTreeMap<ObjKey<'a>, Vec<&'a Arc<EndpointSlice>>> {
    let mut out: BTreeMap<ObjKey<'a>, Vec<&Arc<EndpointSlice>>> = BTreeMap::new();
    for s in &o.endpoint_slices {
        let what = || {
            format!(
                "EndpointSlice {}/{}",
                s.metadata.namespace.as_deref().unwrap_or(""),
                s.metadata.name.as_deref().unwrap_or("")
            )
        };
        if let Some(why) = &s.invalid {
            notes.push(skip(&what(), &format!("does not decode: {why}")));
            continue;
        }
        if !matches!(&*s.address_type, "IPv4" | "IPv6") {
            tracing::debug!(slice = what(), "ignoring addressType {}", s.address_type);
            continue;
        }
        match (&s.metadata.namespace, &s.service_name) {
            (Some(ns), Some(svc)) => out.entry((&**ns, &**svc)).or_default().push(s),
            _ => notes.push(skip(&what(), "has no kubernetes.io/service-name label")),
        }
    }
    out
}

fn add_endpoint(list: &mut Vec<Endpoint>, ep: Endpoint, what: &str, notes: &mut Vec<Note>) {
    if let Some(old) = list.iter_mut().find(|e| e.ip == ep.ip && e.port == ep.port) {
        notes.push(skip(
            what,
            &format!("duplicate endpoint {}; one copy kept", ep.sort_key()),
        ));
        // Upstream keeps the local copy of a duplicate.
        if ep.local && !old.local {
            *old = ep;
        }
        return;
    }
    list.push(ep);
}

fn slice_endpoints<S: AsRef<EndpointSlice>>(
    slices: &[S],
    sp: &ServicePort,
    first_port_name: &str,
    node: &str,
    notes: &mut Vec<Note>,
) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for s in slices {
        let s = s.as_ref();
        let what = format!(
            "EndpointSlice {}/{}",
            s.metadata.namespace.as_deref().unwrap_or(""),
            s.metadata.name.as_deref().unwrap_or("")
        );
        let Some(port) = s
            .ports
            .iter()
            .find(|p| *p.name == *sp.port_name && p.protocol.as_str() == proto_api(sp.protocol))
        else {
            continue;
        };
        let Some(port) = port
            .port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
        else {
            notes.push(skip(
                &what,
                &format!("port {:?} has no valid number", sp.port_name),
            ));
            continue;
        };
        let want_v6 = &*s.address_type == "IPv6";
        if !sp.cluster_ips.iter().any(|ip| ip.is_ipv6() == want_v6) {
            // Only noted once per slice: the first port of the Service reports it.
            if sp.port_name == first_port_name {
                notes.push(skip(
                    &what,
                    &format!(
                        "{} endpoints for a Service without an {} cluster IP; ignored",
                        s.address_type, s.address_type
                    ),
                ));
            }
            continue;
        }
        for e in &s.endpoints {
            let Some(addr) = &e.address else {
                continue;
            };
            let Some(ip) = address(addr, "endpoint address", &what, notes) else {
                notes.push(skip(
                    &what,
                    &format!("invalid endpoint address {:?} ignored", raw(addr)),
                ));
                continue;
            };
            if ip.is_ipv6() != want_v6 {
                notes.push(skip(
                    &what,
                    &format!(
                        "endpoint {ip} does not match addressType {}",
                        s.address_type
                    ),
                ));
                continue;
            }
            let ready = e.ready.unwrap_or(true);
            let ep = Endpoint {
                ip,
                port,
                ready,
                // Upstream: nil ready and nil serving are true, nil terminating false.
                serving: e.serving.unwrap_or(true),
                terminating: e.terminating.unwrap_or(false),
                local: e.node_name.as_deref() == Some(node),
                zone_hints: e
                    .hints
                    .as_ref()
                    .and_then(|h| h.zones.as_ref())
                    .map(|z| z.iter().map(|z| z.to_string()).collect()),
                for_this_node: e
                    .hints
                    .as_ref()
                    .and_then(|h| h.nodes.as_ref())
                    .filter(|n| !n.is_empty())
                    .map(|n| n.iter().any(|n| **n == *node)),
            };
            add_endpoint(&mut out, ep, &what, notes);
        }
    }
    out.sort_by_cached_key(Endpoint::sort_key);
    out
}

fn legacy_endpoints(
    eps: Option<&Endpoints>,
    sp: &ServicePort,
    node: &str,
    notes: &mut Vec<Note>,
) -> Vec<Endpoint> {
    let mut out = Vec::new();
    let Some(eps) = eps else { return out };
    let what = format!(
        "Endpoints {}/{}",
        eps.metadata.namespace.as_deref().unwrap_or(""),
        eps.metadata.name.as_deref().unwrap_or("")
    );
    for subset in &eps.subsets {
        let Some(port) = subset
            .ports
            .iter()
            .find(|p| *p.name == *sp.port_name && p.protocol.as_str() == proto_api(sp.protocol))
        else {
            continue;
        };
        let Some(port) = port
            .port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
        else {
            continue;
        };
        let all = [
            (&subset.addresses, true),
            (&subset.not_ready_addresses, false),
        ];
        for (list, ready) in all {
            for a in list.iter() {
                let Some(ip) = address(&a.ip, "address", &what, notes) else {
                    notes.push(skip(
                        &what,
                        &format!("invalid address {:?} ignored", raw(&a.ip)),
                    ));
                    continue;
                };
                let ep = Endpoint {
                    ip,
                    port,
                    ready,
                    serving: ready,
                    terminating: false,
                    local: a.node_name.as_deref() == Some(node),
                    zone_hints: None,
                    for_this_node: None,
                };
                add_endpoint(&mut out, ep, &what, notes);
            }
        }
    }
    out.sort_by_cached_key(Endpoint::sort_key);
    out
}

fn proto_api(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "TCP",
        Proto::Udp => "UDP",
        Proto::Sctp => "SCTP",
    }
}

pub fn nodeport_ips(m: &Model, f: Family) -> NodePortIps {
    let of_family = m.node_ips.iter().copied().filter(|ip| Family::of(ip) == f);
    match &m.nodeport_addresses {
        NodePortAddresses::Primary => NodePortIps::List(of_family.take(1).collect()),
        NodePortAddresses::Cidrs(cidrs) => {
            // kube-proxy matches the CIDRs against the host's interface addresses; without
            // them (render), the node IPs stand in.
            let candidates = if m.host_addresses.is_empty() {
                &m.node_ips
            } else {
                &m.host_addresses
            };
            let of_family = candidates.iter().copied().filter(|ip| Family::of(ip) == f);
            let fam: Vec<&IpNet> = cidrs.iter().filter(|c| net_family(c) == f).collect();
            if fam.is_empty() || fam.iter().any(|c| c.prefix_len() == 0) {
                NodePortIps::AllLocal
            } else {
                NodePortIps::List(
                    of_family
                        .filter(|ip| fam.iter().any(|c| c.contains(ip)))
                        .collect(),
                )
            }
        }
    }
}

/// Where NodePorts listen, per family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodePortIps {
    List(Vec<IpAddr>),
    /// Every local address (`fib daddr type local`), loopback excluded.
    AllLocal,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::categorize;

    fn build_yaml(yaml: &str) -> (Model, Vec<Note>) {
        let mut objects = ClusterObjects::default();
        objects.add_text("t.yaml", yaml, &mut Vec::new()).unwrap();
        objects.sort();
        let opts = Options {
            hostname: "node-a".into(),
            ..Options::default()
        };
        build(&objects, &opts)
    }

    /// NodeCIDR takes the Node's podCIDRs (first of each family); a Node without them
    /// gets no detector and a note, as upstream's no-op detector with its log line.
    #[test]
    fn node_cidr_detection_reads_the_nodes_pod_cidrs() {
        let globals_for = |node: &str| {
            let mut objects = ClusterObjects::default();
            objects.add_text("t.yaml", node, &mut Vec::new()).unwrap();
            let opts = Options {
                hostname: "node-a".into(),
                cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
                detect_local: LocalDetect::NodeCidr,
                ..Options::default()
            };
            let mut notes = Vec::new();
            (globals(&objects, &opts, &mut notes), notes)
        };
        let (m, notes) = globals_for(
            "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\nspec: {podCIDRs: [10.244.3.0/24, 'fd00:244:3::/64', 10.244.9.0/24]}\n",
        );
        assert_eq!(
            m.local_traffic,
            LocalTraffic::Cidrs(vec![
                "10.244.3.0/24".parse().unwrap(),
                "fd00:244:3::/64".parse().unwrap()
            ])
        );
        assert!(notes.is_empty(), "{notes:?}");
        let (m, notes) =
            globals_for("apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\nspec: {}\n");
        assert_eq!(m.local_traffic, LocalTraffic::Cidrs(vec![]));
        assert!(
            notes.iter().any(|n| n.reason.contains("no spec.podCIDRs")),
            "{notes:?}"
        );
    }

    fn svc(name: &str, spec: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: ns}}\nspec: {spec}\n---\n"
        )
    }

    fn slice(name: &str, svc: &str, ports: &str, endpoints: &str) -> String {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: ns, labels: {{kubernetes.io/service-name: {svc}}}}}\naddressType: IPv4\nports: {ports}\nendpoints: {endpoints}\n---\n"
        )
    }

    /// `(port name, [(IP:port, ready, serving, terminating, local)])` of every port.
    type Eps = Vec<(String, Vec<(String, bool, bool, bool, bool)>)>;

    fn eps(m: &Model, name: &str) -> Eps {
        m.services
            .iter()
            .filter(|s| s.name == name)
            .map(|s| {
                let e = s.endpoints.iter();
                let e = e.map(|e| (e.sort_key(), e.ready, e.serving, e.terminating, e.local));
                (s.port_name.clone(), e.collect())
            })
            .collect()
    }

    fn ep(
        k: &str,
        ready: bool,
        serving: bool,
        terminating: bool,
        local: bool,
    ) -> (String, bool, bool, bool, bool) {
        (k.to_string(), ready, serving, terminating, local)
    }

    const TWO_PORTS: &str =
        "{clusterIP: 10.96.0.1, ports: [{name: http, port: 80}, {name: https, port: 443}]}";

    /// endpointslicecache_test `TestEndpointsMapFromESC` "2 slices, same port" and
    /// "2 slices, with some endpoints overlapping": slices of one Service merge per port
    /// (matched by name), an endpoint in two slices counts once.
    #[test]
    fn slices_merge_by_port_name_and_duplicates_count_once() {
        let y = svc("s", TWO_PORTS)
            + &slice(
                "s-1",
                "s",
                "[{name: http, port: 8080}, {name: https, port: 8443}]",
                "[{addresses: [10.0.1.1]}, {addresses: [10.0.1.2]}]",
            )
            + &slice(
                "s-2",
                "s",
                "[{name: http, port: 8080}]",
                "[{addresses: [10.0.1.2], nodeName: node-a}, {addresses: [10.0.1.3]}]",
            );
        let (m, notes) = build_yaml(&y);
        assert_eq!(
            eps(&m, "s"),
            vec![
                (
                    "http".into(),
                    vec![
                        ep("10.0.1.1:8080", true, true, false, false),
                        // The duplicate keeps the local copy, as upstream does.
                        ep("10.0.1.2:8080", true, true, false, true),
                        ep("10.0.1.3:8080", true, true, false, false),
                    ]
                ),
                (
                    "https".into(),
                    vec![
                        ep("10.0.1.1:8443", true, true, false, false),
                        ep("10.0.1.2:8443", true, true, false, false),
                    ]
                ),
            ]
        );
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].reason.contains("duplicate endpoint 10.0.1.2:8080"));
    }

    /// endpointslicecache: a slice port whose name matches no Service port adds nothing
    /// ("ports matched by name"), and one slice may carry a subset of the ports.
    #[test]
    fn slice_ports_match_service_ports_by_name_and_protocol() {
        let y = svc("s", TWO_PORTS)
            + &slice("s-1", "s", "[{name: other, port: 9}, {name: http, port: 8080, protocol: UDP}, {name: https, port: 8443}]",
                "[{addresses: [10.0.1.1]}]");
        let (m, _) = build_yaml(&y);
        assert_eq!(
            eps(&m, "s"),
            vec![
                ("http".into(), vec![]),
                (
                    "https".into(),
                    vec![ep("10.0.1.1:8443", true, true, false, false)]
                ),
            ]
        );
    }

    /// endpointslicecache `addEndpoints`: nil ready and nil serving are true, nil
    /// terminating false; a not-ready endpoint is kept (categorize decides its use).
    #[test]
    fn condition_defaults_follow_upstream() {
        let y = svc("s", "{clusterIP: 10.96.0.1, ports: [{port: 80}]}")
            + &slice("s-1", "s", "[{port: 8080}]",
                "[{addresses: [10.0.1.1]}, {addresses: [10.0.1.2], conditions: {ready: false}}, {addresses: [10.0.1.3], conditions: {ready: false, terminating: true}}, {addresses: [10.0.1.4], conditions: {ready: false, serving: false, terminating: true}}]");
        let (m, notes) = build_yaml(&y);
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(
            eps(&m, "s"),
            vec![(
                "".into(),
                vec![
                    ep("10.0.1.1:8080", true, true, false, false),
                    ep("10.0.1.2:8080", false, true, false, false),
                    ep("10.0.1.3:8080", false, true, true, false),
                    ep("10.0.1.4:8080", false, false, true, false),
                ]
            )]
        );
        // Without the ready one, the terminating endpoint whose serving is nil is used.
        let mut sp = m.services[0].clone();
        sp.endpoints.remove(0);
        let c = categorize(&sp, Family::V4, None);
        assert_eq!(
            c.cluster.iter().map(|e| e.sort_key()).collect::<Vec<_>>(),
            ["10.0.1.3:8080"]
        );
    }

    /// Endpoints without an address, with an address that does not parse or of the wrong
    /// family are skipped (the last two with a note); the rest of the slice is used.
    #[test]
    fn invalid_endpoints_are_skipped() {
        let y = svc("s", "{clusterIP: 10.96.0.1, ports: [{port: 80}]}")
            + &slice("s-1", "s", "[{port: 8080}]",
                "[{addresses: []}, {addresses: [not-an-ip]}, {addresses: [\"fd00::1\"]}, {addresses: [10.0.1.1]}]");
        let (m, notes) = build_yaml(&y);
        assert_eq!(
            eps(&m, "s"),
            vec![(
                "".into(),
                vec![ep("10.0.1.1:8080", true, true, false, false)]
            )]
        );
        let reasons: Vec<&str> = notes.iter().map(|n| n.reason.as_str()).collect();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(
            reasons[0].contains("not-an-ip") && reasons[1].contains("fd00::1"),
            "{reasons:?}"
        );
    }

    /// `hints.forNodes` is read for this node; empty hints count as none.
    #[test]
    fn node_hints_are_read_for_this_node() {
        let y = svc("s", "{clusterIP: 10.96.0.1, ports: [{port: 80}]}")
            + &slice("s-1", "s", "[{port: 8080}]",
                "[{addresses: [10.0.1.1], hints: {forNodes: [{name: node-a}]}}, {addresses: [10.0.1.2], hints: {forNodes: [{name: node-b}], forZones: [{name: z}]}}, {addresses: [10.0.1.3], hints: {forNodes: []}}, {addresses: [10.0.1.4]}]");
        let (m, _) = build_yaml(&y);
        let got: Vec<Option<bool>> = m.services[0]
            .endpoints
            .iter()
            .map(|e| e.for_this_node)
            .collect();
        assert_eq!(got, [Some(true), Some(false), None, None]);
        assert_eq!(
            m.services[0].endpoints[1].zone_hints.as_deref(),
            Some(&["z".to_string()][..])
        );
    }

    /// servicechangetracker_test: only the ports of a Service are programmed, one per
    /// port name; `healthCheckNodePort` only with `externalTrafficPolicy: Local`;
    /// externalIPs of a family the node does not proxy are dropped.
    #[test]
    fn service_ports_as_the_change_tracker_builds_them() {
        let y = svc("lb", "{type: LoadBalancer, clusterIP: 10.96.0.1, externalIPs: [\"1.2.3.4\", \"2001:db8::1\"], healthCheckNodePort: 32000, ports: [{name: p1, port: 80, nodePort: 30001}, {name: p2, port: 81, protocol: UDP, nodePort: 30002}]}")
            + &svc("lbl", "{type: LoadBalancer, clusterIP: 10.96.0.2, externalTrafficPolicy: Local, healthCheckNodePort: 32001, ports: [{port: 80, nodePort: 30003}]}")
            + &svc("cip", "{clusterIP: 10.96.0.3, ports: [{port: 80, nodePort: 30004}]}")
            + &svc("headless", "{clusterIP: None, ports: [{port: 80}]}")
            + &svc("ext", "{type: ExternalName, externalName: example.com}");
        let (m, _) = build_yaml(&y);
        type Row = (String, String, Option<u16>, Option<u16>, usize);
        let got: Vec<Row> = m
            .services
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    s.port_name.clone(),
                    s.node_port,
                    s.health_check_node_port,
                    s.external_ips.len(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("cip".into(), "".into(), None, None, 0),
                ("lb".into(), "p1".into(), Some(30001), None, 1),
                ("lb".into(), "p2".into(), Some(30002), None, 1),
                ("lbl".into(), "".into(), Some(30003), Some(32001), 0),
            ]
        );
    }

    #[test]
    fn sloppy_ips_read_as_kube_proxy_does() {
        let p = |s: &str| parse_ip_sloppy(s).map(|(ip, why)| (ip.to_string(), why.is_some()));
        assert_eq!(p("10.0.0.1"), Some(("10.0.0.1".into(), false)));
        assert_eq!(p(" 172.30.0.041 "), Some(("172.30.0.41".into(), true)));
        assert_eq!(p("010.001.000.255"), Some(("10.1.0.255".into(), true)));
        assert_eq!(p("::ffff:10.0.0.1"), Some(("10.0.0.1".into(), true)));
        assert_eq!(p("::ffff:010.0.0.01"), Some(("10.0.0.1".into(), true)));
        assert_eq!(p("fd00::1"), Some(("fd00::1".into(), false)));
        for bad in [
            "10.0.0.256",
            "10.0.0.0001",
            "10.0.0",
            "10.0.0.1.2",
            "1e.0.0.1",
            "",
            "::ffff:10.0.0.0256",
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
        let c = |s: &str| parse_cidr_sloppy(s).map(|(n, why)| (n.to_string(), why.is_some()));
        assert_eq!(c("10.96.0.0/16"), Some(("10.96.0.0/16".into(), false)));
        assert_eq!(c("010.096.0.0/16"), Some(("10.96.0.0/16".into(), true)));
        assert_eq!(
            c("::ffff:198.51.100.0/120"),
            Some(("198.51.100.0/24".into(), true))
        );
        assert_eq!(c("::ffff:198.51.100.0/90"), None);
        assert_eq!(c("10.0.0.0/33"), None);
        assert_eq!(c("10.0.0.0/+8"), None);
    }

    /// Every object field that holds an address reads it sloppily, with a note naming the
    /// object and field; nothing is dropped.
    #[test]
    fn sloppy_ips_in_every_field_are_noted_not_dropped() {
        let y = "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\nstatus: {addresses: [{type: InternalIP, address: 192.168.000.010}]}\n---\n".to_string()
            + &svc("s", "{type: LoadBalancer, clusterIP: 10.96.0.041, externalIPs: [198.51.100.007, \"::ffff:198.51.100.8\"], loadBalancerSourceRanges: [203.000.113.0/24], ports: [{port: 80, nodePort: 30080}]}\nstatus: {loadBalancer: {ingress: [{ip: 203.0.113.010}]}}")
            + &slice("s-1", "s", "[{port: 8080}]", "[{addresses: [10.244.0.05]}, {addresses: [\"::ffff:10.244.0.6\"]}]");
        let (m, notes) = build_yaml(&y);
        assert_eq!(m.node_ips, ["192.168.0.10".parse::<IpAddr>().unwrap()]);
        let s = &m.services[0];
        let strs = |v: &[IpAddr]| v.iter().map(|i| i.to_string()).collect::<Vec<_>>();
        assert_eq!(strs(&s.cluster_ips), ["10.96.0.41"]);
        assert_eq!(strs(&s.external_ips), ["198.51.100.7", "198.51.100.8"]);
        assert_eq!(strs(&s.load_balancer_ips), ["203.0.113.10"]);
        assert_eq!(
            s.load_balancer_source_ranges[0].to_string(),
            "203.0.113.0/24"
        );
        let e: Vec<String> = s.endpoints.iter().map(Endpoint::sort_key).collect();
        assert_eq!(e, ["10.244.0.5:8080", "10.244.0.6:8080"]);
        let text: Vec<String> = notes.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 8, "{text:#?}");
        assert!(text.contains(&"skipping Service ns/s: clusterIP \"10.96.0.041\" has leading zeros; read as decimal 10.96.0.41, as kube-proxy does".to_string()), "{text:#?}");
        assert!(
            text.iter()
                .any(|t| t
                    .starts_with("skipping Node node-a: InternalIP address \"192.168.000.010\"")),
            "{text:#?}"
        );
        assert!(
            text.iter().any(|t| t.contains(
                "\"::ffff:198.51.100.8\" is an IPv4-mapped IPv6 address; used as IPv4 198.51.100.8"
            )),
            "{text:#?}"
        );
        assert!(
            text.iter().any(|t| t
                .starts_with("skipping EndpointSlice ns/s-1: endpoint address \"10.244.0.05\"")),
            "{text:#?}"
        );
    }

    /// Upstream's `generateEndpointSlice`: endpoints 10.0.<slice>.<i> for i in 1..=n, on
    /// `hosts[i % len]`; with r = (i % unready != 0) and t = (i % terminating == 0): ready
    /// r && !t, serving r, terminating t; ports `port-<j>` (TCP) numbered `ports[j]`.
    #[allow(clippy::too_many_arguments)]
    fn gen_slice(
        svc: &str,
        ns: &str,
        slice: u32,
        n: u32,
        unready: u32,
        terminating: u32,
        hosts: &[&str],
        ports: &[Option<u16>],
    ) -> String {
        let mut eps = String::new();
        for i in 1..=n {
            let ready = i % unready != 0;
            let term = i % terminating == 0;
            let node = if hosts.is_empty() {
                String::new()
            } else {
                format!(", nodeName: {}", hosts[i as usize % hosts.len()])
            };
            eps += &format!(
                "- {{addresses: [10.0.{slice}.{i}], conditions: {{ready: {}, serving: {}, terminating: {term}}}{node}}}\n",
                ready && !term,
                ready,
            );
        }
        let ports: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(j, p)| match p {
                Some(p) => format!("{{name: port-{j}, port: {p}, protocol: TCP}}"),
                None => format!("{{name: port-{j}, protocol: TCP}}"),
            })
            .collect();
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {svc}-{slice}, namespace: {ns}, labels: {{kubernetes.io/service-name: {svc}}}}}\naddressType: IPv4\nports: [{}]\nendpoints:\n{eps}---\n",
            ports.join(", ")
        )
    }

    fn gen_service(svc: &str, ns: &str, ports: &[u16]) -> String {
        let ports: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(j, p)| format!("{{name: port-{j}, port: {p}}}"))
            .collect();
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {svc}, namespace: {ns}}}\nspec: {{clusterIP: 10.96.0.1, ports: [{}]}}\n---\n",
            ports.join(", ")
        )
    }

    /// The endpoints of Service ns1/svc1 built for node `host1`, per port name.
    fn svc1_endpoints(y: &str) -> Eps {
        let mut objects = ClusterObjects::default();
        objects.add_text("t.yaml", y, &mut Vec::new()).unwrap();
        objects.sort();
        let opts = Options {
            hostname: "host1".into(),
            ..Options::default()
        };
        let (m, _) = build(&objects, &opts);
        m.services
            .iter()
            .filter(|s| s.namespace == "ns1" && s.name == "svc1")
            .map(|s| {
                let e = s.endpoints.iter();
                let e = e.map(|e| (e.sort_key(), e.ready, e.serving, e.terminating, e.local));
                (s.port_name.clone(), e.collect())
            })
            .collect()
    }

    /// kubernetes/kubernetes `pkg/proxy/endpointslicecache_test.go` `TestEndpointsMapFromESC`,
    /// the cases that apply to a snapshot build, under upstream's names. Left out: "2
    /// overlapping slices, same port" and the three "2 slices, overlapping endpoints, ..."
    /// cases, whose two slices share one name, so they test the cache replacing a slice by
    /// its update, which a snapshot never sees.
    #[test]
    fn upstream_endpoints_map_from_esc() {
        let up = |i: u32, port: u16, local: bool| {
            ep(&format!("10.0.1.{i}:{port}"), true, true, false, local)
        };
        let svc = gen_service("svc1", "ns1", &[80, 443]);
        let y = svc.clone()
            + &gen_slice(
                "svc1",
                "ns1",
                1,
                3,
                999,
                999,
                &["host1", "host2"],
                &[Some(80), Some(443)],
            );
        assert_eq!(
            svc1_endpoints(&y),
            vec![
                (
                    "port-0".into(),
                    vec![up(1, 80, false), up(2, 80, true), up(3, 80, false)]
                ),
                (
                    "port-1".into(),
                    vec![up(1, 443, false), up(2, 443, true), up(3, 443, false)]
                ),
            ],
            "1 slice, 2 hosts, ports 80,443"
        );

        let svc = gen_service("svc1", "ns1", &[80]);
        let y = svc.clone()
            + &gen_slice("svc1", "ns1", 1, 3, 999, 999, &[], &[Some(80)])
            + &gen_slice("svc1", "ns1", 2, 3, 999, 999, &[], &[Some(80)]);
        let two: Vec<_> = (1..=2)
            .flat_map(|s| {
                (1..=3).map(move |i| ep(&format!("10.0.{s}.{i}:80"), true, true, false, false))
            })
            .collect();
        assert_eq!(
            svc1_endpoints(&y),
            vec![("port-0".into(), two)],
            "2 slices, same port"
        );

        let y = svc.clone()
            + &gen_service("svc2", "ns1", &[80])
            + &gen_service("svc1", "ns2", &[80])
            + &gen_slice("svc1", "ns1", 1, 3, 999, 999, &[], &[Some(80)])
            + &gen_slice("svc2", "ns1", 2, 3, 999, 999, &[], &[Some(80)])
            + &gen_slice("svc1", "ns2", 3, 3, 999, 999, &[], &[Some(80)]);
        assert_eq!(
            svc1_endpoints(&y),
            vec![(
                "port-0".into(),
                vec![up(1, 80, false), up(2, 80, false), up(3, 80, false)]
            )],
            "3 slices with different services and namespaces"
        );

        let y =
            svc.clone() + &gen_slice("svc1", "ns1", 1, 3, 999, 999, &["host1", "host2"], &[None]);
        assert_eq!(
            svc1_endpoints(&y),
            vec![("port-0".into(), vec![])],
            "Nil port should not break anything"
        );

        // generateEndpointSliceWithOffset: both slices hold 10.0.1.1 and 10.0.1.2.
        let y =
            svc + &gen_slice(
                "svc1",
                "ns1",
                1,
                2,
                999,
                999,
                &["host1", "host2"],
                &[Some(80)],
            ) + &gen_slice(
                "svc1",
                "ns1",
                1,
                2,
                999,
                999,
                &["host1", "host2"],
                &[Some(8080)],
            )
            .replace("name: svc1-1,", "name: svc1-2,");
        assert_eq!(
            svc1_endpoints(&y),
            vec![(
                "port-0".into(),
                vec![
                    up(1, 80, false),
                    up(1, 8080, false),
                    up(2, 80, true),
                    up(2, 8080, true)
                ]
            )],
            "Different endpoints with duplicate IPs should not be filtered"
        );

        // Conditions as generated: not ready, serving terminating.
        let y = gen_service("svc1", "ns1", &[80])
            + &gen_slice("svc1", "ns1", 1, 6, 3, 5, &[], &[Some(80)]);
        let got = svc1_endpoints(&y);
        let flags: Vec<(bool, bool, bool)> = got[0].1.iter().map(|e| (e.1, e.2, e.3)).collect();
        assert_eq!(
            flags,
            [
                (true, true, false),
                (true, true, false),
                (false, false, false),
                (true, true, false),
                (false, true, true),
                (false, false, false),
            ]
        );
    }
}
