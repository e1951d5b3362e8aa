//! The desired state kept between syncs, so that a sync costs O(what changed) rather than
//! O(cluster). Each Service remembers the objects it was built from; the reflectors hand
//! out the same `Arc` for an object that did not change, so a pointer comparison finds the
//! Services to rebuild. Only their fragments (set elements and chains) are recomputed and
//! diffed, and the result is replayed on the kept IR, which therefore always equals what a
//! full build of the same objects gives, up to the order of the endpoint slots under each
//! key (the agent keeps slots stable; tests check this). Anything that is not one
//! Service's business (node, families, CIDRs) changing, or two Services claiming one key
//! with different data, falls back to a full rebuild.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use crate::model::options::Options;
use crate::model::{self, Model, ServicePort, SvcKey};
use crate::objects::input::ClusterObjects;
use crate::objects::{EndpointSlice, Endpoints, Meta, Object, Service};
use crate::ruleset::diff;
use crate::ruleset::ir::{ElementData, Family, Ruleset, Set, Table, Value};
use crate::ruleset::tx::{replay, Transaction};
use crate::ruleset::{
    assemble, count_sets, fragment, selection_chains, sort_sets, Fragment, SlotCounts, SlotOrders,
};
use crate::vocab::Note;

/// The objects of the last update, sorted as `ClusterObjects::sort` sorts them, and the
/// endpoint objects grouped by the Service they belong to (slices in name order, as a full
/// build sees them). Comparing the next snapshot against these finds what changed with a
/// pointer comparison per unchanged object: the reflectors hand out the same `Arc` for an
/// object that did not change (and these copies keep the old ones alive, so an address
/// cannot be reused by a new object).
#[derive(Default)]
struct Inputs {
    services: Vec<Arc<Service>>,
    slices: Vec<Arc<EndpointSlice>>,
    endpoints: Vec<Arc<Endpoints>>,
    slices_of: HashMap<SvcKey, Vec<Arc<EndpointSlice>>>,
    endpoints_of: HashMap<SvcKey, Arc<Endpoints>>,
}

impl Inputs {
    fn of(objects: &ClusterObjects, notes: &mut Vec<Note>) -> Inputs {
        let owned = |k: model::ObjKey| (k.0.to_string(), k.1.to_string());
        Inputs {
            services: objects.services.clone(),
            slices: objects.endpoint_slices.clone(),
            endpoints: objects.endpoints.clone(),
            slices_of: model::group_slices(objects, notes)
                .into_iter()
                .map(|(k, v)| (owned(k), v.into_iter().cloned().collect()))
                .collect(),
            endpoints_of: model::legacy_by_service(objects)
                .into_iter()
                .map(|(k, v)| (owned(k), v.clone()))
                .collect(),
        }
    }

    /// The first Service object named `key` (a duplicate loses, as in `render`).
    fn service(&self, key: &SvcKey) -> Option<&Arc<Service>> {
        let k = (key.0.as_str(), key.1.as_str());
        let at = self
            .services
            .partition_point(|s| model::obj_key(&s.metadata).is_none_or(|o| o < k));
        self.services
            .get(at)
            .filter(|s| model::obj_key(&s.metadata) == Some(k))
    }

    /// Moves to `objects` and returns the keys of the Services whose inputs changed.
    fn advance(&mut self, objects: &ClusterObjects) -> BTreeSet<SvcKey> {
        let mut affected = BTreeSet::new();
        let key = |m: &Meta| model::obj_key(m).map(|(a, b)| (a.to_string(), b.to_string()));
        for (old, new) in changes(&self.services, &objects.services) {
            affected.extend(old.and_then(|o| key(&o.metadata)));
            affected.extend(new.and_then(|n| key(&n.metadata)));
        }
        for (old, new) in changes(&self.endpoints, &objects.endpoints) {
            for e in old.iter().chain(new.iter()) {
                if let Some(k) = key(&e.metadata) {
                    self.endpoints_of.remove(&k);
                    affected.insert(k);
                }
            }
        }
        for (old, new) in changes(&self.slices, &objects.endpoint_slices) {
            if let Some(o) = old {
                if let Some(k) = owner(&o) {
                    if let Some(list) = self.slices_of.get_mut(&k) {
                        list.retain(|s| !Arc::ptr_eq(s, &o));
                    }
                    affected.insert(k);
                }
            }
            if let Some(n) = new {
                if let Some(k) = owner(&n) {
                    let list = self.slices_of.entry(k.clone()).or_default();
                    let name = n.metadata.name.as_deref();
                    let at = list.partition_point(|s| s.metadata.name.as_deref() <= name);
                    list.insert(at, n);
                    affected.insert(k);
                }
            }
        }
        self.slices_of.retain(|_, v| !v.is_empty());
        // Endpoints objects are few and whole; regrouping the affected ones keeps the
        // first-copy rule of `legacy_by_service`.
        for e in &objects.endpoints {
            if let Some(k) = key(&e.metadata) {
                if affected.contains(&k) && !self.endpoints_of.contains_key(&k) {
                    self.endpoints_of.insert(k, e.clone());
                }
            }
        }
        self.services = objects.services.clone();
        self.slices = objects.endpoint_slices.clone();
        self.endpoints = objects.endpoints.clone();
        affected
    }
}

/// The Service an EndpointSlice belongs to, if the model uses it at all (the filter of
/// `model::group_slices`).
fn owner(s: &EndpointSlice) -> Option<SvcKey> {
    if !matches!(&*s.address_type, "IPv4" | "IPv6") {
        return None;
    }
    let svc = s.service_name.as_deref()?;
    Some((s.metadata.namespace.as_deref()?.into(), svc.into()))
}

/// An object before and after; `None` on the side where it does not exist.
type Change<T> = (Option<Arc<T>>, Option<Arc<T>>);

/// The differences between two lists sorted by namespace and name: (old, new) pairs, one
/// side `None` for an added or removed object. Equal pointers are skipped without looking
/// at names, so an unchanged list costs one comparison per object.
fn changes<T: Object>(old: &[Arc<T>], new: &[Arc<T>]) -> Vec<Change<T>> {
    use std::cmp::Ordering;
    let name = |o: &Arc<T>| {
        let m = o.metadata();
        (m.namespace.clone(), m.name.clone())
    };
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    loop {
        match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) if Arc::ptr_eq(a, b) => {
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) => match name(a).cmp(&name(b)) {
                Ordering::Less => {
                    out.push((Some(a.clone()), None));
                    i += 1;
                }
                Ordering::Greater => {
                    out.push((None, Some(b.clone())));
                    j += 1;
                }
                Ordering::Equal => {
                    out.push((Some(a.clone()), Some(b.clone())));
                    i += 1;
                    j += 1;
                }
            },
            (Some(a), None) => {
                out.push((Some(a.clone()), None));
                i += 1;
            }
            (None, Some(b)) => {
                out.push((None, Some(b.clone())));
                j += 1;
            }
            (None, None) => return out,
        }
    }
}

/// A touched element: as it was, and its claim count and data as a change goes along.
type Touched = (Presence, u32, Option<ElementData>);

type ClaimKey = (Family, &'static str, Vec<Value>);

/// What one sync has to do.
#[derive(Debug)]
pub struct Update {
    pub tx: Transaction,
    /// Whether `tx` replaces the tables wholesale.
    pub full: bool,
    /// For a partial update: the models before and after, holding only the Services that
    /// changed (enough to find stale conntrack entries).
    pub changed: Option<(Model, Model)>,
    /// Objects left out, for the log.
    pub notes: Vec<Note>,
}

pub struct Desired {
    opts: Options,
    globals: Option<Model>,
    inputs: Inputs,
    /// The ports each Service gave.
    services: BTreeMap<SvcKey, Vec<ServicePort>>,
    /// How many Services beyond the first ask for a set element, for the few elements that
    /// more than one Service asks for (with the same data). The element itself, and so the
    /// first claim, is in the IR: a second map of every element cost 27 MB at 10k.
    extra_claims: HashMap<ClaimKey, u32>,
    /// How many Service IPs and NodePorts have each endpoint count, per family and endpoint
    /// map: each count in use has its own endpoint map and selection chain.
    slots: HashMap<(Family, &'static str, u32), u32>,
    /// Keys two Services claimed with different data (the first in order won, the other
    /// got a note). Which one wins depends on the order of all Services, so a change that
    /// claims or releases one of these keys takes a full rebuild; every other change stays
    /// partial (one conflict must not put the node into full-sync mode).
    conflicts: HashSet<ClaimKey>,
    /// Where each Service's endpoints sit in the endpoint maps, per family: handed back to
    /// the builder so an endpoint keeps its slot while it exists (one endpoint replaced is
    /// one element changed per key, not every slot renumbered), through partial and full
    /// syncs alike. With these the old fragment of a Service is rebuilt exactly as the kept
    /// IR holds it. The kept IR therefore equals a fresh render up to the order of the
    /// slots under each key (`ruleset::canonical_slots`).
    orders: HashMap<(Family, SvcKey), SlotOrders>,
    ruleset: Ruleset,
}

/// An element as it stands before or after a change: absent, or present with its data.
type Presence = Option<Option<ElementData>>;

impl Desired {
    pub fn new(opts: Options) -> Desired {
        Desired {
            opts,
            globals: None,
            inputs: Inputs::default(),
            services: BTreeMap::new(),
            extra_claims: HashMap::new(),
            slots: HashMap::new(),
            conflicts: HashSet::new(),
            orders: HashMap::new(),
            ruleset: Ruleset::default(),
        }
    }

    /// The endpoint counts in use in family `f`'s table.
    fn slot_counts(&self, f: Family) -> SlotCounts {
        let mut out = SlotCounts::new();
        for ((fam, map, n), count) in &self.slots {
            if *fam == f && *count > 0 {
                out.entry(*map).or_default().insert(*n);
            }
        }
        out
    }

    /// The IR as of the last update.
    pub fn ruleset(&self) -> &Ruleset {
        &self.ruleset
    }

    /// How many Services the state holds.
    pub fn services(&self) -> usize {
        self.services.len()
    }

    /// The model as of the last update, holding only the Service ports `keep` accepts
    /// (copying all of them at 10,000 Services costs tens of MB).
    pub fn model_where(&self, keep: impl Fn(&ServicePort) -> bool) -> Model {
        let mut m = self.globals.clone().unwrap_or_else(|| {
            model::globals(&ClusterObjects::default(), &self.opts, &mut Vec::new())
        });
        m.services = self
            .services
            .values()
            .flat_map(|ports| ports.iter().filter(|p| keep(p)).cloned())
            .collect();
        m
    }

    /// Moves the state to `objects` and returns the transaction that moves the kernel
    /// along: partial when possible, full when `full` is asked for or needed. `objects`
    /// must be sorted (`ClusterObjects::sort`), as reflector snapshots and `render` inputs
    /// are: changes are found by walking the old and new lists side by side.
    pub fn update(&mut self, objects: &ClusterObjects, full: bool) -> Update {
        let mut notes = Vec::new();
        let globals = model::globals(objects, &self.opts, &mut notes);
        if full || self.globals.as_ref() != Some(&globals) {
            return self.rebuild(objects, globals, notes);
        }
        match self.partial(objects, &globals, &mut notes) {
            Some((tx, changed)) => Update {
                tx,
                full: false,
                changed: Some(changed),
                notes,
            },
            None => self.rebuild(objects, globals, notes),
        }
    }

    fn rebuild(
        &mut self,
        objects: &ClusterObjects,
        globals: Model,
        mut notes: Vec<Note>,
    ) -> Update {
        let inputs = Inputs::of(objects, &mut notes);
        let mut services = BTreeMap::new();
        for svc in &objects.services {
            let Some(k) = model::obj_key(&svc.metadata) else {
                continue;
            };
            let key = (k.0.to_string(), k.1.to_string());
            if services.contains_key(&key) {
                continue; // a duplicate: the first copy is used, as in `render`
            }
            let ports = entry_ports(&inputs, &globals, &key, svc, &mut notes);
            services.insert(key, ports);
        }
        let mut extra_claims: HashMap<ClaimKey, u32> = HashMap::new();
        let mut slots: HashMap<(Family, &'static str, u32), u32> = HashMap::new();
        let mut conflicts = HashSet::new();
        let mut orders = HashMap::new();
        let mut tables = Vec::new();
        for &f in &globals.families {
            let mut fragments: Vec<Fragment> = Vec::with_capacity(services.len());
            for (key, ports) in &services {
                let k = (f, key.clone());
                let mut fr = fragment(&globals, f, ports, self.orders.get(&k));
                if !fr.orders.is_empty() {
                    orders.insert(k, std::mem::take(&mut fr.orders));
                }
                fragments.push(fr);
            }
            for (map, n) in fragments.iter().flat_map(|fr| fr.slots.iter()) {
                *slots.entry((f, map, *n)).or_default() += 1;
            }
            let a = assemble(&globals, f, fragments, &mut notes);
            for (set, key) in a.shared {
                *extra_claims.entry((f, set, key)).or_default() += 1;
            }
            conflicts.extend(a.conflicts.into_iter().map(|(set, key)| (f, set, key)));
            tables.push(a.table);
        }
        self.ruleset = Ruleset { tables };
        self.inputs = inputs;
        self.services = services;
        self.extra_claims = extra_claims;
        self.slots = slots;
        self.conflicts = conflicts;
        self.orders = orders;
        self.globals = Some(globals);
        Update {
            tx: diff::full_by_reference(&self.ruleset),
            full: true,
            changed: None,
            notes,
        }
    }

    /// The partial transaction, or `None` when only a full rebuild is exact.
    fn partial(
        &mut self,
        objects: &ClusterObjects,
        globals: &Model,
        notes: &mut Vec<Note>,
    ) -> Option<(Transaction, (Model, Model))> {
        let affected = self.inputs.advance(objects);
        let mut changed: Vec<(SvcKey, Option<Vec<ServicePort>>)> = Vec::new();
        for key in affected {
            let ports = (self.inputs.service(&key))
                .map(|svc| entry_ports(&self.inputs, globals, &key, svc, notes));
            if ports.is_some() || self.services.contains_key(&key) {
                changed.push((key, ports));
            }
        }
        if changed.is_empty() {
            return Some((Transaction::default(), (globals.clone(), globals.clone())));
        }

        let mut tx = Transaction::default();
        let mut orders = Vec::new();
        for &f in &globals.families {
            // Both sides start from the slot orders the kept IR has: the old fragment is
            // then exactly what the IR holds, the new one moves as few slots as it can.
            let prev = |k: &SvcKey| self.orders.get(&(f, k.clone()));
            let old: Vec<Fragment> = changed
                .iter()
                .filter_map(|(k, _)| Some(fragment(globals, f, self.services.get(k)?, prev(k))))
                .collect();
            let mut new: Vec<Fragment> = Vec::new();
            for (k, ports) in &changed {
                if let Some(ports) = ports {
                    let mut fr = fragment(globals, f, ports, prev(k));
                    orders.push(((f, k.clone()), std::mem::take(&mut fr.orders)));
                    new.push(fr);
                }
            }
            let table = self.ruleset.tables.iter().find(|t| t.family == f)?;
            let shape = Table {
                family: table.family,
                name: table.name.clone(),
                comment: table.comment.clone(),
                sets: table.sets.iter().map(Set::declaration).collect(),
                chains: Vec::new(),
            };
            let (old_table, new_table) = self.claim(f, shape, old, new)?;
            let step = diff::diff(
                &Ruleset {
                    tables: vec![old_table],
                },
                &Ruleset {
                    tables: vec![new_table],
                },
            );
            tx.ops.extend(step.ops);
        }
        if let Err(e) = replay(&mut self.ruleset, &tx) {
            tracing::error!(error = %e, "partial transaction does not fit the kept IR; full sync");
            return None;
        }
        for &f in &globals.families {
            for (k, _) in &changed {
                self.orders.remove(&(f, k.clone()));
            }
        }
        self.orders
            .extend(orders.into_iter().filter(|(_, o)| !o.is_empty()));

        let mut before = globals.clone();
        let mut after = globals.clone();
        for (key, ports) in changed {
            let old = match ports {
                Some(ports) => {
                    after.services.extend(ports.iter().cloned());
                    self.services.insert(key, ports)
                }
                None => self.services.remove(&key),
            };
            if let Some(old) = old {
                before.services.extend(old);
            }
        }
        Some((tx, (before, after)))
    }

    /// Moves the claim counts from the `old` fragments to the `new` ones and returns two
    /// partial tables to diff: the touched elements and the chains as they were and as they
    /// become. `None` on a conflicting claim.
    fn claim(
        &mut self,
        f: Family,
        shape: Table,
        old: Vec<Fragment>,
        new: Vec<Fragment>,
    ) -> Option<(Table, Table)> {
        // Per touched key: as it was (from the kept IR), and the claim count and data as
        // the change goes along.
        let mut touched: BTreeMap<(&'static str, Vec<Value>), Touched> = BTreeMap::new();
        let table = self.ruleset.tables.iter().find(|t| t.family == f)?;
        let extra = &self.extra_claims;
        let current = |set: &'static str, key: &Vec<Value>| match table
            .set(set)
            .and_then(|s| s.elements.get(key))
        {
            Some(data) => {
                let more = extra.get(&(f, set, key.clone())).copied().unwrap_or(0);
                (Some(data.clone()), 1 + more, data.clone())
            }
            None => (None, 0, None),
        };
        let conflicts = &self.conflicts;
        if (old.iter().chain(new.iter()))
            .flat_map(|fr| &fr.claims)
            .any(|c| !conflicts.is_empty() && conflicts.contains(&(f, c.set, c.key.clone())))
        {
            return None;
        }
        for c in old.iter().flat_map(|fr| &fr.claims) {
            let t =
                (touched.entry((c.set, c.key.clone()))).or_insert_with(|| current(c.set, &c.key));
            if t.1 == 0 {
                return None; // the old Service claimed it, so it must be there
            }
            t.1 -= 1;
        }
        for c in new.iter().flat_map(|fr| &fr.claims) {
            let t =
                (touched.entry((c.set, c.key.clone()))).or_insert_with(|| current(c.set, &c.key));
            if t.1 > 0 && t.2 != c.data {
                return None;
            }
            t.1 += 1;
            t.2 = c.data.clone();
        }

        let (mut before, mut after) = (shape.clone(), shape);
        // The selection chains change only when an endpoint count comes into or goes out
        // of use; an endpoint change within a count touches map elements alone.
        let counts_before = self.slot_counts(f);
        for fr in &old {
            for (map, n) in &fr.slots {
                if let Some(c) = self.slots.get_mut(&(f, map, *n)) {
                    *c -= 1;
                }
            }
        }
        for fr in &new {
            for (map, n) in &fr.slots {
                *self.slots.entry((f, map, *n)).or_default() += 1;
            }
        }
        self.slots.retain(|_, c| *c > 0);
        let counts_after = self.slot_counts(f);
        // Sets that come and go with the change: the old fragments' affinity sets make
        // way for the new ones' (the same name and declaration is kept, with what the
        // datapath remembered in it), and the per-count endpoint maps follow the counts.
        let mut gone: BTreeSet<String> = (old.iter().flat_map(|fr| &fr.sets))
            .map(|s| s.name.clone())
            .collect();
        let mut added: Vec<Set> = (new.iter().flat_map(|fr| &fr.sets))
            .map(Set::declaration)
            .collect();
        if counts_before != counts_after {
            // A count coming into use brings its endpoint map and chain; one going out of
            // use takes them away. (A partial sync runs only with unchanged globals, so the
            // masquerade mark, and with it the miss mark, is the kept IR's.)
            let mark = (self.globals.as_ref()).map_or(0, |g| g.masquerade_mark);
            let miss = crate::ruleset::miss_mark(mark);
            before.chains.extend(selection_chains(&counts_before, miss));
            after.chains.extend(selection_chains(&counts_after, miss));
            gone.extend(count_sets(&counts_before).into_iter().map(|s| s.name));
            added.extend(count_sets(&counts_after));
        }
        if !gone.is_empty() || !added.is_empty() {
            // A set redeclared under its name (an affinity timeout changed) cannot be
            // changed in place: the full sync replaces it.
            let redeclared = added
                .iter()
                .any(|s| (before.sets.iter()).any(|b| b.name == s.name && b.declaration() != *s));
            if redeclared {
                return None;
            }
            after.sets.retain(|s| !gone.contains(&s.name));
            for s in added {
                if !after.sets.iter().any(|x| x.name == s.name) {
                    after.sets.push(s);
                }
            }
            sort_sets(&mut after.sets);
        }
        for ((set, key), (was, count, data)) in touched {
            let now = (count > 0).then_some(data);
            if count > 1 {
                self.extra_claims.insert((f, set, key.clone()), count - 1);
            } else {
                self.extra_claims.remove(&(f, set, key.clone()));
            }
            let put = |t: &mut Table, p: Presence| {
                if let (Some(data), Some(s)) = (p, t.sets.iter_mut().find(|s| s.name == set)) {
                    s.elements.insert(key.clone(), data);
                }
            };
            put(&mut before, was);
            put(&mut after, now);
        }
        // The old fragments are rebuilt from the old ports, so their chains are exactly
        // the ones the kept IR holds.
        for fr in old {
            before.chains.extend(fr.chains);
        }
        for fr in new {
            after.chains.extend(fr.chains);
        }
        Some((before, after))
    }
}

/// The ports of Service `key` from the grouped inputs.
fn entry_ports(
    inputs: &Inputs,
    globals: &Model,
    key: &SvcKey,
    svc: &Service,
    notes: &mut Vec<Note>,
) -> Vec<ServicePort> {
    let slices = inputs.slices_of.get(key).map(Vec::as_slice).unwrap_or(&[]);
    let legacy = inputs.endpoints_of.get(key).map(|e| &**e);
    model::service(globals, svc, slices, legacy, notes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::tx::Op;
    use serde_json::{json, Value};

    fn opts() -> Options {
        Options {
            hostname: "node-a".into(),
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            ..Options::default()
        }
    }

    /// Service `i` in one of several shapes, so that every kind of chain and element shows
    /// up: plain, UDP, NodePort with eTP=Local, LoadBalancer with source ranges, affinity.
    fn service(i: usize, variant: usize) -> Value {
        let mut spec = json!({
            "clusterIP": format!("10.96.0.{}", i + 1),
            "ports": [{"name": "p", "port": 80, "protocol": "TCP", "targetPort": 8080}]
        });
        match (i + variant) % 5 {
            1 => spec["ports"][0]["protocol"] = json!("UDP"),
            2 => {
                spec["type"] = json!("NodePort");
                spec["externalTrafficPolicy"] = json!("Local");
                spec["ports"][0]["nodePort"] = json!(30000 + i);
            }
            3 => {
                spec["type"] = json!("LoadBalancer");
                spec["loadBalancerSourceRanges"] = json!(["192.0.2.0/24"]);
                spec["ports"][0]["nodePort"] = json!(31000 + i);
            }
            4 => spec["sessionAffinity"] = json!("ClientIP"),
            _ => {}
        }
        let mut svc = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("s{i}"), "namespace": "ns"}, "spec": spec});
        if (i + variant) % 5 == 3 {
            svc["status"] =
                json!({"loadBalancer": {"ingress": [{"ip": format!("203.0.113.{}", i + 1)}]}});
        }
        svc
    }

    fn slice(i: usize, endpoints: &[usize]) -> Value {
        let proto = if i % 5 == 1 { "UDP" } else { "TCP" };
        let eps: Vec<Value> = endpoints
            .iter()
            .map(|e| {
                json!({"addresses": [format!("10.244.{}.{}", e % 2, e)],
                       "conditions": {"ready": true},
                       "nodeName": if e % 2 == 0 { "node-a" } else { "node-b" }})
            })
            .collect();
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("s{i}-x"), "namespace": "ns",
                         "labels": {"kubernetes.io/service-name": format!("s{i}")}},
            "addressType": "IPv4", "endpoints": eps,
            "ports": [{"name": "p", "port": 8080, "protocol": proto}]})
    }

    fn node(ip: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
               "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})
    }

    fn objects_of(docs: &[Value]) -> ClusterObjects {
        let mut o = ClusterObjects::default();
        let text =
            serde_json::to_string(&json!({"kind": "List", "apiVersion": "v1", "items": docs}))
                .unwrap();
        o.add_text("t", &text, &mut vec![]).unwrap();
        o.sort();
        o
    }

    /// Replaces (or adds) the objects of `docs` in `o`, keeping every other object's `Arc`,
    /// as a reflector store does.
    fn with(o: &ClusterObjects, docs: &[Value]) -> ClusterObjects {
        let new = objects_of(docs);
        let mut out = o.clone();
        fn merge<T: Object>(into: &mut Vec<Arc<T>>, from: &[Arc<T>]) {
            for n in from {
                let key = |x: &T| (x.metadata().namespace.clone(), x.metadata().name.clone());
                into.retain(|x| key(x) != key(n));
                into.push(n.clone());
            }
        }
        merge(&mut out.services, &new.services);
        merge(&mut out.endpoint_slices, &new.endpoint_slices);
        merge(&mut out.endpoints, &new.endpoints);
        merge(&mut out.nodes, &new.nodes);
        out.sort();
        out
    }

    /// v1 Endpoints for Service `i` (used only while it has no EndpointSlice).
    fn legacy(i: usize, endpoints: &[usize]) -> Value {
        let addresses: Vec<Value> = endpoints
            .iter()
            .map(|e| json!({"ip": format!("10.244.2.{e}"), "nodeName": "node-a"}))
            .collect();
        json!({"apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": format!("s{i}"), "namespace": "ns"},
            "subsets": [{"addresses": addresses,
                         "ports": [{"name": "p", "port": 8080, "protocol": if i % 5 == 1 { "UDP" } else { "TCP" }}]}]})
    }

    fn without_slice(o: &ClusterObjects, i: usize) -> ClusterObjects {
        let mut out = o.clone();
        let name = format!("s{i}-x");
        out.endpoint_slices
            .retain(|s| s.metadata.name.as_deref() != Some(name.as_str()));
        out
    }

    fn without_service(o: &ClusterObjects, i: usize) -> ClusterObjects {
        let mut out = o.clone();
        let name = format!("s{i}");
        out.services
            .retain(|s| s.metadata.name.as_deref() != Some(name.as_str()));
        out
    }

    /// `rs` with each endpoint map key's slots in value order; fails unless every key of
    /// `…-endpoints-N` has exactly slots 0..N-1.
    fn canonical(rs: &Ruleset) -> Ruleset {
        crate::ruleset::canonical_slots(rs).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The kept IR is compared with a fresh render modulo the slot order under each key:
    /// the agent keeps endpoints in their slots (stable slots) where render numbers them in
    /// address order. What must hold is the same endpoints under every key, in slots
    /// 0..N-1 all present, and everything else equal. The replayed transaction must give
    /// the kept IR exactly.
    fn check(d: &mut Desired, o: &ClusterObjects, expect_full: bool) -> Update {
        let before = d.ruleset().clone();
        let u = d.update(o, false);
        let (rendered, _) = crate::ruleset::render::ruleset(o, &opts());
        assert_eq!(
            canonical(d.ruleset()),
            canonical(&rendered),
            "kept IR differs from a fresh render"
        );
        assert_eq!(u.full, expect_full);
        if !u.full {
            let mut replayed = before;
            replay(&mut replayed, &u.tx).unwrap();
            assert_eq!(&replayed, d.ruleset());
        }
        u
    }

    fn start(n: usize) -> (Desired, ClusterObjects) {
        let mut docs = vec![node("192.168.0.10")];
        for i in 0..n {
            docs.push(service(i, 0));
            docs.push(slice(i, &[i * 3, i * 3 + 1, i * 3 + 2]));
        }
        let o = objects_of(&docs);
        let mut d = Desired::new(opts());
        let u = check(&mut d, &o, true);
        assert!(u.changed.is_none());
        (d, o)
    }

    fn chains_touched(tx: &Transaction) -> std::collections::BTreeSet<String> {
        tx.ops
            .iter()
            .filter_map(|op| match op {
                Op::AddChain { chain, .. } => Some(chain.name.clone()),
                Op::FlushChain { chain, .. }
                | Op::DeleteChain { chain, .. }
                | Op::AddRule { chain, .. } => Some(chain.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn nothing_changed_gives_an_empty_partial_transaction() {
        let (mut d, o) = start(10);
        let u = check(&mut d, &o.clone(), false);
        assert!(u.tx.is_empty());
    }

    fn sets_touched(tx: &Transaction) -> std::collections::BTreeSet<String> {
        tx.ops
            .iter()
            .filter_map(|op| match op {
                Op::AddElements { set, .. } | Op::DeleteElements { set, .. } => Some(set.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn one_endpoint_change_touches_map_elements_only() {
        let (mut d, o) = start(10);
        // s0's endpoints 0, 1, 2 become 0, 1, 99: the count stays 3, so no rule changes
        // (a commit that adds rules makes the kernel revalidate the whole table).
        let o2 = with(&o, &[slice(0, &[0, 1, 99])]);
        let u = check(&mut d, &o2, false);
        assert!(chains_touched(&u.tx).is_empty(), "{:#?}", u.tx);
        // endpoint 2 was on this node (a hairpin entry), 99 is not
        assert_eq!(
            sets_touched(&u.tx),
            ["hairpin-connections", "service-endpoints-3"]
                .map(String::from)
                .into()
        );
        let (before, after) = u.changed.unwrap();
        assert_eq!(before.services.len(), 1);
        assert_eq!(after.services[0].endpoints.len(), 3);

        // A count no Service had before adds its map and its selection chain, and the
        // Service's entries move to that map; no other chain changes.
        let o3 = with(&o2, &[slice(0, &[0, 1, 99, 101])]);
        let u = check(&mut d, &o3, false);
        let touched = chains_touched(&u.tx);
        assert!(
            touched.contains("select-service-endpoints-4"),
            "{touched:?}"
        );
        assert!(
            touched.iter().all(|c| c.starts_with("select-")),
            "{touched:?}"
        );
        let rules: Vec<String> = (u.tx.ops.iter())
            .filter_map(|op| match op {
                Op::AddRule { rule, .. } => Some(crate::nft::text::rule_text(Family::V4, rule)),
                _ => None,
            })
            .collect();
        assert!(
            rules[0].contains("numgen random mod 4 map @service-endpoints-4"),
            "{rules:?}"
        );
        assert!(u
            .tx
            .ops
            .iter()
            .any(|op| matches!(op, Op::AddSet { set, .. } if set.name == "service-endpoints-4")));
    }

    /// A LoadBalancer Service with a NodePort, an external IP and a load-balancer IP: four
    /// keys (ClusterIP, external IP, LB IP, NodePort) in the endpoint maps.
    fn lb_service() -> Value {
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "s0", "namespace": "ns"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.1",
                     "externalIPs": ["198.51.100.7"],
                     "ports": [{"name": "p", "port": 80, "protocol": "TCP",
                                "targetPort": 8080, "nodePort": 30080}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.1"}]}}})
    }

    /// Endpoints `1, 3, 5, ...`: odd, so on node-b (no hairpin elements change).
    fn odd(n: usize) -> Vec<usize> {
        (0..n).map(|i| 2 * i + 1).collect()
    }

    /// The endpoint addresses under `key` in map `set`, by slot.
    fn slots_of(d: &Desired, set: &str, key: &[crate::ruleset::ir::Value]) -> Vec<String> {
        let t = &d.ruleset().tables[0];
        let s = t.set(set).unwrap_or_else(|| panic!("no set {set}"));
        let mut out: Vec<(u32, String)> = (s.elements.iter())
            .filter(|(k, _)| k.starts_with(key) && k.len() == key.len() + 1)
            .map(|(k, data)| {
                let Some(crate::ruleset::ir::Value::Slot(n)) = k.last() else {
                    panic!("{k:?}")
                };
                let Some(ElementData::Values(v)) = data else {
                    panic!("{data:?}")
                };
                (*n, v[0].to_string())
            })
            .collect();
        out.sort();
        let slots: Vec<u32> = out.iter().map(|x| x.0).collect();
        assert_eq!(slots, (0..slots.len() as u32).collect::<Vec<_>>());
        out.into_iter().map(|x| x.1).collect()
    }

    fn cluster_ip_key() -> Vec<crate::ruleset::ir::Value> {
        use crate::ruleset::ir::Value as V;
        vec![
            V::Addr("10.96.0.1".parse().unwrap()),
            V::Proto(crate::vocab::Proto::Tcp),
            V::Port(80),
        ]
    }

    /// (set, element key) of every element op in `tx`, with `+` for an add, `-` for a
    /// delete.
    fn element_ops(tx: &Transaction) -> Vec<(char, String, Vec<crate::ruleset::ir::Value>)> {
        let mut out = Vec::new();
        for op in &tx.ops {
            match op {
                Op::AddElements { set, elements, .. } => {
                    out.extend(elements.iter().map(|e| ('+', set.clone(), e.key.clone())))
                }
                Op::DeleteElements { set, elements, .. } => {
                    out.extend(elements.iter().map(|e| ('-', set.clone(), e.key.clone())))
                }
                _ => {}
            }
        }
        out
    }

    #[test]
    fn replacing_one_endpoint_is_one_delete_and_one_add_per_key() {
        let o = objects_of(&[node("192.168.0.10"), lb_service(), slice(0, &odd(10))]);
        let mut d = Desired::new(opts());
        check(&mut d, &o, true);
        let before = slots_of(&d, "service-endpoints-10", &cluster_ip_key());
        // An endpoint in the middle is replaced by one sorting last: address order would
        // shift every slot after it.
        let mut eps = odd(10);
        eps[5] = 99;
        let o2 = with(&o, &[slice(0, &eps)]);
        let u = check(&mut d, &o2, false);
        let ops = element_ops(&u.tx);
        assert!(
            u.tx.ops
                .iter()
                .all(|op| matches!(op, Op::AddElements { .. } | Op::DeleteElements { .. })),
            "{:#?}",
            u.tx
        );
        // 4 keys (ClusterIP, external IP, LB IP, NodePort) x (one delete + one add), all
        // at the slot the replaced endpoint had.
        assert_eq!(ops.len(), 8, "{ops:#?}");
        let gone = before
            .iter()
            .position(|a| a == "10.244.1.11")
            .expect("endpoint 11 was there") as u32;
        for (sign, set, key) in &ops {
            assert!(
                set == "service-endpoints-10" || set == "nodeport-endpoints-10",
                "{sign}{set}"
            );
            assert_eq!(
                key.last(),
                Some(&crate::ruleset::ir::Value::Slot(gone)),
                "{ops:#?}"
            );
        }
        for sign in ['+', '-'] {
            let keys: std::collections::BTreeSet<_> = (ops.iter())
                .filter(|o| o.0 == sign)
                .map(|o| (&o.1, &o.2))
                .collect();
            assert_eq!(keys.len(), 4, "{sign}: {ops:#?}");
        }
        let after = slots_of(&d, "service-endpoints-10", &cluster_ip_key());
        for (i, (a, b)) in before.iter().zip(&after).enumerate() {
            if i as u32 == gone {
                assert_eq!(b, "10.244.1.99");
            } else {
                assert_eq!(a, b, "slot {i} moved");
            }
        }
    }

    #[test]
    fn removing_an_endpoint_moves_the_last_slot_into_its_hole() {
        let o = objects_of(&[node("192.168.0.10"), lb_service(), slice(0, &odd(10))]);
        let mut d = Desired::new(opts());
        check(&mut d, &o, true);
        let before = slots_of(&d, "service-endpoints-10", &cluster_ip_key());
        // The endpoint in slot 3 goes away.
        let addr = |e: &usize| format!("10.244.1.{e}");
        let mut eps = odd(10);
        eps.retain(|e| addr(e) != before[3]);
        assert_eq!(eps.len(), 9);
        check(&mut d, &with(&o, &[slice(0, &eps)]), false);
        let after = slots_of(&d, "service-endpoints-9", &cluster_ip_key());
        let mut want = before.clone();
        want.swap_remove(3);
        assert_eq!(after, want);
        // The NodePort key has the same slots.
        use crate::ruleset::ir::Value as V;
        let np = [V::Proto(crate::vocab::Proto::Tcp), V::Port(30080)];
        assert_eq!(slots_of(&d, "nodeport-endpoints-9", &np), want);
        // The one in the last slot removed: nothing else moves.
        eps.retain(|e| Some(&addr(e)) != want.last());
        assert_eq!(eps.len(), 8);
        check(&mut d, &with(&o, &[slice(0, &eps)]), false);
        want.pop();
        assert_eq!(slots_of(&d, "service-endpoints-8", &cluster_ip_key()), want);
    }

    #[test]
    fn an_added_endpoint_appends_and_fills_holes_first() {
        let o = objects_of(&[node("192.168.0.10"), lb_service(), slice(0, &odd(10))]);
        let mut d = Desired::new(opts());
        check(&mut d, &o, true);
        let before = slots_of(&d, "service-endpoints-10", &cluster_ip_key());
        // 97 sorts before most of the others: it still goes last.
        let mut eps = odd(10);
        eps.push(97);
        let o2 = with(&o, &[slice(0, &eps)]);
        check(&mut d, &o2, false);
        let mut want = before.clone();
        want.push("10.244.1.97".into());
        assert_eq!(
            slots_of(&d, "service-endpoints-11", &cluster_ip_key()),
            want
        );
        // Two replaced by three: the two holes are filled (in address order), the third
        // appends; everything else stays.
        let mut eps2 = eps.clone();
        eps2.retain(|e| *e != 3 && *e != 13);
        eps2.extend([51, 41, 61]);
        check(&mut d, &with(&o2, &[slice(0, &eps2)]), false);
        let after = slots_of(&d, "service-endpoints-12", &cluster_ip_key());
        let hole = |a: &str| want.iter().position(|w| w == a).unwrap();
        let mut want2 = want.clone();
        let (h1, h2) = (hole("10.244.1.3"), hole("10.244.1.13"));
        want2[h1.min(h2)] = "10.244.1.41".into();
        want2[h1.max(h2)] = "10.244.1.51".into();
        want2.push("10.244.1.61".into());
        assert_eq!(after, want2);
        // A full rebuild (the node changes) keeps the slots too.
        let o3 = with(&with(&o2, &[slice(0, &eps2)]), &[node("192.168.0.11")]);
        check(&mut d, &o3, true);
        assert_eq!(
            slots_of(&d, "service-endpoints-12", &cluster_ip_key()),
            want2
        );
    }

    #[test]
    fn every_kind_of_change_keeps_the_ir_equal_to_a_fresh_render() {
        let (mut d, mut o) = start(12);
        // Each step: the objects after it, and whether it needs a full rebuild.
        for step in 0..40 {
            let i = (step * 7) % 12;
            let next = match step % 8 {
                0 => with(&o, &[slice(i, &[i * 3 + 1])]),
                1 => with(&o, &[slice(i, &[])]),
                2 => with(&o, &[service(i, step)]),
                3 => without_service(&o, i),
                4 => with(&o, &[service(i, 0), slice(i, &[i * 3, 200 + step])]),
                5 => with(&o, &[slice(i, &[i * 3, i * 3 + 1, i * 3 + 2, 300 + step])]),
                6 => with(&o, &[service(40 + step, step), slice(40 + step, &[step])]),
                7 if step % 16 == 7 => {
                    // The slice moves to another Service, and v1 Endpoints take over.
                    let mut moved = slice(i, &[i * 3]);
                    moved["metadata"]["labels"]["kubernetes.io/service-name"] =
                        json!(format!("s{}", (i + 1) % 12));
                    with(&without_slice(&o, i), &[legacy(i, &[step]), moved])
                }
                _ => {
                    // A second copy of a Service object: the first one stays in use.
                    let mut copy = service(i, step + 1);
                    copy["metadata"]["uid"] = json!("copy");
                    let mut out = o.clone();
                    out.services.extend(objects_of(&[copy]).services);
                    out.sort();
                    out
                }
            };
            check(&mut d, &next, false);
            o = next;
        }
    }

    #[test]
    fn a_conflict_takes_full_rebuilds_only_for_changes_that_touch_it() {
        let (mut d, o) = start(4);
        // s9 takes s0's ClusterIP and port with other endpoints: first in order wins.
        let mut clash = service(9, 0);
        clash["spec"]["clusterIP"] = json!("10.96.0.1");
        let o2 = with(&o, &[clash, slice(9, &[50])]);
        check(&mut d, &o2, true);
        // A change to another Service stays partial.
        let o3 = with(&o2, &[slice(1, &[7])]);
        check(&mut d, &o3, false);
        // One to a Service in the conflict is a full rebuild.
        let o3 = with(&o3, &[slice(0, &[8])]);
        check(&mut d, &o3, true);
        let o4 = without_service(&o3, 9);
        check(&mut d, &o4, true);
        let o5 = with(&o4, &[slice(1, &[8])]);
        check(&mut d, &o5, false);
    }

    #[test]
    fn affinity_sets_follow_endpoints_partially_and_a_new_timeout_rebuilds() {
        // Service 4 has session affinity (variant 0): one set per endpoint.
        let (mut d, o) = start(5);
        let affinity_sets = |d: &Desired| -> Vec<String> {
            (d.ruleset().tables[0].sets.iter())
                .filter(|s| s.flags.dynamic)
                .map(|s| s.name.clone())
                .collect()
        };
        assert_eq!(affinity_sets(&d).len(), 3, "{:?}", affinity_sets(&d));
        // One endpoint replaced: a partial sync deletes its set and adds the new one's,
        // and nothing else touches a set.
        let o2 = with(&o, &[slice(4, &[12, 13, 20])]);
        let u = check(&mut d, &o2, false);
        let set_ops: Vec<&Op> = (u.tx.ops.iter())
            .filter(|op| {
                matches!(
                    op,
                    Op::AddSet { .. } | Op::DeleteSet { .. } | Op::FlushSet { .. }
                )
            })
            .collect();
        assert_eq!(set_ops.len(), 2, "{set_ops:#?}");
        // A new timeout redeclares every set of the Service: a full rebuild.
        let mut svc = service(4, 0);
        svc["spec"]["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 60}});
        let o3 = with(&o2, &[svc]);
        check(&mut d, &o3, true);
    }

    #[test]
    fn a_node_change_is_a_full_rebuild() {
        let (mut d, o) = start(4);
        let o2 = with(&o, &[node("192.168.0.11")]);
        check(&mut d, &o2, true);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Any sequence of changes leaves the kept IR equal to a fresh render (modulo the
        /// slot order under each endpoint map key, see `check`), and every partial
        /// transaction replays onto the previous IR to give the kept IR.
        #[test]
        fn random_change_sequences_match_a_fresh_render(
            steps in proptest::collection::vec(
                (0usize..6, 0usize..10, 0usize..5, proptest::collection::vec(0usize..40, 0..5)),
                1..25,
            )
        ) {
            let (mut d, mut o) = start(6);
            for (kind, i, variant, eps) in steps {
                let next = match kind {
                    0 => with(&o, &[slice(i, &eps)]),
                    1 => with(&o, &[service(i, variant)]),
                    2 => without_service(&o, i),
                    3 => without_slice(&o, i),
                    4 => with(&o, &[legacy(i, &eps)]),
                    _ => with(&o, &[service(i, variant), slice(i, &eps)]),
                };
                let before = d.ruleset().clone();
                let u = d.update(&next, false);
                let (rendered, _) = crate::ruleset::render::ruleset(&next, &opts());
                proptest::prop_assert_eq!(canonical(d.ruleset()), canonical(&rendered));
                if !u.full {
                    let mut replayed = before;
                    replay(&mut replayed, &u.tx).unwrap();
                    proptest::prop_assert_eq!(&replayed, d.ruleset());
                }
                o = next;
            }
        }
    }
}
