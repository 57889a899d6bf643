//! The cluster's certificates on Kubernetes: its authority in Secret `<name>-ca` (made once by
//! the operator, or brought by the user before the cluster; never overwritten), and in Secret
//! `<name>-tls` each instance's server certificate and key beside the authority's certificate,
//! issued before the instance's pod is made and renewed when a third of the lifetime is left.
//! Each pod mounts its own items; its manager takes up renewed files without a restart.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use opengauss_crd::OpenGaussCluster;
use opengauss_crd::names::instance_names;
use time::OffsetDateTime;

use super::FIELD_MANAGER;
use super::builders::{
    ca_secret_name, certificate_names, cluster_labels, cluster_name, instance_host, meta, namespace,
    tls_keys, tls_secret_name,
};
use super::options::Options;
use crate::tls::{Authority, KeyedCertificate};

/// A Secret's value for `key` as text (from `data`, or `stringData` not yet merged).
fn text(secret: &Secret, key: &str) -> Option<String> {
    let from_data =
        secret.data.as_ref().and_then(|d| d.get(key)).and_then(|b| String::from_utf8(b.0.clone()).ok());
    from_data.or_else(|| secret.string_data.as_ref().and_then(|d| d.get(key)).cloned())
}

/// The authority kept in `secret` (the CA Secret), checked fit to issue with.
pub fn authority_from(secret: &Secret, now: OffsetDateTime) -> anyhow::Result<Authority> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let cert =
        text(secret, tls_keys::CA).with_context(|| format!("Secret {name} has no {:?}", tls_keys::CA))?;
    let key = text(secret, tls_keys::CA_KEY).with_context(|| {
        format!(
            "Secret {name} has no {:?}: the operator issues each instance's certificate with the \
             authority's key (server certificates supplied without it are not supported yet)",
            tls_keys::CA_KEY
        )
    })?;
    Authority::from_pem(cert, key, now)
        .map_err(|e| anyhow::anyhow!("Secret {name}: the certificate authority is {e}"))
}

fn secret_with(c: &OpenGaussCluster, name: String, entries: &BTreeMap<String, String>) -> Secret {
    Secret {
        metadata: meta(c, name, cluster_labels(cluster_name(c))),
        type_: Some("Opaque".into()),
        data: Some(entries.iter().map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes()))).collect()),
        ..Secret::default()
    }
}

/// The CA Secret for a new `authority`.
pub fn ca_secret(c: &OpenGaussCluster, authority: &Authority) -> Secret {
    let entries = BTreeMap::from([
        (tls_keys::CA.to_string(), authority.cert_pem().to_string()),
        (tls_keys::CA_KEY.to_string(), authority.0.key_pem.clone()),
    ]);
    secret_with(c, ca_secret_name(cluster_name(c)), &entries)
}

/// What the TLS Secret should hold.
#[derive(Debug, Default)]
pub struct TlsSecretPlan {
    pub entries: BTreeMap<String, String>,
    /// The instances given a new certificate, and why.
    pub issued: Vec<(String, String)>,
}

/// The TLS Secret's entries from its current ones (`current`): the authority's certificate,
/// and for every instance the pair it has unless it is missing, foreign, too narrow or due, in
/// which case a new one. Entries of instances no longer in the spec are kept (a pod being
/// removed still mounts them).
pub fn plan_tls_secret(
    c: &OpenGaussCluster,
    authority: &Authority,
    current: &BTreeMap<String, String>,
    opts: &Options,
    now: OffsetDateTime,
) -> anyhow::Result<TlsSecretPlan> {
    let lifetime = Duration::from_secs(c.spec.tls.certificate_lifetime_seconds);
    let mut entries = current.clone();
    entries.insert(tls_keys::CA.into(), authority.cert_pem().to_string());
    let mut issued = Vec::new();
    for instance in instance_names(cluster_name(c), c.spec.instances) {
        let (cert_key, key_key) = (tls_keys::certificate(&instance), tls_keys::key(&instance));
        let pair = match (current.get(&cert_key), current.get(&key_key)) {
            (Some(cert), Some(key)) => {
                Some(KeyedCertificate { cert_pem: cert.clone(), key_pem: key.clone() })
            }
            _ => None,
        };
        let names = certificate_names(c, &instance, opts);
        if let Some(reason) = authority.renewal_reason(pair.as_ref(), &names, now.unix_timestamp()) {
            // The subject is the name peers replicate from: openGauss's libpq checks only the
            // subject's common name.
            let fresh = authority.issue(&instance_host(c, &instance, opts), &names, now, lifetime)?;
            entries.insert(cert_key, fresh.cert_pem);
            entries.insert(key_key, fresh.key_pem);
            issued.push((instance, reason));
        }
    }
    Ok(TlsSecretPlan { entries, issued })
}

/// How soon the certificates are looked at again: often enough to renew within the last third
/// of even the shortest lifetime, at most once a minute.
pub fn recheck_every(c: &OpenGaussCluster) -> Duration {
    Duration::from_secs((c.spec.tls.certificate_lifetime_seconds / 10).clamp(1, 60))
}

/// The cluster's authority, made and kept in its CA Secret on first use, and its TLS Secret
/// brought up to date. Returns the authority's certificate and the certificates issued.
pub async fn ensure(
    client: &kube::Client,
    c: &OpenGaussCluster,
    opts: &Options,
) -> anyhow::Result<(String, Vec<(String, String)>)> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace(c));
    let now = OffsetDateTime::now_utc();
    let ca_name = ca_secret_name(cluster_name(c));
    let authority = match api.get_opt(&ca_name).await.with_context(|| format!("reading Secret {ca_name}"))? {
        Some(secret) => authority_from(&secret, now)?,
        None => {
            let fresh = Authority::generate(cluster_name(c), now)?;
            let pp = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() };
            match api.create(&pp, &ca_secret(c, &fresh)).await {
                Ok(_) => fresh,
                // Made meanwhile (another replica, or the user): use that one.
                Err(kube::Error::Api(s)) if s.code == 409 => authority_from(
                    &api.get(&ca_name).await.with_context(|| format!("reading Secret {ca_name}"))?,
                    now,
                )?,
                Err(e) => return Err(e).with_context(|| format!("creating Secret {ca_name}")),
            }
        }
    };
    let tls_name = tls_secret_name(cluster_name(c));
    let current: BTreeMap<String, String> = api
        .get_opt(&tls_name)
        .await
        .with_context(|| format!("reading Secret {tls_name}"))?
        .map(|s| {
            s.data
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(k, v)| String::from_utf8(v.0).ok().map(|v| (k, v)))
                .collect()
        })
        .unwrap_or_default();
    let plan = plan_tls_secret(c, &authority, &current, opts, now)?;
    if plan.entries != current {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        api.patch(&tls_name, &params, &Patch::Apply(&secret_with(c, tls_name.clone(), &plan.entries)))
            .await
            .with_context(|| format!("applying Secret {tls_name}"))?;
    }
    Ok((authority.cert_pem().to_string(), plan.issued))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(instances: u32) -> OpenGaussCluster {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "ha.opengauss.dev/v1alpha1", "kind": "OpenGaussCluster",
            "metadata": {"name": "og", "namespace": "db", "uid": "u1"},
            "spec": {"engine": "postgres", "instances": instances, "tls": {"certificateLifetimeSeconds": 3000}}
        }))
        .expect("cluster")
    }

    #[test]
    fn every_instance_gets_a_pair_naming_its_services_and_keeps_it_until_due() {
        let opts = Options::default();
        let c = cluster(2);
        let now = OffsetDateTime::now_utc();
        let ca = Authority::generate("og", now).expect("ca");
        let first = plan_tls_secret(&c, &ca, &BTreeMap::new(), &opts, now).expect("plan");
        assert_eq!(first.issued.len(), 2, "{:?}", first.issued);
        assert!(first.issued.iter().all(|(_, why)| why == "it has none yet"));
        let pair = KeyedCertificate {
            cert_pem: first.entries["og-1.crt"].clone(),
            key_pem: first.entries["og-1.key"].clone(),
        };
        let names = ["og-rw.db.svc", "og-ro", "og-1.og-headless.db.svc.cluster.local", "localhost"];
        let info = crate::tls::inspect::check_server_pair(
            &pair,
            ca.cert_pem(),
            &names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            now.unix_timestamp(),
        )
        .expect("names every way the instance is reached");
        assert_eq!(info.not_after - now.unix_timestamp(), 3000);
        assert_eq!(first.entries[tls_keys::CA], ca.cert_pem());

        let again = plan_tls_secret(&c, &ca, &first.entries, &opts, now).expect("plan");
        assert!(again.issued.is_empty(), "kept: {:?}", again.issued);
        assert_eq!(again.entries, first.entries);

        // Two thirds in, both are renewed; a third instance gets its own.
        let later = now + Duration::from_secs(2100);
        let grown = plan_tls_secret(&cluster(3), &ca, &first.entries, &opts, later).expect("plan");
        let issued: Vec<&str> = grown.issued.iter().map(|(i, _)| i.as_str()).collect();
        assert_eq!(issued, ["og-0", "og-1", "og-2"]);
        assert!(grown.issued[0].1.contains("renewal due"), "{:?}", grown.issued);

        // Another authority's pairs are replaced; a shrunk cluster keeps the others' entries.
        let other = Authority::generate("other", now).expect("other");
        let moved = plan_tls_secret(&cluster(1), &other, &first.entries, &opts, now).expect("plan");
        assert_eq!(moved.issued.len(), 1);
        assert!(moved.issued[0].1.contains("not signed"), "{:?}", moved.issued);
        assert_eq!(moved.entries["og-1.crt"], first.entries["og-1.crt"]);
        assert_eq!(moved.entries[tls_keys::CA], other.cert_pem());
    }

    #[test]
    fn a_broken_authority_secret_is_named_not_replaced() {
        let c = cluster(1);
        let now = OffsetDateTime::now_utc();
        let ca = Authority::generate("og", now).expect("ca");
        let secret = ca_secret(&c, &ca);
        assert_eq!(authority_from(&secret, now).expect("round trip"), ca);

        let mut keyless = secret.clone();
        keyless.data.as_mut().expect("data").remove(tls_keys::CA_KEY);
        let err = authority_from(&keyless, now).expect_err("refused").to_string();
        assert!(err.contains("Secret og-ca has no \"ca.key\""), "{err}");

        let mut broken = secret.clone();
        broken.data.as_mut().expect("data").insert(tls_keys::CA.into(), ByteString(b"garbage".to_vec()));
        let err = authority_from(&broken, now).expect_err("refused").to_string();
        assert!(err.contains("Secret og-ca") && err.contains("not a usable certificate"), "{err}");

        let other = Authority::generate("other", now).expect("other");
        let mut mismatched = secret;
        mismatched
            .data
            .as_mut()
            .expect("data")
            .insert(tls_keys::CA_KEY.into(), ByteString(other.0.key_pem.into_bytes()));
        let err = authority_from(&mismatched, now).expect_err("refused").to_string();
        assert!(err.contains("does not belong"), "{err}");
    }

    #[test]
    fn short_lifetimes_are_looked_at_often_enough() {
        let mut c = cluster(1);
        c.spec.tls.certificate_lifetime_seconds = 30;
        assert_eq!(recheck_every(&c), Duration::from_secs(3));
        c.spec.tls.certificate_lifetime_seconds = 90 * 24 * 3600;
        assert_eq!(recheck_every(&c), Duration::from_secs(60));
    }
}
