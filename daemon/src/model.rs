//! The agent's model of cluster state: the Kubernetes objects Sluice programs the datapath
//! from (namespaces, pods, services, endpoint slices, network policies, nodes).
//!
//! The model does not know where objects come from: the standalone manifests watcher
//! ([`crate::manifests`]) and a Kubernetes API watcher feed it through the same
//! [`ClusterState::apply`] and [`ClusterState::delete`]. Objects are stored by
//! (namespace, name), or by name for cluster-scoped kinds, in `BTreeMap`s so that every
//! iteration is in a deterministic order and two states compare with `==`.

use std::collections::BTreeMap;
use std::fmt;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use tracing::warn;

/// The namespace of a namespaced object whose manifest names none (as `kubectl apply` does).
pub const DEFAULT_NAMESPACE: &str = "default";

/// The label the API server sets on every namespace to the namespace's own name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Errors from the model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The object has no `metadata.name`, so it cannot be stored or found again.
    #[error("{kind} has no metadata.name")]
    MissingName { kind: Kind },
    /// A label selector uses an operator other than `In`, `NotIn`, `Exists`, `DoesNotExist`.
    #[error("label selector on key {key:?} has unknown operator {operator:?}")]
    UnknownSelectorOperator { key: String, operator: String },
}

/// The kinds of object the model holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Pod,
    Service,
    EndpointSlice,
    NetworkPolicy,
    Node,
}

impl Kind {
    /// Every kind, in a fixed order.
    pub const ALL: [Kind; 6] = [
        Kind::Namespace,
        Kind::Pod,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::NetworkPolicy,
        Kind::Node,
    ];

    /// The Kubernetes `kind` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::Node => "Node",
        }
    }

    /// The Kubernetes `apiVersion` this agent reads the kind in.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Namespace | Kind::Pod | Kind::Service | Kind::Node => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::NetworkPolicy => "networking.k8s.io/v1",
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn is_namespaced(self) -> bool {
        !matches!(self, Kind::Namespace | Kind::Node)
    }

    /// The kind for an `apiVersion` and `kind` pair, if the model holds it.
    pub fn from_api(api_version: &str, kind: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == kind && k.api_version() == api_version)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One object of a kind the model holds.
#[derive(Debug, Clone, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "objects are few and short-lived on their way into ClusterState, which stores \
              them unboxed; boxing would only add noise to every producer"
)]
pub enum Object {
    Namespace(Namespace),
    Pod(Pod),
    Service(Service),
    EndpointSlice(EndpointSlice),
    NetworkPolicy(NetworkPolicy),
    Node(Node),
}

impl Object {
    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Pod(_) => Kind::Pod,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::NetworkPolicy(_) => Kind::NetworkPolicy,
            Object::Node(_) => Kind::Node,
        }
    }

    /// The object's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::NetworkPolicy(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
        }
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::Namespace(o) => &mut o.metadata,
            Object::Pod(o) => &mut o.metadata,
            Object::Service(o) => &mut o.metadata,
            Object::EndpointSlice(o) => &mut o.metadata,
            Object::NetworkPolicy(o) => &mut o.metadata,
            Object::Node(o) => &mut o.metadata,
        }
    }

    /// The namespace the object lives in: `None` for cluster-scoped kinds, and
    /// [`DEFAULT_NAMESPACE`] for a namespaced object whose metadata names none.
    pub fn namespace(&self) -> Option<&str> {
        if !self.kind().is_namespaced() {
            return None;
        }
        Some(
            self.metadata()
                .namespace
                .as_deref()
                .filter(|ns| !ns.is_empty())
                .unwrap_or(DEFAULT_NAMESPACE),
        )
    }

    /// The object's `metadata.name`, `None` if missing or empty.
    pub fn name(&self) -> Option<&str> {
        self.metadata().name.as_deref().filter(|n| !n.is_empty())
    }
}

macro_rules! impl_from {
    ($($ty:ident),*) => {$(
        impl From<$ty> for Object {
            fn from(o: $ty) -> Self {
                Object::$ty(o)
            }
        }
    )*};
}
impl_from!(Namespace, Pod, Service, EndpointSlice, NetworkPolicy, Node);

/// (namespace, name) of a namespaced object.
type NsKey = (String, String);

/// The objects this agent knows of.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterState {
    namespaces: BTreeMap<String, Namespace>,
    pods: BTreeMap<NsKey, Pod>,
    services: BTreeMap<NsKey, Service>,
    endpoint_slices: BTreeMap<NsKey, EndpointSlice>,
    network_policies: BTreeMap<NsKey, NetworkPolicy>,
    nodes: BTreeMap<String, Node>,
}

impl ClusterState {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `obj`, or replaces the object of the same kind, namespace and name.
    ///
    /// A namespaced object without a namespace is stored in [`DEFAULT_NAMESPACE`] with its
    /// `metadata.namespace` filled in; a cluster-scoped one has any namespace cleared.
    pub fn apply(&mut self, mut obj: Object) -> Result<(), ModelError> {
        let kind = obj.kind();
        let name = obj
            .name()
            .ok_or(ModelError::MissingName { kind })?
            .to_owned();
        let namespace = obj.namespace().map(str::to_owned);
        obj.metadata_mut().namespace.clone_from(&namespace);
        let key = || (namespace.clone().unwrap_or_default(), name.clone());
        match obj {
            Object::Namespace(o) => {
                self.namespaces.insert(name, o);
            }
            Object::Node(o) => {
                self.nodes.insert(name, o);
            }
            Object::Pod(o) => {
                self.pods.insert(key(), o);
            }
            Object::Service(o) => {
                self.services.insert(key(), o);
            }
            Object::EndpointSlice(o) => {
                self.endpoint_slices.insert(key(), o);
            }
            Object::NetworkPolicy(o) => {
                self.network_policies.insert(key(), o);
            }
        }
        Ok(())
    }

    /// Removes an object; returns whether it was present. `namespace` is ignored for
    /// cluster-scoped kinds and defaults to [`DEFAULT_NAMESPACE`] for namespaced ones.
    pub fn delete(&mut self, kind: Kind, namespace: Option<&str>, name: &str) -> bool {
        let key = || {
            let ns = namespace.filter(|ns| !ns.is_empty());
            (ns.unwrap_or(DEFAULT_NAMESPACE).to_owned(), name.to_owned())
        };
        match kind {
            Kind::Namespace => self.namespaces.remove(name).is_some(),
            Kind::Node => self.nodes.remove(name).is_some(),
            Kind::Pod => self.pods.remove(&key()).is_some(),
            Kind::Service => self.services.remove(&key()).is_some(),
            Kind::EndpointSlice => self.endpoint_slices.remove(&key()).is_some(),
            Kind::NetworkPolicy => self.network_policies.remove(&key()).is_some(),
        }
    }

    /// Whether the state holds no object at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The number of objects of every kind.
    pub fn len(&self) -> usize {
        self.namespaces.len()
            + self.pods.len()
            + self.services.len()
            + self.endpoint_slices.len()
            + self.network_policies.len()
            + self.nodes.len()
    }

    /// The namespace objects, by name.
    pub fn namespaces(&self) -> impl Iterator<Item = &Namespace> {
        self.namespaces.values()
    }

    /// A namespace object by name.
    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.get(name)
    }

    /// The labels of namespace `ns` as selectors see them: the namespace object's labels
    /// (if the object is known) plus `kubernetes.io/metadata.name: <ns>`, which the API
    /// server sets on every namespace.
    pub fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        let mut labels = self
            .namespaces
            .get(ns)
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default();
        labels.insert(NAMESPACE_NAME_LABEL.to_owned(), ns.to_owned());
        labels
    }

    /// Every pod, by namespace then name.
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.pods.values()
    }

    /// The pods of namespace `ns`, by name.
    pub fn pods_in(&self, ns: &str) -> impl Iterator<Item = &Pod> {
        in_namespace(&self.pods, ns)
    }

    /// A pod by namespace and name.
    pub fn pod(&self, ns: &str, name: &str) -> Option<&Pod> {
        self.pods.get(&(ns.to_owned(), name.to_owned()))
    }

    /// The pods (of namespace `ns`, or of all namespaces if `None`) that carry every label
    /// in `labels` (equality-based selection: an empty map selects every pod).
    pub fn pods_by_labels(&self, ns: Option<&str>, labels: &BTreeMap<String, String>) -> Vec<&Pod> {
        self.pods_where(ns, |pod_labels| {
            labels.iter().all(|(k, v)| pod_labels.get(k) == Some(v))
        })
    }

    /// The pods (of namespace `ns`, or all namespaces if `None`) that `selector` selects,
    /// with `matchLabels` and `matchExpressions` (see [`selector_matches`]).
    pub fn pods_by_selector(
        &self,
        ns: Option<&str>,
        selector: &LabelSelector,
    ) -> Result<Vec<&Pod>, ModelError> {
        // Validate once so that the filter below cannot fail.
        selector_matches(selector, &BTreeMap::new())?;
        Ok(self.pods_where(ns, |labels| {
            selector_matches(selector, labels).unwrap_or(false)
        }))
    }

    fn pods_where(
        &self,
        ns: Option<&str>,
        mut pred: impl FnMut(&BTreeMap<String, String>) -> bool,
    ) -> Vec<&Pod> {
        let empty = BTreeMap::new();
        let keep = |p: &&Pod| pred(p.metadata.labels.as_ref().unwrap_or(&empty));
        match ns {
            Some(ns) => in_namespace(&self.pods, ns).filter(keep).collect(),
            None => self.pods.values().filter(keep).collect(),
        }
    }

    /// Every service, by namespace then name.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }

    /// A service by namespace and name.
    pub fn service(&self, ns: &str, name: &str) -> Option<&Service> {
        self.services.get(&(ns.to_owned(), name.to_owned()))
    }

    /// Every endpoint slice, by namespace then name.
    pub fn endpoint_slices(&self) -> impl Iterator<Item = &EndpointSlice> {
        self.endpoint_slices.values()
    }

    /// An endpoint slice by namespace and name.
    pub fn endpoint_slice(&self, ns: &str, name: &str) -> Option<&EndpointSlice> {
        self.endpoint_slices.get(&(ns.to_owned(), name.to_owned()))
    }

    /// The endpoint slices of service `ns/service` (by their
    /// `kubernetes.io/service-name` label), by name.
    pub fn endpoint_slices_for_service(
        &self,
        ns: &str,
        service: &str,
    ) -> impl Iterator<Item = &EndpointSlice> {
        let service = service.to_owned();
        in_namespace(&self.endpoint_slices, ns).filter(move |s| {
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .is_some_and(|name| *name == service)
        })
    }

    /// Every network policy, by namespace then name.
    pub fn network_policies(&self) -> impl Iterator<Item = &NetworkPolicy> {
        self.network_policies.values()
    }

    /// The network policies of namespace `ns`, by name.
    pub fn network_policies_in(&self, ns: &str) -> impl Iterator<Item = &NetworkPolicy> {
        in_namespace(&self.network_policies, ns)
    }

    /// A network policy by namespace and name.
    pub fn network_policy(&self, ns: &str, name: &str) -> Option<&NetworkPolicy> {
        self.network_policies.get(&(ns.to_owned(), name.to_owned()))
    }

    /// Every node, by name.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    /// The pod CIDRs of node `node_name`: `spec.podCIDRs` if set (one per address family),
    /// else `spec.podCIDR`. Empty if the node is unknown or has none; an entry that does not
    /// parse is logged and left out.
    pub fn pod_cidrs(&self, node_name: &str) -> Vec<IpNetwork> {
        let Some(spec) = self.nodes.get(node_name).and_then(|n| n.spec.as_ref()) else {
            return Vec::new();
        };
        let cidrs: Vec<&str> = match &spec.pod_cidrs {
            Some(list) if !list.is_empty() => list.iter().map(String::as_str).collect(),
            _ => spec.pod_cidr.as_deref().into_iter().collect(),
        };
        cidrs
            .into_iter()
            .filter_map(|cidr| match cidr.parse::<IpNetwork>() {
                Ok(net) => Some(net),
                Err(error) => {
                    warn!(node = node_name, cidr, %error, "ignoring invalid pod CIDR");
                    None
                }
            })
            .collect()
    }
}

/// The values of `map` whose key is in namespace `ns`, by name.
fn in_namespace<'a, V>(map: &'a BTreeMap<NsKey, V>, ns: &str) -> impl Iterator<Item = &'a V> + 'a {
    let ns = ns.to_owned();
    map.range((ns.clone(), String::new())..)
        .take_while(move |((key_ns, _), _)| *key_ns == ns)
        .map(|(_, v)| v)
}

/// What the rest of the agent needs to know about a pod's life, read in one place (policy
/// and services each decide from it what a pod is to them):
/// - `finished`: `status.phase` is `Succeeded` or `Failed`; its containers will not run again
///   and its address may already be another pod's (the API reference, "Pod phase");
/// - `terminating`: `metadata.deletionTimestamp` is set; it still runs until it is gone;
/// - `host_network`: `spec.hostNetwork`; it has no address of its own, its traffic is the
///   node's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodLife {
    pub finished: bool,
    pub terminating: bool,
    pub host_network: bool,
}

impl PodLife {
    pub fn of(pod: &Pod) -> Self {
        PodLife {
            finished: matches!(
                pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            ),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            host_network: pod.spec.as_ref().and_then(|s| s.host_network) == Some(true),
        }
    }

    /// Whether the pod is on the pod network now: running (or about to), with its own
    /// network namespace. Such pods are NetworkPolicy's endpoints and peers, terminating ones
    /// included (they still send and receive until they are gone).
    pub fn on_pod_network(self) -> bool {
        !self.finished && !self.host_network
    }

    /// Whether the EndpointSlice controller lists the pod as a Service endpoint: not finished
    /// and not terminating (hostNetwork pods serve at their node's address).
    pub fn serves(self) -> bool {
        !self.finished && !self.terminating
    }
}

/// Whether `selector` selects an object with `labels`, with Kubernetes semantics: every
/// `matchLabels` pair and every `matchExpressions` requirement must hold, so an empty
/// selector selects everything. `In` with no values selects nothing.
pub fn selector_matches(
    selector: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> Result<bool, ModelError> {
    let mut matches = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    for req in selector.match_expressions.iter().flatten() {
        let value = labels.get(&req.key);
        let in_values = || value.is_some_and(|v| req.values.iter().flatten().any(|x| x == v));
        let holds = match req.operator.as_str() {
            "In" => in_values(),
            "NotIn" => !in_values(),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            other => {
                return Err(ModelError::UnknownSelectorOperator {
                    key: req.key.clone(),
                    operator: other.to_owned(),
                })
            }
        };
        matches &= holds;
    }
    Ok(matches)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Test that a pod's life is read as the API reference defines it: `Succeeded` and
    /// `Failed` are finished phases (`Running`, `Pending` and none are not), a set
    /// `deletionTimestamp` is terminating, `hostNetwork: true` shares the node's network; and
    /// that policy takes terminating pods but not finished or hostNetwork ones, services
    /// hostNetwork pods but not finished or terminating ones.
    #[test]
    fn pod_life_follows_phase_deletion_and_host_network() {
        let life = |v: serde_json::Value| PodLife::of(&serde_json::from_value::<Pod>(v).unwrap());
        for phase in ["Succeeded", "Failed"] {
            let l = life(json!({"metadata": {"name": "p"}, "status": {"phase": phase}}));
            assert!(l.finished && !l.on_pod_network() && !l.serves(), "{phase}");
        }
        for phase in ["Running", "Pending"] {
            let l = life(json!({"metadata": {"name": "p"}, "status": {"phase": phase}}));
            assert!(!l.finished && l.on_pod_network() && l.serves(), "{phase}");
        }
        let l = life(json!({"metadata": {"name": "p"}}));
        assert!(l.on_pod_network() && l.serves(), "no status");
        let l =
            life(json!({"metadata": {"name": "p", "deletionTimestamp": "2026-01-01T00:00:00Z"}}));
        assert!(l.terminating && l.on_pod_network() && !l.serves());
        let l = life(
            json!({"metadata": {"name": "p"}, "spec": {"hostNetwork": true, "containers": []}}),
        );
        assert!(l.host_network && !l.on_pod_network() && l.serves());
    }

    fn pod(ns: Option<&str>, name: &str, labels: serde_json::Value) -> Object {
        let mut v = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]},
        });
        if let Some(ns) = ns {
            v["metadata"]["namespace"] = json!(ns);
        }
        Object::Pod(serde_json::from_value(v).expect("valid pod"))
    }

    fn node(spec: serde_json::Value) -> Object {
        let v = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "node-a"},
            "spec": spec,
        });
        Object::Node(serde_json::from_value(v).expect("valid node"))
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn names<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> Vec<&'a str> {
        pods.into_iter()
            .map(|p| p.metadata.name.as_deref().unwrap_or_default())
            .collect()
    }

    /// Test that a pod without a namespace is stored, and found, in `default`.
    #[test]
    fn apply_pod_without_namespace_lands_in_default() {
        let mut state = ClusterState::new();
        let obj = pod(None, "web", json!({"app": "web"}));
        assert_eq!(obj.namespace(), Some("default"));
        state.apply(obj).expect("apply");
        let stored = state.pod("default", "web").expect("pod in default");
        assert_eq!(stored.metadata.namespace.as_deref(), Some("default"));
    }

    /// Test that an object without a name is rejected with an error that says so.
    #[test]
    fn apply_without_name_is_rejected() {
        let mut state = ClusterState::new();
        let err = state.apply(pod(None, "", json!({}))).expect_err("rejected");
        assert!(matches!(err, ModelError::MissingName { kind: Kind::Pod }));
        assert_eq!(err.to_string(), "Pod has no metadata.name");
        assert!(state.is_empty());
    }

    /// Test that applying an object twice replaces it and delete removes it.
    #[test]
    fn apply_replaces_and_delete_removes() {
        let mut state = ClusterState::new();
        state
            .apply(pod(Some("shop"), "web", json!({"v": "1"})))
            .expect("apply");
        state
            .apply(pod(Some("shop"), "web", json!({"v": "2"})))
            .expect("apply");
        assert_eq!(state.len(), 1);
        let web = state.pod("shop", "web").expect("pod");
        assert_eq!(web.metadata.labels, Some(labels(&[("v", "2")])));
        assert!(!state.delete(Kind::Pod, Some("default"), "web"));
        assert!(state.delete(Kind::Pod, Some("shop"), "web"));
        assert!(state.is_empty());
    }

    /// Test that pods_by_labels selects by label subset, per namespace or across all.
    #[test]
    fn pods_by_labels_selects_label_subset() {
        let mut state = ClusterState::new();
        for obj in [
            pod(Some("a"), "web-1", json!({"app": "web", "tier": "front"})),
            pod(Some("a"), "db-1", json!({"app": "db"})),
            pod(Some("b"), "web-2", json!({"app": "web"})),
            pod(Some("ab"), "web-3", json!({"app": "web"})),
        ] {
            state.apply(obj).expect("apply");
        }
        let web = labels(&[("app", "web")]);
        assert_eq!(
            names(state.pods_by_labels(None, &web)),
            ["web-1", "web-3", "web-2"]
        );
        assert_eq!(names(state.pods_by_labels(Some("a"), &web)), ["web-1"]);
        assert_eq!(
            names(state.pods_by_labels(Some("a"), &BTreeMap::new())),
            ["db-1", "web-1"]
        );
        let front = labels(&[("app", "web"), ("tier", "front")]);
        assert_eq!(names(state.pods_by_labels(None, &front)), ["web-1"]);
    }

    /// Test that label selectors honour matchExpressions and reject unknown operators.
    #[test]
    fn selector_match_expressions() {
        let sel = |v: serde_json::Value| -> LabelSelector {
            serde_json::from_value(v).expect("selector")
        };
        let l = labels(&[("app", "web"), ("env", "prod")]);
        let in_sel = sel(
            json!({"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "stage"]}]}),
        );
        assert!(selector_matches(&in_sel, &l).expect("valid"));
        let not_in = sel(
            json!({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]}),
        );
        assert!(!selector_matches(&not_in, &l).expect("valid"));
        let exists = sel(
            json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]}),
        );
        assert!(selector_matches(&exists, &l).expect("valid"));
        assert!(selector_matches(&LabelSelector::default(), &l).expect("valid"));
        let bad = sel(json!({"matchExpressions": [{"key": "env", "operator": "Like"}]}));
        assert!(matches!(
            selector_matches(&bad, &l),
            Err(ModelError::UnknownSelectorOperator { .. })
        ));
        let mut state = ClusterState::new();
        state
            .apply(pod(Some("a"), "web", json!({"env": "prod"})))
            .expect("apply");
        assert_eq!(
            names(state.pods_by_selector(None, &in_sel).expect("valid")),
            ["web"]
        );
        assert!(state.pods_by_selector(None, &bad).is_err());
    }

    /// Test that namespace labels always include kubernetes.io/metadata.name, with or
    /// without a Namespace object.
    #[test]
    fn namespace_labels_include_metadata_name() {
        let mut state = ClusterState::new();
        assert_eq!(
            state.namespace_labels("ghost"),
            labels(&[(NAMESPACE_NAME_LABEL, "ghost")])
        );
        let ns = json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "shop", "labels": {"team": "payments"}}});
        let ns: Namespace = serde_json::from_value(ns).expect("namespace");
        state.apply(ns.into()).expect("apply");
        assert_eq!(
            state.namespace_labels("shop"),
            labels(&[(NAMESPACE_NAME_LABEL, "shop"), ("team", "payments")])
        );
    }

    /// Test that node pod CIDRs come from podCIDRs, falling back to podCIDR.
    #[test]
    fn node_pod_cidrs_from_pod_cidrs_and_pod_cidr() {
        let mut state = ClusterState::new();
        assert!(state.pod_cidrs("node-a").is_empty());
        state
            .apply(node(json!({"podCIDR": "10.244.1.0/24"})))
            .expect("apply");
        let v4: IpNetwork = "10.244.1.0/24".parse().expect("cidr");
        assert_eq!(state.pod_cidrs("node-a"), [v4]);
        state
            .apply(node(json!({"podCIDR": "10.244.1.0/24",
                "podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64", "bogus"]})))
            .expect("apply");
        let v6: IpNetwork = "fd00:10:244:1::/64".parse().expect("cidr");
        assert_eq!(state.pod_cidrs("node-a"), [v4, v6]);
        assert!(state.node("node-a").is_some());
    }
}
