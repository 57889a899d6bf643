//! The RBAC manifests grant exactly what the code uses. The (group, resource, verb) set is
//! derived from the requests the operator makes in the mocked-API-server scenarios (every
//! reconcile path, leader election, the CRD wait), not from a list kept by hand, and checked
//! against deploy/rbac/:
//! - every request is allowed to the operator's ServiceAccount;
//! - nothing is granted that no request needs (least privilege, no wildcards);
//! - nothing is granted cluster-wide that is only ever needed in the operator's own namespace.

mod kubernetes_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use kubernetes_support::*;
use serde::Deserialize;
use serde_yaml_ng::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf()
}

/// One permission as RBAC sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Use {
    group: String,
    resource: String,
    verb: String,
    /// `None` for cluster-scoped requests and lists across namespaces.
    namespace: Option<String>,
    name: Option<String>,
}

/// A rule granted to the operator, and where it applies.
#[derive(Clone, Debug)]
struct Grant {
    /// `None`: every namespace (a ClusterRole bound by a ClusterRoleBinding).
    namespace: Option<String>,
    role: String,
    groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
    names: Vec<String>,
}

impl Grant {
    fn allows(&self, u: &Use) -> bool {
        let in_scope = match &self.namespace {
            None => true,
            Some(ns) => u.namespace.as_deref() == Some(ns.as_str()),
        };
        in_scope
            && self.groups.contains(&u.group)
            && self.resources.contains(&u.resource)
            && self.verbs.contains(&u.verb)
            && (self.names.is_empty() || u.name.as_ref().is_some_and(|n| self.names.contains(n)))
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| s.iter().filter_map(|x| x.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

fn docs(dir: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join(dir))
        .expect("deploy dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read");
        for d in serde_yaml_ng::Deserializer::from_str(&text) {
            let v = Value::deserialize(d).expect("yaml");
            if !v.is_null() {
                out.push(v);
            }
        }
    }
    out
}

/// The operator's ServiceAccount, from its Deployment.
fn operator_account() -> (String, String) {
    let d = docs("deploy/operator")
        .into_iter()
        .find(|d| d["kind"].as_str() == Some("Deployment"))
        .expect("Deployment");
    let ns = d["metadata"]["namespace"].as_str().expect("namespace").to_string();
    let sa =
        d["spec"]["template"]["spec"]["serviceAccountName"].as_str().expect("serviceAccountName").to_string();
    (ns, sa)
}

/// Every rule bound to the operator's ServiceAccount.
fn grants() -> Vec<Grant> {
    let (sa_ns, sa) = operator_account();
    let rbac = docs("deploy/rbac");
    let roles: BTreeMap<(String, Option<String>, String), &Value> = rbac
        .iter()
        .filter(|d| matches!(d["kind"].as_str(), Some("ClusterRole" | "Role")))
        .map(|d| {
            let kind = d["kind"].as_str().unwrap_or_default().to_string();
            let ns = d["metadata"]["namespace"].as_str().map(String::from);
            let name = d["metadata"]["name"].as_str().unwrap_or_default().to_string();
            ((kind, if d["kind"] == "Role" { ns } else { None }, name), d)
        })
        .collect();
    let mut out = Vec::new();
    for b in rbac.iter().filter(|d| matches!(d["kind"].as_str(), Some("ClusterRoleBinding" | "RoleBinding")))
    {
        let binds_us = b["subjects"].as_sequence().into_iter().flatten().any(|s| {
            s["kind"].as_str() == Some("ServiceAccount")
                && s["name"].as_str() == Some(sa.as_str())
                && s["namespace"].as_str() == Some(sa_ns.as_str())
        });
        if !binds_us {
            continue;
        }
        let binding_ns = b["metadata"]["namespace"].as_str().map(String::from);
        let role_kind = b["roleRef"]["kind"].as_str().unwrap_or_default().to_string();
        let role_name = b["roleRef"]["name"].as_str().unwrap_or_default().to_string();
        let key = (
            role_kind.clone(),
            if role_kind == "Role" { binding_ns.clone() } else { None },
            role_name.clone(),
        );
        let role = roles
            .get(&key)
            .unwrap_or_else(|| panic!("binding {:?} refers to missing {key:?}", b["metadata"]["name"]));
        // A ClusterRoleBinding grants everywhere; a RoleBinding only in its namespace.
        let scope = if b["kind"] == "ClusterRoleBinding" { None } else { binding_ns.clone() };
        for rule in role["rules"].as_sequence().expect("rules") {
            out.push(Grant {
                namespace: scope.clone(),
                role: role_name.clone(),
                groups: strings(&rule["apiGroups"]),
                resources: strings(&rule["resources"]),
                verbs: strings(&rule["verbs"]),
                names: strings(&rule["resourceNames"]),
            });
        }
    }
    out
}

/// What the operator's code asks of the API server, over every scenario.
async fn uses() -> BTreeSet<Use> {
    let mut apis = vec![
        scenario_first_reconcile().await.0,
        scenario_bootstrap().await.0,
        scenario_failover().await.0,
        scenario_switchover().await.0,
        scenario_scale_down().await.0,
        scenario_stray_primary().await.0,
        scenario_spec_change_between_passes().await.0,
        scenario_invalid_spec().await.0,
        scenario_malformed().await.0,
        scenario_deletion().await.0,
        scenario_operator_run().await,
    ];
    // A failed pod is replaced.
    let (api, managers) = healthy_cluster(serde_json::json!({})).await;
    api.modify(&pod_path(NS, "og-1"), |p| p["status"] = serde_json::json!({"phase": "Failed"}));
    managers.set("og-1", None);
    reconcile_once(&api, &context(&api, managers.port), "og").await.expect("reconcile");
    apis.push(api);

    let mut out = BTreeSet::new();
    for api in apis {
        for call in api.calls() {
            let t = call.target();
            for verb in call.verbs() {
                out.insert(Use {
                    group: t.group.clone(),
                    resource: t.rbac_resource(),
                    verb: verb.to_string(),
                    namespace: t.namespace.clone(),
                    name: t.name.clone(),
                });
            }
            // Writing an object whose owner reference blocks the owner's deletion needs
            // `update` on the owner's finalizers where the OwnerReferencesPermissionEnforcement
            // admission plugin runs (OpenShift, and clusters that enable it).
            let blocking =
                call.body.as_ref().and_then(|b| b["metadata"]["ownerReferences"].as_array().cloned());
            for owner in blocking.iter().flatten().filter(|o| o["blockOwnerDeletion"] == true) {
                if owner["kind"] == "OpenGaussCluster" {
                    out.insert(Use {
                        group: "ha.opengauss.dev".into(),
                        resource: "opengaussclusters/finalizers".into(),
                        verb: "update".into(),
                        namespace: t.namespace.clone(),
                        name: owner["name"].as_str().map(String::from),
                    });
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_grants_exactly_what_the_code_uses() {
    let (operator_ns, _) = operator_account();
    assert_eq!(operator_ns, OPERATOR_NS, "the scenarios run the operator in its deploy/ namespace");
    let grants = grants();
    assert!(!grants.is_empty(), "no rule is bound to the operator's ServiceAccount");
    let uses = uses().await;
    let mut problems = Vec::new();

    for g in &grants {
        for list in [&g.groups, &g.resources, &g.verbs] {
            if list.iter().any(|x| x.contains('*')) {
                problems.push(format!("{} grants a wildcard: {g:?}", g.role));
            }
        }
    }

    // 1. Everything used is granted.
    for u in &uses {
        if !grants.iter().any(|g| g.allows(u)) {
            problems.push(format!(
                "not granted: {} {}/{} in {}{}",
                u.verb,
                if u.group.is_empty() { "core" } else { &u.group },
                u.resource,
                u.namespace.as_deref().unwrap_or("(all namespaces / cluster)"),
                u.name.as_ref().map(|n| format!(" (name {n})")).unwrap_or_default()
            ));
        }
    }

    // 2. Everything granted is used, and cluster-wide grants are needed outside the operator's
    //    own namespace.
    for g in &grants {
        for group in &g.groups {
            for resource in &g.resources {
                for verb in &g.verbs {
                    let matching: Vec<&Use> = uses
                        .iter()
                        .filter(|u| u.group == *group && u.resource == *resource && u.verb == *verb)
                        .filter(|u| g.allows(u))
                        .collect();
                    let what = format!("{verb} {group}/{resource} ({})", g.role);
                    if matching.is_empty() {
                        problems.push(format!("granted but never used: {what}"));
                    } else if g.namespace.is_none()
                        && matching.iter().all(|u| u.namespace.as_deref() == Some(OPERATOR_NS))
                    {
                        problems.push(format!(
                            "granted cluster-wide but only used in {OPERATOR_NS}: {what}; use a Role there"
                        ));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "RBAC does not match the code:\n{}", problems.join("\n"));
}

#[test]
fn rbac_check_notices_a_missing_grant() {
    // The matcher itself: a namespaced grant does not cover another namespace, resource
    // names restrict, and verbs are exact.
    let g = Grant {
        namespace: Some(OPERATOR_NS.into()),
        role: "r".into(),
        groups: vec!["coordination.k8s.io".into()],
        resources: vec!["leases".into()],
        verbs: vec!["get".into()],
        names: vec!["opengauss-operator-leader".into()],
    };
    let u = |ns: &str, verb: &str, name: &str| Use {
        group: "coordination.k8s.io".into(),
        resource: "leases".into(),
        verb: verb.into(),
        namespace: Some(ns.into()),
        name: Some(name.into()),
    };
    assert!(g.allows(&u(OPERATOR_NS, "get", "opengauss-operator-leader")));
    assert!(!g.allows(&u("apps", "get", "opengauss-operator-leader")));
    assert!(!g.allows(&u(OPERATOR_NS, "patch", "opengauss-operator-leader")));
    assert!(!g.allows(&u(OPERATOR_NS, "get", "other")));
}
