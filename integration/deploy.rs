//! What `deploy/` ships: the kustomize base, the kubeadm overlay, the Helm chart, the
//! image build. Everything here runs without a cluster, a Helm binary or a container
//! builder:
//!
//! - every manifest parses into its k8s-openapi type with no field lost (k8s-openapi
//!   ignores unknown fields, so each object is serialized back and compared with what was
//!   read: a misspelt or misplaced field fails);
//! - the ClusterRole grants exactly list/watch on the watched kinds and create/patch on
//!   events; the DaemonSet has kubeadm's kube-proxy shape; the ConfigMap's `config.conf` is
//!   a KubeProxyConfiguration the agent accepts and `kubeconfig.conf` names the
//!   control-plane endpoint with the service-account token and CA;
//! - the chart's templates use only a small subset of Go template syntax, which this file
//!   renders itself (anything else is an error), and with the default values they give
//!   the base's objects (Helm's labels aside);
//! - the kubeadm overlay, applied here as kustomize would (its patches replace ConfigMap
//!   data keys), sets the endpoint and cluster CIDR; when `kubectl` is installed,
//!   `kubectl kustomize` of the base and the overlay gives the same objects;
//! - the image reference is pinned to `v` + Cargo.toml's version, the tag
//!   `deploy/build-image.sh` builds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

const NAMESPACE: &str = "kube-system";
const NAME: &str = "kube-nftproxy";
const IMAGE_REPOSITORY: &str = "ghcr.io/kube-nftproxy/kube-nftproxy";
const BINARY: &str = "/usr/local/bin/kube-nftproxy";
const CONFIG_DIR: &str = "/var/lib/kube-proxy";
const PLACEHOLDER_ENDPOINT: &str = "https://CONTROL_PLANE_ENDPOINT:6443";
const KUBEADM_ENDPOINT: &str = "https://cluster-endpoint:6443";
const HEALTH_PORT: i32 = 10256;
const SA_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
const SA_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Cargo.toml's `[package]` version.
fn cargo_version() -> String {
    let mut in_package = false;
    for line in read("Cargo.toml").lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if let Some(rest) = line.strip_prefix("version").filter(|_| in_package) {
            let value = rest.trim_start().strip_prefix('=').expect("version =");
            return value.trim().trim_matches('"').to_string();
        }
    }
    panic!("Cargo.toml: no version in [package]");
}

fn expected_image() -> String {
    format!("{IMAGE_REPOSITORY}:v{}", cargo_version())
}

// ---------------------------------------------------------------------------------------
// Manifests: YAML documents into k8s-openapi types, losslessly.
// ---------------------------------------------------------------------------------------

/// The objects of one rendering (the base's files, the overlay, the chart...).
#[derive(Default)]
struct Objects {
    source: String,
    /// Each object as read, by (kind, name).
    raw: BTreeMap<(String, String), Value>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    config_maps: Vec<ConfigMap>,
    daemon_sets: Vec<DaemonSet>,
}

impl Objects {
    fn new(source: &str) -> Self {
        Objects {
            source: source.to_string(),
            ..Default::default()
        }
    }

    /// Adds every document of a multi-document YAML text.
    fn add_yaml(&mut self, origin: &str, text: &str) {
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let value = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{origin}: document {}: {e}", i + 1));
            if value.is_null() {
                continue; // an empty document
            }
            self.add(&format!("{origin} (document {})", i + 1), value);
        }
    }

    fn add(&mut self, origin: &str, value: Value) {
        let kind = value["kind"].as_str().unwrap_or_default().to_string();
        let name = value["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let at = format!("{origin}: {kind} {name}");
        match kind.as_str() {
            "ServiceAccount" => self.service_accounts.push(typed(&at, &value)),
            "ClusterRole" => self.cluster_roles.push(typed(&at, &value)),
            "ClusterRoleBinding" => self.bindings.push(typed(&at, &value)),
            "ConfigMap" => self.config_maps.push(typed(&at, &value)),
            "DaemonSet" => self.daemon_sets.push(typed(&at, &value)),
            other => panic!("{at}: unexpected kind {other:?}"),
        }
        let previous = self.raw.insert((kind, name), value);
        assert!(previous.is_none(), "{at}: defined twice in {}", self.source);
    }

    fn one<'a, T>(&self, list: &'a [T], what: &str) -> &'a T {
        assert_eq!(
            list.len(),
            1,
            "{}: expected exactly one {what}",
            self.source
        );
        &list[0]
    }
}

/// Parses `value` into `T` and checks that serializing it back gives `value` again: a field
/// the type does not know (k8s-openapi drops those silently) is reported with its path.
fn typed<T: DeserializeOwned + Serialize>(at: &str, value: &Value) -> T {
    let object: T = serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{at}: {e}"));
    let back = serde_json::to_value(&object).expect("serialize");
    let mut differences = Vec::new();
    diff("", value, &back, &mut differences);
    assert!(
        differences.is_empty(),
        "{at}: not read as written (left: the text, right: the type; unknown or misplaced fields?):\n  {}",
        differences.join("\n  ")
    );
    object
}

/// Where two JSON values differ, one line per difference.
fn diff(path: &str, left: &Value, right: &Value, out: &mut Vec<String>) {
    match (left, right) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, va) in a {
                let at = format!("{path}.{key}");
                match b.get(key) {
                    Some(vb) => diff(&at, va, vb, out),
                    None => out.push(format!("{at}: only on the left ({va})")),
                }
            }
            for key in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(format!("{path}.{key}: only on the right"));
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (va, vb)) in a.iter().zip(b).enumerate() {
                diff(&format!("{path}[{i}]"), va, vb, out);
            }
        }
        _ if left == right => {}
        _ => out.push(format!("{path}: {left} on the left, {right} on the right")),
    }
}

/// The base's files, as `kubectl apply -k` would send them.
fn base() -> Objects {
    let mut objects = Objects::new("deploy/base");
    for file in kustomization("deploy/base").resources {
        let rel = format!("deploy/base/{file}");
        objects.add_yaml(&rel, &read(&rel));
    }
    objects
}

/// A kustomization that uses nothing but `resources:` and `patches:` (by path).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Kustomization {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    resources: Vec<String>,
    #[serde(default)]
    patches: Vec<KustomizePatch>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KustomizePatch {
    path: String,
}

fn kustomization(dir: &str) -> Kustomization {
    let rel = format!("{dir}/kustomization.yaml");
    let k: Kustomization = serde_yaml::from_str(&read(&rel))
        .unwrap_or_else(|e| panic!("{rel}: only resources and patches are expected: {e}"));
    assert_eq!(k.api_version, "kustomize.config.k8s.io/v1beta1", "{rel}");
    assert_eq!(k.kind, "Kustomization", "{rel}");
    k
}

/// The kubeadm overlay as kustomize builds it: the base, with each patch (a ConfigMap of
/// the base, by name and namespace, holding only data keys) replacing those data keys.
fn kubeadm_overlay() -> Objects {
    let dir = "deploy/overlays/kubeadm";
    let k = kustomization(dir);
    assert_eq!(
        k.resources,
        ["../../base"],
        "{dir}: its resource is the base"
    );
    assert!(!k.patches.is_empty(), "{dir}: patches set the endpoint");
    let base = base();
    let mut raw = base.raw.clone();
    for patch in &k.patches {
        let rel = format!("{dir}/{}", patch.path);
        let value: Value =
            serde_yaml::from_str(&read(&rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let patch_cm: ConfigMap = typed(&rel, &value);
        assert_eq!(value["apiVersion"], "v1", "{rel}");
        let name = patch_cm
            .metadata
            .name
            .clone()
            .expect("patch names its ConfigMap");
        assert_eq!(
            patch_cm.metadata.namespace.as_deref(),
            Some(NAMESPACE),
            "{rel}"
        );
        let keys: BTreeSet<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            BTreeSet::from(["apiVersion", "kind", "metadata", "data"]),
            "{rel}: a patch of ConfigMap data only"
        );
        let target = raw
            .get_mut(&("ConfigMap".to_string(), name.clone()))
            .unwrap_or_else(|| panic!("{rel}: no ConfigMap {name} in the base"));
        for (key, text) in patch_cm.data.expect("patch data") {
            assert!(
                target["data"].get(&key).is_some(),
                "{rel}: {key} is not in the base"
            );
            target["data"][key] = Value::String(text);
        }
    }
    let mut overlay = Objects::new(dir);
    for ((kind, name), value) in raw {
        overlay.add(&format!("{dir}: {kind} {name}"), value);
    }
    overlay
}

// ---------------------------------------------------------------------------------------
// The checks every rendering must pass.
// ---------------------------------------------------------------------------------------

/// The five objects, their shape, and the endpoint `kubeconfig.conf` names.
fn check_objects(objects: &Objects, endpoint: &str) {
    let src = &objects.source;
    let sa = objects.one(&objects.service_accounts, "ServiceAccount");
    assert_eq!(sa.metadata.name.as_deref(), Some(NAME), "{src}");
    assert_eq!(sa.metadata.namespace.as_deref(), Some(NAMESPACE), "{src}");

    check_cluster_role(src, objects.one(&objects.cluster_roles, "ClusterRole"));

    let binding = objects.one(&objects.bindings, "ClusterRoleBinding");
    assert_eq!(binding.role_ref.kind, "ClusterRole", "{src}");
    assert_eq!(
        binding.role_ref.api_group, "rbac.authorization.k8s.io",
        "{src}"
    );
    assert_eq!(binding.role_ref.name, NAME, "{src}: binds our ClusterRole");
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert_eq!(subjects.len(), 1, "{src}: one subject");
    assert_eq!(subjects[0].kind, "ServiceAccount", "{src}");
    assert_eq!(subjects[0].name, NAME, "{src}");
    assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE), "{src}");

    let cm = objects.one(&objects.config_maps, "ConfigMap");
    assert_eq!(cm.metadata.name.as_deref(), Some(NAME), "{src}");
    assert_eq!(cm.metadata.namespace.as_deref(), Some(NAMESPACE), "{src}");
    let ds = objects.one(&objects.daemon_sets, "DaemonSet");
    check_daemon_set(src, ds);
    check_config_map(src, cm, endpoint);
}

fn check_cluster_role(src: &str, role: &ClusterRole) {
    assert_eq!(role.metadata.name.as_deref(), Some(NAME), "{src}");
    assert!(role.aggregation_rule.is_none(), "{src}: no aggregation");
    let mut granted = BTreeSet::new();
    for rule in role.rules.as_deref().unwrap_or_default() {
        assert!(rule.resource_names.is_none(), "{src}: {rule:?}");
        assert!(rule.non_resource_urls.is_none(), "{src}: {rule:?}");
        for group in rule.api_groups.as_deref().unwrap_or_default() {
            for resource in rule.resources.as_deref().unwrap_or_default() {
                for verb in &rule.verbs {
                    let triple = (group.clone(), resource.clone(), verb.clone());
                    assert!(
                        granted.insert(triple),
                        "{src}: {group}/{resource} {verb} twice"
                    );
                }
            }
        }
    }
    let mut expected = BTreeSet::new();
    for (group, resource) in [
        ("", "services"),
        ("discovery.k8s.io", "endpointslices"),
        ("", "endpoints"),
        ("", "nodes"),
        ("networking.k8s.io", "servicecidrs"),
    ] {
        for verb in ["list", "watch"] {
            expected.insert((group.to_string(), resource.to_string(), verb.to_string()));
        }
    }
    for group in ["", "events.k8s.io"] {
        for verb in ["create", "patch"] {
            expected.insert((group.to_string(), "events".to_string(), verb.to_string()));
        }
    }
    assert_eq!(granted, expected, "{src}: the ClusterRole's grants");
}

fn check_daemon_set(src: &str, ds: &DaemonSet) {
    assert_eq!(ds.metadata.name.as_deref(), Some(NAME), "{src}");
    assert_eq!(ds.metadata.namespace.as_deref(), Some(NAMESPACE), "{src}");
    let spec = ds.spec.as_ref().expect("spec");

    let selector = spec.selector.match_labels.clone().unwrap_or_default();
    assert!(!selector.is_empty(), "{src}: a selector");
    let pod_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    for (k, v) in &selector {
        assert_eq!(
            pod_labels.get(k),
            Some(v),
            "{src}: the selector matches the pods"
        );
    }

    let strategy = spec.update_strategy.as_ref().expect("updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"), "{src}");
    let rolling = strategy.rolling_update.as_ref().expect("rollingUpdate");
    assert_eq!(
        rolling.max_unavailable,
        Some(IntOrString::Int(1)),
        "{src}: maxUnavailable 1"
    );

    let pod = spec.template.spec.as_ref().expect("pod spec");
    assert_eq!(pod.host_network, Some(true), "{src}: host network");
    assert_eq!(
        pod.dns_policy.as_deref(),
        Some("Default"),
        "{src}: no cluster DNS"
    );
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical"),
        "{src}"
    );
    assert_eq!(pod.service_account_name.as_deref(), Some(NAME), "{src}");
    let tolerations = pod.tolerations.as_deref().unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "{src}: tolerates every taint: {tolerations:?}"
    );

    assert_eq!(pod.containers.len(), 1, "{src}: one container");
    let c = &pod.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some(expected_image().as_str()),
        "{src}: the pinned image"
    );
    assert!(
        c.args.is_none(),
        "{src}: everything is in command, as kubeadm"
    );
    assert_eq!(
        c.command.as_deref().unwrap_or_default(),
        [
            BINARY.to_string(),
            format!("--config={CONFIG_DIR}/config.conf"),
            "--hostname-override=$(NODE_NAME)".to_string(),
        ],
        "{src}: kubeadm's kube-proxy command line"
    );
    let env = c.env.as_deref().unwrap_or_default();
    let node_name = env
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .expect("NODE_NAME");
    let field = node_name
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .expect("NODE_NAME from a field");
    assert_eq!(field.field_path, "spec.nodeName", "{src}");
    assert_eq!(
        c.security_context.as_ref().and_then(|s| s.privileged),
        Some(true),
        "{src}: privileged, as kubeadm"
    );

    for (probe, path) in [
        (&c.liveness_probe, "/livez"),
        (&c.readiness_probe, "/healthz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{src}: an httpGet probe on {path}"));
        assert_eq!(get.path.as_deref(), Some(path), "{src}");
        assert_eq!(get.port, IntOrString::Int(HEALTH_PORT), "{src}: probe port");
        assert!(
            get.host.is_none(),
            "{src}: the node's address (host network)"
        );
    }

    // Mounts: the ConfigMap at /var/lib/kube-proxy, kubeadm's xtables lock and modules.
    let volumes = pod.volumes.as_deref().unwrap_or_default();
    let mounts = c.volume_mounts.as_deref().unwrap_or_default();
    let mount = |path: &str| {
        let m = mounts
            .iter()
            .find(|m| m.mount_path == path)
            .unwrap_or_else(|| panic!("{src}: nothing mounted at {path}"));
        let v = volumes
            .iter()
            .find(|v| v.name == m.name)
            .unwrap_or_else(|| panic!("{src}: no volume {}", m.name));
        (m, v)
    };
    let (m, v) = mount(CONFIG_DIR);
    assert_eq!(m.read_only, None, "{src}");
    let cm = v
        .config_map
        .as_ref()
        .expect("the config volume is a ConfigMap");
    assert_eq!(cm.name, NAME, "{src}: mounts our ConfigMap");
    assert!(cm.items.is_none(), "{src}: every key of it");
    let (m, v) = mount("/lib/modules");
    assert_eq!(m.read_only, Some(true), "{src}");
    assert_eq!(
        v.host_path.as_ref().map(|h| h.path.as_str()),
        Some("/lib/modules")
    );
    let (m, v) = mount("/run/xtables.lock");
    assert_ne!(m.read_only, Some(true), "{src}");
    let host = v.host_path.as_ref().expect("hostPath");
    assert_eq!(host.path, "/run/xtables.lock", "{src}");
    assert_eq!(host.type_.as_deref(), Some("FileOrCreate"), "{src}");
    assert_eq!(mounts.len(), 3, "{src}: only those mounts");
    assert_eq!(volumes.len(), 3, "{src}: only those volumes");
}

fn check_config_map(src: &str, cm: &ConfigMap, endpoint: &str) {
    let data = cm.data.clone().unwrap_or_default();
    let keys: BTreeSet<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from(["config.conf", "kubeconfig.conf"]),
        "{src}"
    );

    // config.conf: a KubeProxyConfiguration the agent's own parser accepts (unknown
    // fields are an error there), in nftables mode, pointing at kubeconfig.conf.
    let text = &data["config.conf"];
    kube_nftproxy::cli::config::parse_config(text, Path::new("config.conf"))
        .unwrap_or_else(|e| panic!("{src}: config.conf: {e}"));
    let config: Value = serde_yaml::from_str(text).expect("config.conf is YAML");
    assert_eq!(
        config["apiVersion"], "kubeproxy.config.k8s.io/v1alpha1",
        "{src}"
    );
    assert_eq!(config["kind"], "KubeProxyConfiguration", "{src}");
    assert_eq!(config["mode"], "nftables", "{src}");
    assert_eq!(
        config["clientConnection"]["kubeconfig"],
        format!("{CONFIG_DIR}/kubeconfig.conf"),
        "{src}: the kubeconfig beside it"
    );
    assert_eq!(
        config["healthzBindAddress"],
        format!("0.0.0.0:{HEALTH_PORT}"),
        "{src}: where the probes go"
    );
    assert_eq!(config["metricsBindAddress"], "127.0.0.1:10249", "{src}");
    assert!(
        config["clusterCIDR"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{src}: a cluster CIDR"
    );

    // kubeconfig.conf: read by kube's own kubeconfig type (unknown fields land in
    // `other`), the control-plane endpoint with the service account's token and CA.
    let kc = kube::config::Kubeconfig::from_yaml(&data["kubeconfig.conf"])
        .unwrap_or_else(|e| panic!("{src}: kubeconfig.conf: {e}"));
    assert!(
        kc.other.is_empty(),
        "{src}: kubeconfig.conf: {:?}",
        kc.other
    );
    assert_eq!(kc.kind.as_deref(), Some("Config"), "{src}");
    assert_eq!(kc.api_version.as_deref(), Some("v1"), "{src}");
    let current = kc.current_context.clone().expect("current-context");
    let context = kc
        .contexts
        .iter()
        .find(|c| c.name == current)
        .and_then(|c| c.context.clone())
        .expect("the current context exists");
    assert!(context.other.is_empty(), "{src}: {:?}", context.other);
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.clone())
        .expect("the context's cluster exists");
    assert!(cluster.other.is_empty(), "{src}: {:?}", cluster.other);
    assert_eq!(
        cluster.server.as_deref(),
        Some(endpoint),
        "{src}: the endpoint"
    );
    assert_eq!(
        cluster.certificate_authority.as_deref(),
        Some(SA_CA),
        "{src}"
    );
    let user_name = context.user.clone().expect("the context names a user");
    let user = kc
        .auth_infos
        .iter()
        .find(|u| u.name == user_name)
        .and_then(|u| u.auth_info.clone())
        .expect("the context's user exists");
    assert!(user.other.is_empty(), "{src}: {:?}", user.other);
    assert_eq!(user.token_file.as_deref(), Some(SA_TOKEN), "{src}");
}

// ---------------------------------------------------------------------------------------
// The chart, rendered with the subset of Go templates it is allowed to use.
// ---------------------------------------------------------------------------------------

/// What `.Release` and `.Chart` give a template.
struct Context<'a> {
    values: &'a Value,
    release_name: &'a str,
    namespace: &'a str,
    chart_name: &'a str,
    chart_version: &'a str,
    app_version: &'a str,
}

/// Renders a template that uses only these actions (with or without `-` trimming):
/// `{{ .Values.a.b }}` (a string, a bool or an integer below 100000: Helm prints larger
/// numbers in exponent form), `{{ .Release.Name }}`, `{{ .Release.Namespace }}`,
/// `{{ .Release.Service }}`, `{{ .Chart.Name }}`, `{{ .Chart.Version }}`,
/// `{{ .Chart.AppVersion }}` and `{{ toYaml .Values.x | nindent N }}`. Anything else (if,
/// range, with, include, comments, other functions, a missing value) is an error.
fn render(template: &str, cx: &Context) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("unclosed action: {:?}", &rest[start..]))?;
        let mut action = &after[..end];
        rest = &after[end + 2..];
        if let Some(a) = action.strip_prefix('-') {
            if !a.starts_with([' ', '\t', '\n']) {
                return Err(format!("{{{{-{a}}}}}: `{{{{-` needs a space after it"));
            }
            out.truncate(out.trim_end().len());
            action = a;
        }
        if let Some(a) = action.strip_suffix('-') {
            if !a.ends_with([' ', '\t', '\n']) {
                return Err(format!("{{{{{a}-}}}}: `-}}}}` needs a space before it"));
            }
            rest = rest.trim_start();
            action = a;
        }
        out.push_str(&action_value(action.trim(), cx)?);
    }
    out.push_str(rest);
    Ok(out)
}

fn action_value(action: &str, cx: &Context) -> Result<String, String> {
    let words: Vec<&str> = action.split_whitespace().collect();
    match words.as_slice() {
        [field] if field.starts_with('.') => scalar(field, cx),
        ["toYaml", field, "|", "nindent", n] if field.starts_with(".Values.") => {
            let n: usize = n.parse().map_err(|_| format!("{action}: nindent N"))?;
            let value = lookup(field, cx.values)?;
            let yaml = serde_yaml::to_string(value).map_err(|e| e.to_string())?;
            let pad = " ".repeat(n);
            let indented: Vec<String> = yaml
                .trim_end_matches('\n')
                .split('\n')
                .map(|line| format!("{pad}{line}"))
                .collect();
            Ok(format!("\n{}", indented.join("\n")))
        }
        _ => Err(format!(
            "{{{{ {action} }}}} is outside the checked template subset"
        )),
    }
}

fn scalar(field: &str, cx: &Context) -> Result<String, String> {
    let fixed = match field {
        ".Release.Name" => Some(cx.release_name),
        ".Release.Namespace" => Some(cx.namespace),
        ".Release.Service" => Some("Helm"),
        ".Chart.Name" => Some(cx.chart_name),
        ".Chart.Version" => Some(cx.chart_version),
        ".Chart.AppVersion" => Some(cx.app_version),
        _ => None,
    };
    if let Some(s) = fixed {
        return Ok(s.to_string());
    }
    if !field.starts_with(".Values.") {
        return Err(format!(
            "{{{{ {field} }}}} is outside the checked template subset"
        ));
    }
    match lookup(field, cx.values)? {
        Value::String(s) => Ok(s.clone()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Number(n) if n.as_u64().is_some_and(|n| n < 100_000) => Ok(n.to_string()),
        other => Err(format!(
            "{field} is {other}: not a string, bool or small integer"
        )),
    }
}

fn lookup<'v>(field: &str, values: &'v Value) -> Result<&'v Value, String> {
    let path = field
        .strip_prefix(".Values.")
        .ok_or_else(|| format!("{field}: only .Values"))?;
    let mut v = values;
    for key in path.split('.') {
        v = v
            .get(key)
            .filter(|v| !v.is_null())
            .ok_or_else(|| format!("{field}: no such value"))?;
    }
    Ok(v)
}

const CHART: &str = "deploy/helm/kube-nftproxy";

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)] // description and home are read only to refuse unknown fields
struct ChartYaml {
    api_version: String,
    name: String,
    description: String,
    #[serde(rename = "type")]
    type_: String,
    version: String,
    app_version: String,
    home: Option<String>,
}

fn chart_yaml() -> ChartYaml {
    serde_yaml::from_str(&read(&format!("{CHART}/Chart.yaml"))).expect("Chart.yaml")
}

fn chart_values() -> Value {
    serde_yaml::from_str(&read(&format!("{CHART}/values.yaml"))).expect("values.yaml")
}

/// `helm template kube-nftproxy deploy/helm/kube-nftproxy -n kube-system [values]`.
fn render_chart(values: &Value) -> Objects {
    let chart = chart_yaml();
    let cx = Context {
        values,
        release_name: NAME,
        namespace: NAMESPACE,
        chart_name: &chart.name,
        chart_version: &chart.version,
        app_version: &chart.app_version,
    };
    let dir = repo().join(CHART).join("templates");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("templates/")
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    let mut objects = Objects::new(CHART);
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            name.ends_with(".yaml"),
            "{CHART}/templates/{name}: only .yaml templates (no helpers, no NOTES.txt)"
        );
        let template = std::fs::read_to_string(&path).expect("template");
        let text =
            render(&template, &cx).unwrap_or_else(|e| panic!("{CHART}/templates/{name}: {e}"));
        objects.add_yaml(&format!("{CHART}/templates/{name} (rendered)"), &text);
    }
    objects
}

/// Removes the labels the chart adds for Helm's bookkeeping.
fn without_helm_labels(mut value: Value) -> Value {
    fn strip(labels: &mut Value) {
        if let Some(map) = labels.as_object_mut() {
            map.retain(|k, _| !k.starts_with("app.kubernetes.io/") && !k.starts_with("helm.sh/"));
        }
    }
    strip(&mut value["metadata"]["labels"]);
    if value["kind"] == "DaemonSet" {
        strip(&mut value["spec"]["template"]["metadata"]["labels"]);
    }
    value
}

fn assert_same_objects(a: &Objects, b: &Objects, normalize: fn(Value) -> Value) {
    let keys = |o: &Objects| o.raw.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        keys(a),
        keys(b),
        "{} and {}: the same objects",
        a.source,
        b.source
    );
    for (key, va) in &a.raw {
        let va = normalize(va.clone());
        let vb = normalize(b.raw[key].clone());
        let mut differences = Vec::new();
        diff("", &va, &vb, &mut differences);
        assert!(
            differences.is_empty(),
            "{} (left) and {} (right) differ on {key:?}:\n  {}",
            a.source,
            b.source,
            differences.join("\n  ")
        );
    }
}

// ---------------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------------

#[test]
fn base_has_kubeadms_shape_and_exact_rbac() {
    let base = base();
    check_objects(&base, PLACEHOLDER_ENDPOINT);
    assert_eq!(
        base.raw.len(),
        5,
        "SA, ClusterRole, binding, ConfigMap, DaemonSet"
    );
}

#[test]
fn kubeadm_overlay_sets_the_endpoint_and_cluster_cidr() {
    let overlay = kubeadm_overlay();
    check_objects(&overlay, KUBEADM_ENDPOINT);
    // Only the two per-cluster settings differ from the base.
    let base = base();
    let data = |o: &Objects, key: &str| -> Value {
        let cm = &o.raw[&("ConfigMap".to_string(), NAME.to_string())];
        serde_yaml::from_str(cm["data"][key].as_str().unwrap()).unwrap()
    };
    let mut config = data(&overlay, "config.conf");
    let mut base_config = data(&base, "config.conf");
    assert!(config["clusterCIDR"].is_string());
    config["clusterCIDR"] = Value::Null;
    base_config["clusterCIDR"] = Value::Null;
    assert_eq!(
        config, base_config,
        "config.conf: only clusterCIDR is the overlay's"
    );
    let mut kubeconfig = data(&overlay, "kubeconfig.conf");
    let mut base_kubeconfig = data(&base, "kubeconfig.conf");
    kubeconfig["clusters"][0]["cluster"]["server"] = Value::Null;
    base_kubeconfig["clusters"][0]["cluster"]["server"] = Value::Null;
    assert_eq!(
        kubeconfig, base_kubeconfig,
        "kubeconfig.conf: only the server"
    );
    let only_data = |mut v: Value| {
        if v["kind"] == "ConfigMap" {
            v["data"] = Value::Null;
        }
        v
    };
    assert_same_objects(&base, &overlay, only_data);
}

#[test]
fn chart_renders_the_base_with_default_values() {
    let chart = chart_yaml();
    let version = cargo_version();
    assert_eq!(chart.api_version, "v2");
    assert_eq!(chart.type_, "application");
    assert_eq!(chart.name, NAME);
    assert_eq!(
        chart.version, version,
        "Chart.yaml version follows Cargo.toml"
    );
    assert_eq!(
        chart.app_version, version,
        "Chart.yaml appVersion follows Cargo.toml"
    );
    let values = chart_values();
    assert_eq!(values["image"]["repository"], IMAGE_REPOSITORY);
    assert_eq!(values["image"]["tag"], format!("v{version}"));
    assert_eq!(values["controlPlaneEndpoint"], PLACEHOLDER_ENDPOINT);

    let rendered = render_chart(&values);
    check_objects(&rendered, PLACEHOLDER_ENDPOINT);
    assert_same_objects(&base(), &rendered, without_helm_labels);
}

#[test]
fn chart_values_reach_the_objects() {
    let mut values = chart_values();
    values["controlPlaneEndpoint"] = "https://10.0.0.1:6443".into();
    values["clusterCIDR"] = "10.100.0.0/16,fd00:100::/56".into();
    values["nodePortAddresses"] = serde_json::json!(["192.168.0.0/16", "fd00::/64"]);
    values["metrics"]["bindAddress"] = "0.0.0.0".into();
    values["health"]["port"] = 10266.into();
    values["image"]["repository"] = "registry.example.com/kube-nftproxy".into();
    values["tolerations"] = serde_json::json!([{"key": "a", "operator": "Exists"}]);
    values["resources"] = serde_json::json!({"limits": {"memory": "1Gi"}});
    let o = render_chart(&values);
    let cm = &o.raw[&("ConfigMap".to_string(), NAME.to_string())];
    let config: Value = serde_yaml::from_str(cm["data"]["config.conf"].as_str().unwrap()).unwrap();
    kube_nftproxy::cli::config::parse_config(
        cm["data"]["config.conf"].as_str().unwrap(),
        Path::new("config.conf"),
    )
    .expect("the agent accepts it");
    assert_eq!(config["clusterCIDR"], "10.100.0.0/16,fd00:100::/56");
    assert_eq!(config["nodePortAddresses"], values["nodePortAddresses"]);
    assert_eq!(config["metricsBindAddress"], "0.0.0.0:10249");
    assert_eq!(config["healthzBindAddress"], "0.0.0.0:10266");
    assert!(cm["data"]["kubeconfig.conf"]
        .as_str()
        .unwrap()
        .contains("server: https://10.0.0.1:6443\n"));
    let ds = &o.raw[&("DaemonSet".to_string(), NAME.to_string())];
    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(
        c["image"],
        format!("registry.example.com/kube-nftproxy:v{}", cargo_version())
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], 10266);
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], 10266);
    assert_eq!(pod["tolerations"], values["tolerations"]);
    assert_eq!(c["resources"], values["resources"]);
}

#[test]
fn template_subset_is_enforced() {
    let values = serde_json::json!({"a": {"b": "x", "n": 7, "big": 1000000, "list": [1]}});
    let cx = Context {
        values: &values,
        release_name: "r",
        namespace: "ns",
        chart_name: "c",
        chart_version: "1",
        app_version: "1",
    };
    let ok = |t: &str| render(t, &cx).unwrap_or_else(|e| panic!("{t}: {e}"));
    assert_eq!(ok("v: {{ .Values.a.b }}/{{.Values.a.n}}"), "v: x/7");
    assert_eq!(ok("ns: {{ .Release.Namespace }}"), "ns: ns");
    assert_eq!(
        ok("l:\n  {{- toYaml .Values.a.list | nindent 2 }}\n"),
        "l:\n  - 1\n"
    );
    assert_eq!(ok("a  {{- .Values.a.b -}}  \n b"), "axb");
    for bad in [
        "{{ if .Values.a.b }}x{{ end }}",
        "{{ include \"x\" . }}",
        "{{/* comment */}}",
        "{{ .Values.a.b | quote }}",
        "{{ .Values.a.missing }}",
        "{{ .Values.a.big }}",
        "{{ .Values.a.list }}",
        "{{ .Capabilities.KubeVersion }}",
        "{{ $x := 1 }}",
        "{{-.Values.a.b }}",
        "{{ .Values.a.b",
    ] {
        assert!(render(bad, &cx).is_err(), "{bad} must be refused");
    }
}

#[test]
fn kubectl_kustomize_gives_the_same_objects() {
    let Some(version) = kubectl_version() else {
        println!(
            "skipped: kubectl is not installed (the manifests' own checks ran in the other tests)"
        );
        return;
    };
    println!("using {version}");
    for (dir, expected) in [
        ("deploy/base", base()),
        ("deploy/overlays/kubeadm", kubeadm_overlay()),
    ] {
        let out = Command::new("kubectl")
            .arg("kustomize")
            .arg(repo().join(dir))
            .output()
            .expect("kubectl kustomize");
        assert!(
            out.status.success(),
            "kubectl kustomize {dir}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut built = Objects::new(&format!("kubectl kustomize {dir}"));
        built.add_yaml(&built.source.clone(), &String::from_utf8_lossy(&out.stdout));
        let endpoint = if dir == "deploy/base" {
            PLACEHOLDER_ENDPOINT
        } else {
            KUBEADM_ENDPOINT
        };
        check_objects(&built, endpoint);
        assert_same_objects(&expected, &built, |v| v);
    }
}

fn kubectl_version() -> Option<String> {
    let out = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .collect::<Vec<_>>()
            .join(", ")
    })
}

#[test]
fn image_is_pinned_to_the_tag_the_build_script_builds() {
    let image = expected_image();
    assert!(!image.ends_with(":latest"));
    let out = Command::new("bash")
        .arg(repo().join("deploy/build-image.sh"))
        .arg("--print-image")
        .env_remove("IMAGE_REPOSITORY")
        .env_remove("IMAGE_TAG")
        .output()
        .expect("bash deploy/build-image.sh --print-image");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), image);

    // Every image named in deploy/ and the Containerfile (manifests, comments, docs) is
    // that one, or a registry of one's own with the same tag.
    let tag = format!("v{}", cargo_version());
    let mut images = 0;
    let mut check = |path: &Path, text: &str| {
        for line in text.lines() {
            assert!(
                !line.contains(":latest"),
                "{}: unpinned: {line}",
                path.display()
            );
            let item = line.trim().trim_start_matches(['#', '-', ' ']);
            if let Some(name) = item.strip_prefix("image:").map(str::trim) {
                // (`image:` alone opens the chart values' image map.)
                if !name.is_empty() && !name.contains("{{") {
                    assert_eq!(name, image, "{}", path.display());
                    images += 1;
                }
            }
            if let Some(t) = item.strip_prefix("newTag:") {
                assert_eq!(t.trim(), tag, "{}: {line}", path.display());
            }
            for (i, _) in line.match_indices("kube-nftproxy:") {
                let after = &line[i + "kube-nftproxy:".len()..];
                let found: String = after
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || ".-_".contains(*c))
                    .collect();
                if found.starts_with('v') {
                    assert_eq!(found, tag, "{}: {line}", path.display());
                }
            }
        }
    };
    for_each_file(&repo().join("deploy"), &mut check);
    check(&repo().join("Containerfile"), &read("Containerfile"));
    assert!(images > 0, "the DaemonSet names the image");
}

fn for_each_file(dir: &Path, f: &mut dyn FnMut(&Path, &str)) {
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            for_each_file(&path, f);
        } else if let Ok(text) = std::fs::read_to_string(&path) {
            f(&path, &text);
        }
    }
}

#[test]
fn containerfile_builds_a_scratch_image_of_the_binary() {
    let text = read("Containerfile");
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(
        froms.last().map(|l| l.trim()),
        Some("FROM scratch"),
        "the default target is a scratch image"
    );
    assert!(
        froms.contains(&"FROM scratch AS prebuilt"),
        "the stage build-image.sh uses"
    );
    assert!(
        froms[0].contains(" AS build") && !froms[0].contains(":latest"),
        "a pinned build image: {}",
        froms[0]
    );
    assert!(text.contains("RUN deploy/build-image.sh --rootfs-only /rootfs"));
    let entrypoint = format!("ENTRYPOINT [\"{BINARY}\"]");
    assert_eq!(
        text.matches(&entrypoint).count(),
        2,
        "{entrypoint} in both image stages"
    );
    let ignore = read(".dockerignore");
    for pattern in ["target/", ".git"] {
        assert!(
            ignore.lines().any(|l| l == pattern),
            ".dockerignore: {pattern}"
        );
    }
    assert!(
        !repo().join("deploy/Dockerfile").exists(),
        "one image recipe"
    );
}
