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
        let topology = zone.filter(|z| can_use_topology(&eps, z));
        out.cluster = eps
            .iter()
            .copied()
            .filter(|e| e.ready)
            .filter(|e| match topology {
                Some(z) => e
                    .zone_hints
                    .as_ref()
                    .is_some_and(|h| h.iter().any(|x| x == z)),
                None => true,
            })
            .collect();
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

/// Hints are honoured only when every ready endpoint carries them and at least one is
/// meant for this zone; otherwise traffic could be stranded.
fn can_use_topology(eps: &[&Endpoint], zone: &str) -> bool {
    let ready: Vec<&&Endpoint> = eps.iter().filter(|e| e.ready).collect();
    !ready.is_empty()
        && ready
            .iter()
            .all(|e| e.zone_hints.as_ref().is_some_and(|h| !h.is_empty()))
        && ready.iter().any(|e| {
            e.zone_hints
                .as_ref()
                .is_some_and(|h| h.iter().any(|x| x == zone))
        })
}

#[cfg(test)]
mod tests {
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
}
