//! Which endpoints a Service port uses on this node: readiness, terminating fallback,
//! traffic policies and topology hints (upstream's `CategorizeEndpoints`).

use super::{Endpoint, Family, ServicePort};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Categorized<'a> {
    /// Used for cluster-wide traffic (empty when the port only uses local endpoints).
    pub cluster: Vec<&'a Endpoint>,
    /// Used for Local traffic policies.
    pub local: Vec<&'a Endpoint>,
    /// Whether any usable endpoint exists anywhere in the cluster.
    pub has_any: bool,
}

pub fn categorize<'a>(sp: &'a ServicePort, family: Family, zone: Option<&str>) -> Categorized<'a> {
    let eps: Vec<&Endpoint> = sp
        .endpoints
        .iter()
        .filter(|e| Family::of(&e.ip) == family)
        .collect();
    let mut out = Categorized::default();
    let uses_cluster = !sp.internal_policy_local || sp.externally_accessible();
    let uses_local =
        sp.internal_policy_local || (sp.external_policy_local && sp.externally_accessible());

    if uses_cluster {
        let topology = topology_mode(&eps, zone);
        out.cluster = eps
            .iter()
            .copied()
            .filter(|e| e.ready && available_for(e, &topology))
            .collect();
        // Nothing ready (anywhere, or in this topology): serving terminating endpoints,
        // topology ignored, rather than dropping connections.
        if out.cluster.is_empty() {
            out.cluster = eps
                .iter()
                .copied()
                .filter(|e| e.serving && e.terminating)
                .collect();
        }
        out.has_any = !out.cluster.is_empty();
    }
    if !uses_local {
        return out;
    }
    let usable = |e: &&Endpoint| e.ready || (e.serving && e.terminating);
    out.has_any |= eps.iter().any(usable);
    out.local = eps.iter().copied().filter(|e| e.local && e.ready).collect();
    if out.local.is_empty() {
        out.local = eps
            .iter()
            .copied()
            .filter(|e| e.local && e.serving && e.terminating)
            .collect();
    }
    out
}

/// Which hints cluster traffic follows (upstream's `topologyModeFromHints`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Topology<'z> {
    /// Every ready endpoint.
    None,
    /// Ready endpoints hinted for this node (`hints.forNodes`, trafficDistribution
    /// `PreferSameNode`).
    SameNode,
    /// Ready endpoints hinted for this zone (`hints.forZones`).
    SameZone(&'z str),
}

/// Node hints win when every ready endpoint carries them and one is for this node; else
/// zone hints when every ready endpoint carries them and one is for this node's zone;
/// otherwise none, so traffic is never stranded. (Upstream reads node hints only with the
/// `PreferSameTrafficDistribution` feature gate, on by default since 1.34; with the gate
/// off the API server drops `forNodes`, so honouring whatever hints arrive is the same.)
fn topology_mode<'z>(eps: &[&Endpoint], zone: Option<&'z str>) -> Topology<'z> {
    let ready = || eps.iter().filter(|e| e.ready);
    if ready().all(|e| e.for_this_node.is_some()) && ready().any(|e| e.for_this_node == Some(true))
    {
        return Topology::SameNode;
    }
    let Some(zone) = zone else {
        return Topology::None;
    };
    let has_hints = |e: &&&Endpoint| e.zone_hints.as_ref().is_some_and(|h| !h.is_empty());
    let for_zone = |e: &&&Endpoint| {
        e.zone_hints
            .as_ref()
            .is_some_and(|h| h.iter().any(|x| x == zone))
    };
    if ready().all(|e| has_hints(&e)) && ready().any(|e| for_zone(&e)) {
        Topology::SameZone(zone)
    } else {
        Topology::None
    }
}

fn available_for(e: &Endpoint, t: &Topology) -> bool {
    match t {
        Topology::None => true,
        Topology::SameNode => e.for_this_node == Some(true),
        Topology::SameZone(z) => e
            .zone_hints
            .as_ref()
            .is_some_and(|h| h.iter().any(|x| x == z)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::model::{fixtures, Proto};

    fn ep(ip: &str, ready: bool, serving: bool, terminating: bool, local: bool) -> Endpoint {
        Endpoint {
            ready,
            serving,
            terminating,
            local,
            ..fixtures::endpoint(ip, 80)
        }
    }

    fn sp(eps: Vec<Endpoint>) -> ServicePort {
        fixtures::service_port("s", "", Proto::Tcp, "10.96.0.1", 80, eps)
    }

    #[test]
    fn terminating_endpoints_only_when_nothing_is_ready() {
        let s = sp(vec![
            ep("10.0.0.1", true, true, false, false),
            ep("10.0.0.2", false, true, true, false),
        ]);
        let c = categorize(&s, Family::V4, None);
        assert_eq!(c.cluster.len(), 1);
        assert_eq!(c.cluster[0].ip.to_string(), "10.0.0.1");
        let s = sp(vec![ep("10.0.0.2", false, true, true, false)]);
        assert_eq!(categorize(&s, Family::V4, None).cluster.len(), 1);
        let s = sp(vec![ep("10.0.0.2", false, false, true, false)]);
        let c = categorize(&s, Family::V4, None);
        assert!(c.cluster.is_empty() && !c.has_any);
    }

    #[test]
    fn internal_local_uses_only_local_endpoints() {
        let mut s = sp(vec![
            ep("10.0.0.1", true, true, false, true),
            ep("10.0.0.2", true, true, false, false),
        ]);
        s.internal_policy_local = true;
        let c = categorize(&s, Family::V4, None);
        assert!(c.cluster.is_empty());
        assert_eq!(c.local.len(), 1);
        assert!(c.has_any);
    }

    #[test]
    fn hints_apply_only_when_all_ready_endpoints_have_them() {
        let mut a = ep("10.0.0.1", true, true, false, false);
        a.zone_hints = Some(vec!["z1".into()]);
        let mut b = ep("10.0.0.2", true, true, false, false);
        b.zone_hints = Some(vec!["z2".into()]);
        let s = sp(vec![a.clone(), b.clone()]);
        assert_eq!(categorize(&s, Family::V4, Some("z1")).cluster.len(), 1);
        assert_eq!(categorize(&s, Family::V4, Some("z3")).cluster.len(), 2);
        b.zone_hints = None;
        let s = sp(vec![a, b]);
        assert_eq!(categorize(&s, Family::V4, Some("z1")).cluster.len(), 2);
    }

    /// The node the upstream cases categorize for (their `nodeName`).
    const NODE: &str = "node-1";

    /// An upstream `BaseEndpointInfo`: every condition false unless set.
    struct Ep(Endpoint);

    fn e(addr: &str) -> Ep {
        let (ip, port) = addr.rsplit_once(':').unwrap();
        Ep(Endpoint {
            ready: false,
            serving: false,
            terminating: false,
            ..fixtures::endpoint(ip, port.parse().unwrap())
        })
    }

    impl Ep {
        fn ready(mut self) -> Ep {
            self.0.ready = true;
            self
        }
        fn serving(mut self) -> Ep {
            self.0.serving = true;
            self
        }
        fn terminating(mut self) -> Ep {
            self.0.terminating = true;
            self
        }
        fn local(mut self) -> Ep {
            self.0.local = true;
            self
        }
        fn zones(mut self, z: &[&str]) -> Ep {
            self.0.zone_hints = Some(z.iter().map(|z| z.to_string()).collect());
            self
        }
        /// `hints.forNodes`, read for `NODE` as `build` does.
        fn nodes(mut self, n: &[&str]) -> Ep {
            self.0.for_this_node = (!n.is_empty()).then(|| n.contains(&NODE));
            self
        }
    }

    /// An upstream `BaseServicePortInfo`.
    #[derive(Default, Clone, Copy)]
    struct Svc {
        internal_local: bool,
        external_local: bool,
        node_port: Option<u16>,
    }

    const CLUSTER: Svc = Svc {
        internal_local: false,
        external_local: false,
        node_port: None,
    };

    /// One row of upstream's `TestCategorizeEndpoints`. `None` is upstream's `nil` ("the
    /// Service does not use this kind of endpoint"), which `categorize` returns as empty.
    struct Case {
        name: &'static str,
        /// The node's `topology.kubernetes.io/zone` label; `None` without the label.
        zone: Option<&'static str>,
        svc: Svc,
        endpoints: Vec<Ep>,
        cluster: Option<&'static [&'static str]>,
        local: Option<&'static [&'static str]>,
        /// Upstream's `allEndpoints` (cluster ∪ local); when `None`, whichever of the two
        /// is set.
        all: Option<&'static [&'static str]>,
        only_remote: bool,
    }

    fn check(c: Case) -> Result<(), String> {
        let mut s = sp(c.endpoints.into_iter().map(|e| e.0).collect());
        s.internal_policy_local = c.svc.internal_local;
        s.external_policy_local = c.svc.external_local;
        s.node_port = c.svc.node_port;
        let got = categorize(&s, Family::V4, c.zone);
        let set =
            |v: &[&Endpoint]| -> BTreeSet<String> { v.iter().map(|e| e.sort_key()).collect() };
        let want = |v: Option<&[&str]>| -> BTreeSet<String> {
            v.unwrap_or_default()
                .iter()
                .map(|s| s.to_string())
                .collect()
        };
        let all_want = match (c.cluster, c.local) {
            (Some(x), None) | (None, Some(x)) => want(Some(x)),
            _ => want(c.all),
        };
        let mut errs = Vec::new();
        if set(&got.cluster) != want(c.cluster) {
            errs.push(format!(
                "cluster {:?}, want {:?}",
                set(&got.cluster),
                want(c.cluster)
            ));
        }
        if set(&got.local) != want(c.local) {
            errs.push(format!(
                "local {:?}, want {:?}",
                set(&got.local),
                want(c.local)
            ));
        }
        let all: BTreeSet<String> = set(&got.cluster).union(&set(&got.local)).cloned().collect();
        if all != all_want {
            errs.push(format!("all {all:?}, want {all_want:?}"));
        }
        let has_any = !all_want.is_empty() || c.only_remote;
        if got.has_any != has_any {
            errs.push(format!("has_any {}, want {has_any}", got.has_any));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(format!("{}: {}", c.name, errs.join("; ")))
        }
    }

    fn run(cases: Vec<Case>) {
        let failed: Vec<String> = cases.into_iter().filter_map(|c| check(c).err()).collect();
        assert!(failed.is_empty(), "\n{}", failed.join("\n"));
    }

    /// kubernetes/kubernetes `pkg/proxy/topology_test.go` `TestCategorizeEndpoints`, every
    /// case of the version that reads no topology annotation, under upstream's names. The
    /// earlier `hintsAnnotation` cases are left out: kube-proxy no longer reads the
    /// annotation (the EndpointSlice controller decides whether hints exist).
    #[test]
    fn upstream_categorize_endpoints() {
        let za = Some("zone-a");
        let etp_local_np = Svc {
            external_local: true,
            node_port: Some(8080),
            ..CLUSTER
        };
        let itp_local = Svc {
            internal_local: true,
            ..CLUSTER
        };
        let itp_local_np = Svc {
            internal_local: true,
            node_port: Some(8080),
            ..CLUSTER
        };
        let both_local_np = Svc {
            internal_local: true,
            external_local: true,
            node_port: Some(8080),
        };
        let four_zoned = || {
            vec![
                e("10.1.2.3:80").zones(&["zone-a"]).ready(),
                e("10.1.2.4:80").zones(&["zone-b"]).ready(),
                e("10.1.2.5:80").zones(&["zone-c"]).ready(),
                e("10.1.2.6:80").zones(&["zone-a"]).ready(),
            ]
        };
        let four_zoned_two_local = || {
            vec![
                e("10.1.2.3:80").zones(&["zone-a"]).ready().local(),
                e("10.1.2.4:80").zones(&["zone-b"]).ready().local(),
                e("10.1.2.5:80").zones(&["zone-c"]).ready(),
                e("10.1.2.6:80").zones(&["zone-a"]).ready(),
            ]
        };
        let one_local_one_remote =
            || vec![e("10.0.0.0:80").ready().local(), e("10.0.0.1:80").ready()];
        let two_remote = || vec![e("10.0.0.0:80").ready(), e("10.0.0.1:80").ready()];
        run(vec![
            Case {
                name: "should use topology since all endpoints have hints, node has a zone label and and there are endpoints for the node's zone",
                zone: za,
                svc: CLUSTER,
                endpoints: four_zoned(),
                cluster: Some(&["10.1.2.3:80", "10.1.2.6:80"]),
                local: None,
                all: None,
                only_remote: false,
            },
            Case {
                name: "externalTrafficPolicy: Local, topology ignored for Local endpoints",
                zone: za,
                svc: etp_local_np,
                endpoints: four_zoned_two_local(),
                cluster: Some(&["10.1.2.3:80", "10.1.2.6:80"]),
                local: Some(&["10.1.2.3:80", "10.1.2.4:80"]),
                all: Some(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"]),
                only_remote: false,
            },
            Case {
                name: "internalTrafficPolicy: Local, topology ignored for Local endpoints",
                zone: za,
                svc: itp_local_np,
                endpoints: four_zoned_two_local(),
                cluster: Some(&["10.1.2.3:80", "10.1.2.6:80"]),
                local: Some(&["10.1.2.3:80", "10.1.2.4:80"]),
                all: Some(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"]),
                only_remote: false,
            },
            Case {
                name: "empty node labels",
                zone: None,
                svc: CLUSTER,
                endpoints: vec![e("10.1.2.3:80").zones(&["zone-a"]).ready()],
                cluster: Some(&["10.1.2.3:80"]),
                local: None,
                all: None,
                only_remote: false,
            },
            Case {
                name: "empty zone label",
                zone: Some(""),
                svc: CLUSTER,
                endpoints: vec![e("10.1.2.3:80").zones(&["zone-a"]).ready()],
                cluster: Some(&["10.1.2.3:80"]),
                local: None,
                all: None,
                only_remote: false,
            },
            Case {
                name: "node in different zone, no endpoint filtering",
                zone: Some("zone-b"),
                svc: CLUSTER,
                endpoints: vec![e("10.1.2.3:80").zones(&["zone-a"]).ready()],
                cluster: Some(&["10.1.2.3:80"]),
                local: None,
                all: None,
                only_remote: false,
            },
            Case {
                name: "unready endpoint",
                zone: za,
                svc: CLUSTER,
                endpoints: vec![
                    e("10.1.2.3:80").zones(&["zone-a"]).ready(),
                    e("10.1.2.4:80").zones(&["zone-b"]).ready(),
                    e("10.1.2.5:80").zones(&["zone-c"]).ready(),
                    e("10.1.2.6:80").zones(&["zone-a"]),
                ],
                cluster: Some(&["10.1.2.3:80"]),
                local: None,
                all: None,
                only_remote: false,
            },
            Case {
                name: "only unready endpoints in same zone (should not filter)",
                zone: za,
                svc: CLUSTER,
                endpoints: vec![
                    e("10.1.2.3:80").zones(&["zone-a"]),
                    e("10.1.2.4:80").zones(&["zone-b"]).ready(),
                    e("10.1.2.5:80").zones(&["zone-c"]).ready(),
                    e("10.1.2.6:80").zones(&["zone-a"]),
                ],
                cluster: Some(&["10.1.2.4:80", "10.1.2.5:80"]),
                local: None,
                all: None,
                only_remote: false,
            },
            Case {
                name: "missing hints, no filtering applied",
                zone: za,
                svc: CLUSTER,
                endpoints: vec![
                    e("10.1.2.3:80").zones(&["zone-a"]).ready(),
                    e("10.1.2.4:80").zones(&["zone-b"]).ready(),
                    e("10.1.2.5:80").ready(),
                    e("10.1.2.6:80").zones(&["zone-a"]).ready(),
                ],
                cluster: Some(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.5:80", "10.1.2.6:80"]),
                local: None,
                all: None,
                only_remote: false,
            },
            Case {
                name: "multiple hints per endpoint, filtering includes any endpoint with zone included",
                zone: Some("zone-c"),
                svc: CLUSTER,
                endpoints: vec![
                    e("10.1.2.3:80").zones(&["zone-a", "zone-b", "zone-c"]).ready(),
                    e("10.1.2.4:80").zones(&["zone-b", "zone-c"]).ready(),
                    e("10.1.2.5:80").zones(&["zone-b", "zone-d"]).ready(),
                    e("10.1.2.6:80").zones(&["zone-c"]).ready(),
                ],
                cluster: Some(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"]),
                local: None,
                all: None,
                only_remote: false,
            },
            Case {
                name: "conflicting topology and localness require merging allEndpoints",
                zone: za,
                svc: etp_local_np,
                endpoints: vec![
                    e("10.0.0.0:80").zones(&["zone-a"]).ready().local(),
                    e("10.0.0.1:80").zones(&["zone-b"]).ready().local(),
                    e("10.0.0.2:80").zones(&["zone-a"]).ready(),
                    e("10.0.0.3:80").zones(&["zone-b"]).ready(),
                ],
                cluster: Some(&["10.0.0.0:80", "10.0.0.2:80"]),
                local: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                all: Some(&["10.0.0.0:80", "10.0.0.1:80", "10.0.0.2:80"]),
                only_remote: false,
            },
            Case {
                name: "internalTrafficPolicy: Local, with empty endpoints",
                zone: None,
                svc: itp_local,
                endpoints: vec![],
                cluster: None,
                local: Some(&[]),
                all: None,
                only_remote: false,
            },
            Case {
                name: "internalTrafficPolicy: Local, but all endpoints are remote",
                zone: None,
                svc: itp_local,
                endpoints: two_remote(),
                cluster: None,
                local: Some(&[]),
                all: None,
                only_remote: true,
            },
            Case {
                name: "internalTrafficPolicy: Local, all endpoints are local",
                zone: None,
                svc: itp_local,
                endpoints: vec![e("10.0.0.0:80").ready().local(), e("10.0.0.1:80").ready().local()],
                cluster: None,
                local: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                all: None,
                only_remote: false,
            },
            Case {
                name: "internalTrafficPolicy: Local, some endpoints are local",
                zone: None,
                svc: itp_local,
                endpoints: one_local_one_remote(),
                cluster: None,
                local: Some(&["10.0.0.0:80"]),
                all: None,
                only_remote: false,
            },
            Case {
                name: "Cluster traffic policy, endpoints not Ready",
                zone: None,
                svc: CLUSTER,
                endpoints: vec![e("10.0.0.0:80"), e("10.0.0.1:80")],
                cluster: Some(&[]),
                local: None,
                all: None,
                only_remote: false,
            },
            Case {
                name: "Cluster traffic policy, some endpoints are Ready",
                zone: None,
                svc: CLUSTER,
                endpoints: vec![e("10.0.0.0:80"), e("10.0.0.1:80").ready()],
                cluster: Some(&["10.0.0.1:80"]),
                local: None,
                all: None,
                only_remote: false,
            },
            Case {
                name: "Cluster traffic policy, all endpoints are terminating",
                zone: None,
                svc: CLUSTER,
                endpoints: vec![
                    e("10.0.0.0:80").serving().terminating().local(),
                    e("10.0.0.1:80").serving().terminating(),
                ],
                cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                local: None,
                all: None,
                only_remote: false,
            },
            Case {
                name: "iTP: Local, eTP: Cluster, some endpoints local",
                zone: None,
                svc: itp_local_np,
                endpoints: one_local_one_remote(),
                cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                local: Some(&["10.0.0.0:80"]),
                all: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                only_remote: false,
            },
            Case {
                name: "iTP: Cluster, eTP: Local, some endpoints local",
                zone: None,
                svc: etp_local_np,
                endpoints: one_local_one_remote(),
                cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                local: Some(&["10.0.0.0:80"]),
                all: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                only_remote: false,
            },
            Case {
                name: "iTP: Local, eTP: Local, some endpoints local",
                zone: None,
                svc: both_local_np,
                endpoints: one_local_one_remote(),
                cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                local: Some(&["10.0.0.0:80"]),
                all: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                only_remote: false,
            },
            Case {
                name: "iTP: Local, eTP: Local, all endpoints remote",
                zone: None,
                svc: both_local_np,
                endpoints: two_remote(),
                cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                local: Some(&[]),
                all: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                only_remote: false,
            },
            Case {
                name: "iTP: Local, eTP: Local, all endpoints remote and terminating",
                zone: None,
                svc: both_local_np,
                endpoints: vec![
                    e("10.0.0.0:80").serving().terminating(),
                    e("10.0.0.1:80").serving().terminating(),
                ],
                cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                local: Some(&[]),
                all: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                only_remote: true,
            },
            Case {
                name: "iTP: Cluster, eTP: Local, with terminating endpoints",
                zone: None,
                svc: etp_local_np,
                endpoints: vec![
                    e("10.0.0.0:80").ready(),
                    e("10.0.0.1:80").local(),
                    e("10.0.0.2:80").serving().terminating().local(),
                    e("10.0.0.3:80").serving().terminating(),
                ],
                cluster: Some(&["10.0.0.0:80"]),
                local: Some(&["10.0.0.2:80"]),
                all: Some(&["10.0.0.0:80", "10.0.0.2:80"]),
                only_remote: false,
            },
            Case {
                name: "externalTrafficPolicy ignored if not externally accessible",
                zone: None,
                svc: Svc {
                    external_local: true,
                    ..CLUSTER
                },
                endpoints: vec![e("10.0.0.0:80").ready(), e("10.0.0.1:80").ready().local()],
                cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                local: None,
                all: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                only_remote: false,
            },
            Case {
                name: "no cluster endpoints for iTP:Local internal-only service",
                zone: None,
                svc: itp_local,
                endpoints: vec![e("10.0.0.0:80").ready(), e("10.0.0.1:80").ready().local()],
                cluster: None,
                local: Some(&["10.0.0.1:80"]),
                all: Some(&["10.0.0.1:80"]),
                only_remote: false,
            },
        ]);
    }

    /// Node hints (`hints.forNodes`, trafficDistribution `PreferSameNode`, KEP-3015), as
    /// upstream's `topologyModeFromHints` and `availableForTopology` read them since 1.33:
    /// same-node first when every ready endpoint has node hints and one names this node,
    /// else same-zone under the zone rule, else every ready endpoint.
    #[test]
    fn node_hints_prefer_same_node() {
        let za = Some("zone-a");
        let hinted = || {
            vec![
                e("10.1.2.3:80").zones(&["zone-a"]).nodes(&[NODE]).ready(),
                e("10.1.2.4:80")
                    .zones(&["zone-b"])
                    .nodes(&["node-2"])
                    .ready(),
                e("10.1.2.5:80")
                    .zones(&["zone-c"])
                    .nodes(&["node-3"])
                    .ready(),
                e("10.1.2.6:80")
                    .zones(&["zone-a"])
                    .nodes(&["node-4"])
                    .ready(),
            ]
        };
        run(vec![
            Case {
                name: "PreferSameNode: the endpoint hinted for this node",
                zone: za,
                svc: CLUSTER,
                endpoints: hinted(),
                cluster: Some(&["10.1.2.3:80"]),
                local: None,
                all: None,
                only_remote: false,
            },
            Case {
                name: "PreferSameNode without a zone label on the node",
                zone: None,
                svc: CLUSTER,
                endpoints: hinted(),
                cluster: Some(&["10.1.2.3:80"]),
                local: None,
                all: None,
                only_remote: false,
            },
            Case {
                name: "PreferSameNode falls back to zone hints when no endpoint is for this node",
                zone: za,
                svc: CLUSTER,
                endpoints: vec![
                    e("10.1.2.4:80").zones(&["zone-b"]).nodes(&["node-2"]).ready(),
                    e("10.1.2.5:80").zones(&["zone-c"]).nodes(&["node-3"]).ready(),
                    e("10.1.2.6:80").zones(&["zone-a"]).nodes(&["node-4"]).ready(),
                ],
                cluster: Some(&["10.1.2.6:80"]),
                local: None,
                all: None,
                only_remote: false,
            },
            Case {
                name: "node hints ignored when a ready endpoint has none",
                zone: za,
                svc: CLUSTER,
                endpoints: vec![
                    e("10.1.2.3:80").zones(&["zone-a"]).nodes(&[NODE]).ready(),
                    e("10.1.2.4:80").zones(&["zone-b"]).ready(),
                    e("10.1.2.6:80").zones(&["zone-a"]).nodes(&["node-4"]).ready(),
                ],
                cluster: Some(&["10.1.2.3:80", "10.1.2.6:80"]),
                local: None,
                all: None,
                only_remote: false,
            },
            Case {
                name: "empty forNodes counts as no node hint",
                zone: None,
                svc: CLUSTER,
                endpoints: vec![
                    e("10.1.2.3:80").nodes(&[NODE]).ready(),
                    e("10.1.2.4:80").nodes(&[]).ready(),
                ],
                cluster: Some(&["10.1.2.3:80", "10.1.2.4:80"]),
                local: None,
                all: None,
                only_remote: false,
            },
            Case {
                name: "an unready endpoint without node hints does not turn them off",
                zone: None,
                svc: CLUSTER,
                endpoints: vec![
                    e("10.1.2.3:80").nodes(&[NODE]).ready(),
                    e("10.1.2.4:80").nodes(&["node-2"]).ready(),
                    e("10.1.2.5:80"),
                ],
                cluster: Some(&["10.1.2.3:80"]),
                local: None,
                all: None,
                only_remote: false,
            },
            Case {
                name: "the endpoint for this node is not ready: hints for other nodes only, no filtering",
                zone: None,
                svc: CLUSTER,
                endpoints: vec![
                    e("10.1.2.3:80").nodes(&[NODE]),
                    e("10.1.2.4:80").nodes(&["node-2"]).ready(),
                    e("10.1.2.5:80").nodes(&["node-3"]).ready(),
                ],
                cluster: Some(&["10.1.2.4:80", "10.1.2.5:80"]),
                local: None,
                all: None,
                only_remote: false,
            },
            Case {
                name: "terminating fallback ignores node hints",
                zone: None,
                svc: CLUSTER,
                endpoints: vec![
                    e("10.1.2.3:80").nodes(&[NODE]).serving().terminating(),
                    e("10.1.2.4:80").nodes(&["node-2"]).serving().terminating(),
                ],
                cluster: Some(&["10.1.2.3:80", "10.1.2.4:80"]),
                local: None,
                all: None,
                only_remote: false,
            },
            Case {
                name: "externalTrafficPolicy: Local, node hints ignored for Local endpoints",
                zone: None,
                svc: Svc {
                    external_local: true,
                    node_port: Some(8080),
                    ..CLUSTER
                },
                endpoints: vec![
                    e("10.1.2.3:80").nodes(&[NODE]).ready().local(),
                    e("10.1.2.4:80").nodes(&["node-2"]).ready().local(),
                    e("10.1.2.5:80").nodes(&["node-3"]).ready(),
                ],
                cluster: Some(&["10.1.2.3:80"]),
                local: Some(&["10.1.2.3:80", "10.1.2.4:80"]),
                all: Some(&["10.1.2.3:80", "10.1.2.4:80"]),
                only_remote: false,
            },
        ]);
    }

    /// Not an upstream case: the Local fallback to this node's serving terminating
    /// endpoints for an internal-only Service (upstream covers it for eTP only).
    #[test]
    fn local_policy_falls_back_to_local_terminating_endpoints() {
        run(vec![Case {
            name: "internalTrafficPolicy: Local, only a local terminating endpoint",
            zone: None,
            svc: Svc {
                internal_local: true,
                ..CLUSTER
            },
            endpoints: vec![
                e("10.1.2.3:80").ready(),
                e("10.1.2.4:80").serving().terminating().local(),
                e("10.1.2.5:80").terminating().local(),
            ],
            cluster: None,
            local: Some(&["10.1.2.4:80"]),
            all: None,
            only_remote: false,
        }]);
    }
}
