//! Reading cluster objects from files as `kubectl get -o yaml|json` prints them.

use crate::vocab::Note;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as networking;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;
use std::sync::Arc;

use super::{EndpointSlice, Endpoints, Meta, Node, Object, Service, ServiceCidr};

/// The objects the proxy cares about. Everything else in the input is ignored. Objects are
/// shared (`Arc`) so a snapshot of the agent's reflector stores costs no copies. They are
/// the proxy's own slim types (`objects`): files are decoded with k8s-openapi, which checks
/// them, and converted.
#[derive(Debug, Default, Clone)]
pub struct ClusterObjects {
    pub services: Vec<Arc<Service>>,
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    pub endpoints: Vec<Arc<Endpoints>>,
    pub nodes: Vec<Arc<Node>>,
    pub service_cidrs: Vec<Arc<ServiceCidr>>,
}

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{source_name}: not valid YAML or JSON: {message}")]
    Syntax {
        source_name: String,
        message: String,
    },
}

impl ClusterObjects {
    /// Adds every object found in `text` (multi-document YAML, or JSON; `kind: List`
    /// wrappers are unwrapped). Objects of a known kind that do not decode are skipped
    /// with a note; a document that is not YAML at all is an error.
    pub fn add_text(
        &mut self,
        source_name: &str,
        text: &str,
        skipped: &mut Vec<Note>,
    ) -> Result<(), InputError> {
        let syntax = |e: &dyn std::fmt::Display| InputError::Syntax {
            source_name: source_name.to_string(),
            message: e.to_string(),
        };
        // JSON is valid YAML, but serde_json reads a 17 MB `kubectl -o json` dump an order
        // of magnitude faster than the YAML parser.
        let first = text.trim_start().chars().next();
        if matches!(first, Some('{') | Some('[')) {
            for (n, doc) in serde_json::Deserializer::from_str(text)
                .into_iter::<&RawValue>()
                .enumerate()
            {
                let doc = doc.map_err(|e| syntax(&e))?;
                self.add_raw_json(doc, &Place::document(source_name, n), None, skipped);
            }
        } else {
            for (n, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
                let doc = Value::deserialize(doc).map_err(|e| syntax(&e))?;
                self.add_value(doc, &Place::document(source_name, n), None, skipped);
            }
        }
        Ok(())
    }

    /// The JSON path decodes each object straight from its text, without building a
    /// `Value` tree first; it is what keeps a 10,000-Service dump well under a second.
    fn add_raw_json(
        &mut self,
        doc: &RawValue,
        at: &Place,
        list: Option<(&str, &str)>,
        skipped: &mut Vec<Note>,
    ) {
        #[derive(Deserialize)]
        struct Head<'a> {
            #[serde(default, borrow)]
            kind: Option<Cow<'a, str>>,
            #[serde(default, rename = "apiVersion", borrow)]
            api_version: Option<Cow<'a, str>>,
            #[serde(default, borrow)]
            items: Option<Vec<&'a RawValue>>,
        }
        let head: Head = match serde_json::from_str(doc.get()) {
            Ok(h) => h,
            Err(_) => {
                // Not an object with a string kind: let the generic path explain it.
                if let Ok(v) = serde_json::from_str::<Value>(doc.get()) {
                    self.add_value(v, at, list, skipped);
                }
                return;
            }
        };
        if head.kind.as_deref().is_some_and(|k| k.ends_with("List")) {
            let of = list_of(head.kind.as_deref(), head.api_version.as_deref());
            for (i, item) in head.items.into_iter().flatten().enumerate() {
                let of = of.as_ref().map(|(a, k)| (a.as_str(), k.as_str()));
                self.add_raw_json(item, &at.item(i), of, skipped);
            }
            return;
        }
        let Some((api, kind)) = identify(
            head.api_version.as_deref(),
            head.kind.as_deref(),
            list,
            at,
            skipped,
        ) else {
            return;
        };
        let raw = doc.get();
        let before = skipped.len();
        match (api.as_str(), kind.as_str()) {
            ("v1", "Service") => {
                decode_str::<core::Service, _>(raw, "Service", &mut self.services, skipped)
            }
            ("discovery.k8s.io/v1", "EndpointSlice") => decode_str::<discovery::EndpointSlice, _>(
                raw,
                "EndpointSlice",
                &mut self.endpoint_slices,
                skipped,
            ),
            ("v1", "Endpoints") => {
                decode_str::<core::Endpoints, _>(raw, "Endpoints", &mut self.endpoints, skipped)
            }
            ("v1", "Node") => decode_str::<core::Node, _>(raw, "Node", &mut self.nodes, skipped),
            ("networking.k8s.io/v1", "ServiceCIDR") => decode_str::<networking::ServiceCIDR, _>(
                raw,
                "ServiceCIDR",
                &mut self.service_cidrs,
                skipped,
            ),
            _ => tracing::debug!(%api, %kind, "ignoring object of a kind the proxy does not use"),
        }
        for n in &mut skipped[before..] {
            n.reason = format!("{} ({at})", n.reason);
        }
    }

    fn add_value(
        &mut self,
        doc: Value,
        at: &Place,
        list: Option<(&str, &str)>,
        skipped: &mut Vec<Note>,
    ) {
        let Value::Object(mut map) = doc else {
            if !doc.is_null() {
                skipped.push(Note {
                    object: at.to_string(),
                    reason: "not a Kubernetes object (expected a mapping)".into(),
                });
            }
            return;
        };
        let kind = map.get("kind").and_then(Value::as_str).map(String::from);
        let api = map
            .get("apiVersion")
            .and_then(Value::as_str)
            .map(String::from);
        if kind.as_deref().is_some_and(|k| k.ends_with("List")) {
            let of = list_of(kind.as_deref(), api.as_deref());
            if let Some(Value::Array(items)) = map.remove("items") {
                for (i, item) in items.into_iter().enumerate() {
                    let of = of.as_ref().map(|(a, k)| (a.as_str(), k.as_str()));
                    self.add_value(item, &at.item(i), of, skipped);
                }
            }
            return;
        }
        let Some((api, kind)) = identify(api.as_deref(), kind.as_deref(), list, at, skipped) else {
            return;
        };
        let doc = Value::Object(map);
        let before = skipped.len();
        match (api.as_str(), kind.as_str()) {
            ("v1", "Service") => {
                decode::<core::Service, _>(doc, "Service", &mut self.services, skipped)
            }
            ("discovery.k8s.io/v1", "EndpointSlice") => decode::<discovery::EndpointSlice, _>(
                doc,
                "EndpointSlice",
                &mut self.endpoint_slices,
                skipped,
            ),
            ("v1", "Endpoints") => {
                decode::<core::Endpoints, _>(doc, "Endpoints", &mut self.endpoints, skipped)
            }
            ("v1", "Node") => decode::<core::Node, _>(doc, "Node", &mut self.nodes, skipped),
            ("networking.k8s.io/v1", "ServiceCIDR") => decode::<networking::ServiceCIDR, _>(
                doc,
                "ServiceCIDR",
                &mut self.service_cidrs,
                skipped,
            ),
            _ => tracing::debug!(%api, %kind, "ignoring object of a kind the proxy does not use"),
        }
        for n in &mut skipped[before..] {
            n.reason = format!("{} ({at})", n.reason);
        }
    }

    /// Puts every list in a canonical order so that input order never changes the output.
    pub fn sort(&mut self) {
        // Borrowed keys: sorting must not allocate per comparison (20k objects per sync).
        fn by_key<T: Object>(v: &mut [Arc<T>]) {
            v.sort_by(|a, b| {
                let (a, b): (&Meta, &Meta) = (a.metadata(), b.metadata());
                (a.namespace.as_deref(), a.name.as_deref())
                    .cmp(&(b.namespace.as_deref(), b.name.as_deref()))
            });
        }
        by_key(&mut self.services);
        by_key(&mut self.endpoint_slices);
        by_key(&mut self.endpoints);
        by_key(&mut self.nodes);
        by_key(&mut self.service_cidrs);
    }
}

/// Where a document came from: the file (or `-`), its document number (from 1) and, inside
/// a `List`, the item number.
#[derive(Debug, Clone)]
struct Place {
    source: String,
    document: usize,
    items: Vec<usize>,
}

impl Place {
    fn document(source: &str, index: usize) -> Place {
        Place {
            source: source.to_string(),
            document: index + 1,
            items: Vec::new(),
        }
    }

    fn item(&self, index: usize) -> Place {
        let mut p = self.clone();
        p.items.push(index + 1);
        p
    }
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} document {}", self.source, self.document)?;
        for i in &self.items {
            write!(f, " item {i}")?;
        }
        Ok(())
    }
}

/// The kinds the proxy reads, with the apiVersion each is read as.
const KINDS: [(&str, &str); 5] = [
    ("v1", "Service"),
    ("discovery.k8s.io/v1", "EndpointSlice"),
    ("v1", "Endpoints"),
    ("v1", "Node"),
    ("networking.k8s.io/v1", "ServiceCIDR"),
];

/// What the items of a `ServiceList` (etc.) are when they carry no kind, as in a raw API
/// list response: (apiVersion, kind).
fn list_of(kind: Option<&str>, api: Option<&str>) -> Option<(String, String)> {
    let item = kind?.strip_suffix("List")?;
    (!item.is_empty()).then(|| (api.unwrap_or("").to_string(), item.to_string()))
}

/// The (apiVersion, kind) to read a document as, or `None` (with a note where the input was
/// probably meant for the proxy) when it is skipped. A known kind without an apiVersion is
/// read as its usual one, with a note; a lower-case kind, or a known kind in another
/// apiVersion, is reported; a document without any kind is reported; other kinds (Pods,
/// ConfigMaps, ...) are ignored quietly, as `kubectl get all` dumps hold many.
fn identify(
    api: Option<&str>,
    kind: Option<&str>,
    list: Option<(&str, &str)>,
    at: &Place,
    skipped: &mut Vec<Note>,
) -> Option<(String, String)> {
    let (api, kind) = match (api, kind, list) {
        (api, Some(kind), _) => (api, kind),
        (None, None, Some((list_api, list_kind))) => {
            (Some(list_api).filter(|a| !a.is_empty()), list_kind)
        }
        (_, None, _) => {
            skipped.push(Note {
                object: at.to_string(),
                reason: "has no kind; skipped".into(),
            });
            return None;
        }
    };
    let known = KINDS.iter().find(|(_, k)| *k == kind);
    match (known, api) {
        (Some((want, _)), Some(api)) if api == *want => Some((api.to_string(), kind.to_string())),
        (Some((want, _)), None) => {
            skipped.push(Note {
                object: format!("{kind} at {at}"),
                reason: format!("has no apiVersion; read as {want}"),
            });
            Some((want.to_string(), kind.to_string()))
        }
        (Some((want, _)), Some(api)) => {
            skipped.push(Note {
                object: format!("{kind} at {at}"),
                reason: format!("apiVersion {api} is not read (want {want}); skipped"),
            });
            None
        }
        (None, _) => {
            if let Some((_, k)) = KINDS.iter().find(|(_, k)| k.eq_ignore_ascii_case(kind)) {
                skipped.push(Note {
                    object: format!("{kind} at {at}"),
                    reason: format!("kinds are case-sensitive: did you mean {k}? skipped"),
                });
            } else {
                tracing::debug!(?api, %kind, %at, "ignoring object of a kind the proxy does not use");
            }
            None
        }
    }
}

/// `Kind ns/name` for messages, read from raw metadata so it works for objects that fail
/// to decode.
pub fn describe(kind: &str, v: &Value) -> String {
    let md = v.get("metadata");
    let get = |k: &str| md.and_then(|m| m.get(k)).and_then(Value::as_str);
    match (get("namespace"), get("name")) {
        (Some(ns), Some(n)) => format!("{kind} {ns}/{n}"),
        (None, Some(n)) => format!("{kind} {n}"),
        _ => format!("{kind} (unnamed)"),
    }
}

/// Decodes `raw` as the k8s-openapi type `T` and keeps it as the slim `S`.
fn decode_str<T: DeserializeOwned, S: From<T>>(
    raw: &str,
    kind: &str,
    into: &mut Vec<Arc<S>>,
    skipped: &mut Vec<Note>,
) {
    match serde_json::from_str::<T>(raw) {
        Ok(o) => into.push(Arc::new(S::from(o))),
        Err(e) => {
            let object = serde_json::from_str::<Value>(raw)
                .map(|v| describe(kind, &v))
                .unwrap_or_else(|_| format!("{kind} (unreadable)"));
            skipped.push(Note {
                object,
                reason: format!("does not decode: {e}"),
            })
        }
    }
}

fn decode<T: DeserializeOwned, S: From<T>>(
    doc: Value,
    kind: &str,
    into: &mut Vec<Arc<S>>,
    skipped: &mut Vec<Note>,
) {
    let object = describe(kind, &doc);
    match serde_json::from_value::<T>(doc) {
        Ok(o) => into.push(Arc::new(S::from(o))),
        Err(e) => skipped.push(Note {
            object,
            reason: format!("does not decode: {e}"),
        }),
    }
}

/// Counts objects per kind, for log lines.
pub fn summary(o: &ClusterObjects) -> BTreeMap<&'static str, usize> {
    BTreeMap::from([
        ("services", o.services.len()),
        ("endpointslices", o.endpoint_slices.len()),
        ("endpoints", o.endpoints.len()),
        ("nodes", o.nodes.len()),
        ("servicecidrs", o.service_cidrs.len()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_lists_multi_docs_and_json_alike() {
        let yaml = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a, namespace: x}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: n1}\n";
        let mut o = ClusterObjects::default();
        let mut sk = vec![];
        o.add_text("t", yaml, &mut sk).unwrap();
        assert_eq!(o.services.len(), 1);
        assert_eq!(o.nodes.len(), 1);
        assert!(sk.is_empty());
        let json = r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Service","metadata":{"name":"b","namespace":"y"}}]}"#;
        o.add_text("j", json, &mut sk).unwrap();
        assert_eq!(o.services.len(), 2);
    }

    #[test]
    fn undecodable_object_is_skipped_with_its_name() {
        let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: bad, namespace: ns}\nspec: {ports: eighty}\n";
        let mut o = ClusterObjects::default();
        let mut sk = vec![];
        o.add_text("t", yaml, &mut sk).unwrap();
        assert!(o.services.is_empty());
        assert_eq!(sk.len(), 1);
        assert_eq!(sk[0].object, "Service ns/bad");
    }

    #[test]
    fn broken_yaml_is_an_error_naming_the_file() {
        let mut o = ClusterObjects::default();
        let err = o
            .add_text("my.yaml", "a: [unclosed", &mut vec![])
            .unwrap_err();
        assert!(err.to_string().starts_with("my.yaml:"), "{err}");
    }

    fn read(text: &str) -> (ClusterObjects, Vec<Note>) {
        let mut o = ClusterObjects::default();
        let mut notes = vec![];
        o.add_text("in.yaml", text, &mut notes).unwrap();
        (o, notes)
    }

    #[test]
    fn a_known_kind_without_api_version_is_read_with_a_note() {
        let (o, notes) = read("kind: Service\nmetadata: {name: a, namespace: x}\n");
        assert_eq!(o.services.len(), 1);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!(notes[0].object, "Service at in.yaml document 1");
        assert!(notes[0].reason.contains("read as v1"), "{notes:?}");
    }

    #[test]
    fn lower_case_kinds_and_other_api_versions_are_reported() {
        let (o, notes) = read(
            "apiVersion: v1\nkind: service\nmetadata: {name: a}\n---\n\
             apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {name: b}\n---\n\
             metadata: {name: c}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: d}\n",
        );
        assert!(o.services.is_empty() && o.endpoint_slices.is_empty());
        let text: Vec<String> = notes.iter().map(|n| n.to_string()).collect();
        assert_eq!(text.len(), 3, "the ConfigMap is ignored quietly: {text:?}");
        assert!(text[0].contains("in.yaml document 1") && text[0].contains("did you mean Service"));
        assert!(text[1].contains("document 2") && text[1].contains("v1beta1"));
        assert!(text[2].contains("in.yaml document 3") && text[2].contains("no kind"));
    }

    #[test]
    fn list_items_without_kind_take_the_lists() {
        // What `GET /api/v1/services` returns: items carry no kind or apiVersion.
        let json = r#"{"kind":"ServiceList","apiVersion":"v1","items":[{"metadata":{"name":"a","namespace":"x"},"spec":{}}]}"#;
        let (o, notes) = read(json);
        assert_eq!(o.services.len(), 1, "{notes:?}");
        assert!(notes.is_empty(), "{notes:?}");
        let yaml = "kind: ServiceList\napiVersion: v1\nitems:\n- metadata: {name: a, namespace: x}\n- kind: Sevrice\n  metadata: {name: b}\n";
        let (o, _) = read(yaml);
        assert_eq!(o.services.len(), 1);
    }

    #[test]
    fn a_decode_failure_names_the_file_and_document() {
        let (_, notes) = read("apiVersion: v1\nkind: Node\nmetadata: {name: n}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: bad, namespace: ns}\nspec: {ports: eighty}\n");
        assert_eq!(notes.len(), 1);
        assert!(
            notes[0].reason.ends_with("(in.yaml document 2)"),
            "{notes:?}"
        );
    }
}
