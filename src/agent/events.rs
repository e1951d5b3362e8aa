//! Kubernetes Events for what an operator must see without reading the agent's log: a
//! Service the proxy skips (`ServiceSkipped`, on the Service) and syncs that keep failing
//! (`SyncFailed`, on this Node). Published from a task of their own so a slow API server
//! never holds up a sync, and rate-limited per object and reason.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::mpsc;

/// At most one Event per object and reason in this period (the Recorder also folds repeats
/// into a series).
pub const MIN_INTERVAL: Duration = Duration::from_secs(600);

/// What an Event is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    Node(String),
    Service { namespace: String, name: String },
}

#[derive(Debug)]
struct Pending {
    subject: Subject,
    reason: &'static str,
    note: String,
}

/// A handle that queues Events; cheap to clone.
#[derive(Clone)]
pub struct Events {
    tx: mpsc::UnboundedSender<Pending>,
}

impl Events {
    /// Starts the publishing task (inside a Tokio runtime).
    pub fn start(client: kube::Client, node: &str) -> Events {
        let (tx, mut rx) = mpsc::unbounded_channel::<Pending>();
        let recorder = Recorder::new(
            client,
            Reporter {
                controller: "kube-nftproxy".into(),
                instance: Some(node.to_string()),
            },
        );
        tokio::spawn(async move {
            let mut last: HashMap<(Subject, &'static str), Instant> = HashMap::new();
            while let Some(p) = rx.recv().await {
                let key = (p.subject.clone(), p.reason);
                if last.get(&key).is_some_and(|t| t.elapsed() < MIN_INTERVAL) {
                    continue;
                }
                last.insert(key, Instant::now());
                let event = Event {
                    type_: EventType::Warning,
                    reason: p.reason.into(),
                    note: Some(truncate(&p.note, 1000)),
                    action: match p.subject {
                        Subject::Node(_) => "Sync".into(),
                        Subject::Service { .. } => "Proxy".into(),
                    },
                    secondary: None,
                };
                if let Err(e) = recorder.publish(&event, &reference(&p.subject)).await {
                    tracing::warn!(reason = p.reason, error = %e, "cannot publish an Event");
                }
            }
        });
        Events { tx }
    }

    /// Queues an Event (dropped quietly when the publisher has stopped).
    pub fn warn(&self, subject: Subject, reason: &'static str, note: impl Into<String>) {
        let _ = self.tx.send(Pending {
            subject,
            reason,
            note: note.into(),
        });
    }
}

fn reference(s: &Subject) -> ObjectReference {
    match s {
        // Node Events go to the default namespace, as kube-proxy's do.
        Subject::Node(name) => ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(name.clone()),
            namespace: None,
            ..Default::default()
        },
        Subject::Service { namespace, name } => ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            ..Default::default()
        },
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The Service a note is about, from its object text (`Service ns/name`, possibly followed
/// by ` port "p"`).
pub fn service_of(object: &str) -> Option<Subject> {
    let rest = object.strip_prefix("Service ")?;
    let id = rest.split_whitespace().next()?;
    let (namespace, name) = id.split_once('/')?;
    Some(Subject::Service {
        namespace: namespace.into(),
        name: name.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_name_their_service() {
        let svc = |ns: &str, n: &str| Subject::Service {
            namespace: ns.into(),
            name: n.into(),
        };
        assert_eq!(
            service_of("Service default/web"),
            Some(svc("default", "web"))
        );
        assert_eq!(
            service_of("Service kube-system/dns port \"udp\""),
            Some(svc("kube-system", "dns"))
        );
        assert_eq!(service_of("EndpointSlice default/web-abc"), None);
        assert_eq!(service_of("in.yaml document 3"), None);
    }

    #[test]
    fn long_notes_are_cut_on_a_character_boundary() {
        let s = "é".repeat(600);
        let t = truncate(&s, 1000);
        assert!(t.len() <= 1000 + "…".len() && t.ends_with('…'));
    }
}
