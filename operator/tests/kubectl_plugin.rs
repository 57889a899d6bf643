//! `kubectl opengauss` against a mocked API server.

mod kubernetes_support;

use std::time::Duration;

use kubernetes_support::*;
use opengauss_operator::plugin;
use serde_json::json;

fn status_json() -> serde_json::Value {
    json!({
        "phase": "Healthy",
        "phaseReason": "3 instance(s) ready, every standby streaming",
        "currentPrimary": "og-0",
        "targetPrimary": "og-0",
        "readyInstances": 3,
        "synchronous": {"method": "any", "number": 1, "standbys": ["og-1", "og-2"]},
        "instances": [
            {"name": "og-0", "role": "primary", "ready": true, "state": "running", "address": "og-0.og-hl:5432",
             "timeline": 2, "currentLsn": "0/5000060"},
            {"name": "og-1", "role": "standby", "ready": true, "state": "streaming", "address": "og-1.og-hl:5432",
             "timeline": 2, "receivedLsn": "0/5000060", "replayedLsn": "0/5000000", "lagBytes": 96,
             "replicationState": "streaming", "syncState": "quorum"},
            {"name": "og-2", "role": "standby", "ready": false, "state": "fenced", "address": "og-2.og-hl:5432"},
        ],
    })
}

fn world() -> FakeApi {
    let api = FakeApi::new();
    let mut cluster = cluster_json("og", json!({"instances": 3, "engine": "openGauss"}));
    cluster["status"] = status_json();
    cluster["metadata"]["resourceVersion"] = json!("7");
    api.insert(&cluster_path(NS, "og"), cluster);
    let mut other = cluster_json("pg", json!({"instances": 2, "engine": "postgres"}));
    other["status"] = json!({"phase": "Degraded", "currentPrimary": "pg-1", "readyInstances": 1});
    api.insert(&cluster_path(NS, "pg"), other);
    api
}

#[tokio::test]
async fn status_of_one_cluster_reads_like_gs_ctl_query() {
    let api = world();
    let out = plugin::status(&api.client(), NS, Some("og"), false).await.expect("status");
    assert!(out.contains(&format!("Cluster:  {NS}/og")), "{out}");
    assert!(out.contains("Phase:    Healthy"), "{out}");
    assert!(out.contains("Sync:     ANY 1 (og-1, og-2)"), "{out}");
    let row = |name: &str| {
        out.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} row in {out}"))
    };
    assert!(row("og-0").contains("primary") && row("og-0").contains("0/5000060"));
    for cell in ["standby", "streaming", "yes", "quorum", "96"] {
        assert!(row("og-1").contains(cell), "{cell} in {}", row("og-1"));
    }
    assert!(row("og-2").contains("fenced") && row("og-2").contains("no"));
    assert!(api.writes().is_empty(), "status only reads");
}

#[tokio::test]
async fn status_json_is_the_clusters_status() {
    let api = world();
    let out = plugin::status(&api.client(), NS, Some("og"), true).await.expect("status");
    let parsed: opengauss_crd::OpenGaussClusterStatus = serde_json::from_str(&out).expect("json");
    let expected: opengauss_crd::OpenGaussClusterStatus =
        serde_json::from_value(status_json()).expect("status");
    assert_eq!(parsed, expected);
}

#[tokio::test]
async fn status_without_a_name_lists_every_cluster() {
    let api = world();
    let out = plugin::status(&api.client(), NS, None, false).await.expect("status");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{out}");
    assert!(
        lines.iter().any(|l| l.starts_with("og ") && l.contains("Healthy") && l.contains("og-0")),
        "{out}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("pg ") && l.contains("Degraded") && l.contains("pg-1")),
        "{out}"
    );
}

#[tokio::test]
async fn a_missing_cluster_is_named() {
    let api = world();
    let err = plugin::status(&api.client(), NS, Some("nope"), false).await.unwrap_err();
    assert!(format!("{err:#}").contains(&format!("{NS}/nope")), "{err:#}");
}

#[tokio::test]
async fn fence_and_unfence_edit_the_spec_once() {
    let api = world();
    let client = api.client();
    assert!(plugin::set_fenced(&client, NS, "og", "og-1", true).await.expect("fence"));
    assert_eq!(stored_cluster(&api, "og").spec.fenced_instances, ["og-1"]);
    let writes = api.writes().len();
    assert!(!plugin::set_fenced(&client, NS, "og", "og-1", true).await.expect("again"), "already fenced");
    assert_eq!(api.writes().len(), writes, "nothing written the second time");
    assert!(plugin::set_fenced(&client, NS, "og", "og-1", false).await.expect("unfence"));
    assert!(stored_cluster(&api, "og").spec.fenced_instances.is_empty());
    let err = plugin::set_fenced(&client, NS, "og", "og-5", true).await.unwrap_err();
    assert!(err.to_string().contains("not an instance of cluster og"), "{err}");
}

#[tokio::test]
async fn switchover_annotates_and_waits_for_the_new_primary() {
    let api = world();
    let client = api.client();
    let operator = {
        let api = api.clone();
        tokio::spawn(async move {
            // Plays the operator: once the annotation is there, make og-1 primary and drop it.
            loop {
                let c = api.get(&cluster_path(NS, "og")).expect("cluster");
                if c["metadata"]["annotations"]["ha.opengauss.dev/switchover-to"] == "og-1" {
                    api.modify(&cluster_path(NS, "og"), |c| {
                        c["status"]["currentPrimary"] = json!("og-1");
                        c["metadata"]["annotations"] = json!({});
                    });
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    plugin::switchover(&client, NS, "og", "og-1", Duration::from_secs(10)).await.expect("switchover");
    operator.await.expect("fake operator");
    let err = plugin::switchover(&client, NS, "og", "og-1", Duration::from_secs(1)).await.unwrap_err();
    assert!(err.to_string().contains("already the primary"), "{err}");
}

#[tokio::test]
async fn psql_opens_the_engine_shell_on_the_primary_socket() {
    let api = world();
    let argv = plugin::psql_command(&api.client(), NS, "og", None, &[], true).await.expect("argv");
    let line = argv.join(" ");
    assert!(line.starts_with(&format!("kubectl exec -it -n {NS} og-0 -c database -- gsql")), "{line}");
    assert!(line.contains("-U omm"), "openGauss's initial user over the socket: {line}");
    let extra = vec!["-c".to_string(), "SELECT 1".to_string()];
    let argv =
        plugin::psql_command(&api.client(), NS, "pg", Some("pg-0"), &extra, false).await.expect("argv");
    let line = argv.join(" ");
    assert!(
        line.starts_with(&format!("kubectl exec -i -n {NS} pg-0 -c database -- psql")),
        "no terminal: {line}"
    );
    assert!(line.ends_with("-c SELECT 1"), "the shell's arguments come last: {line}");
}

#[tokio::test]
async fn ca_prints_the_authoritys_certificate_and_never_its_key() {
    let api = world();
    let mut tls_cluster = cluster_json("secure", json!({"instances": 3, "tls": {"enabled": true}}));
    tls_cluster["metadata"]["resourceVersion"] = json!("3");
    api.insert(&cluster_path(NS, "secure"), tls_cluster);
    let client = api.client();

    // Before the operator made the Secret: told so, not an empty answer.
    let error = format!("{:#}", plugin::authority(&client, NS, "secure").await.expect_err("no Secret yet"));
    assert!(error.contains("secure-ca") && error.contains("does not exist yet"), "{error}");

    let cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let key = "-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n";
    api.insert(
        &format!("/api/v1/namespaces/{NS}/secrets/secure-ca"),
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "secure-ca", "namespace": NS},
            "data": {"ca.crt": base64_like::encode(cert.as_bytes()), "ca.key": base64_like::encode(key.as_bytes())},
        }),
    );
    let out = plugin::authority(&client, NS, "secure").await.expect("the authority");
    assert_eq!(out, cert);
    assert!(!out.contains("PRIVATE KEY"));
    assert!(api.writes().is_empty(), "ca only reads");

    // A cluster without TLS has no authority, and the error says why.
    let error = format!("{:#}", plugin::authority(&client, NS, "og").await.expect_err("no TLS"));
    assert!(error.contains("spec.tls.enabled is false"), "{error}");
    let error = format!("{:#}", plugin::authority(&client, NS, "nope").await.expect_err("no cluster"));
    assert!(error.contains("OpenGaussCluster apps/nope"), "{error}");
}
