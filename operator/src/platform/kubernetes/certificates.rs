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

/// How long before expiry a certificate is renewed at the latest. A changed Secret reaches the
/// pods' volumes only at the kubelet's next sync of each pod (its sync period, one minute by
/// default, with up to half of it added as jitter), and the manager then copies and loads it
/// within a second or two: renewing any later, a server would present an expired certificate
/// until the kubelet caught up.
pub const RENEWAL_NOTICE_SECONDS: i64 = 150;

/// The shortest certificate lifetime on Kubernetes: twice the renewal notice, so a renewed
/// certificate is not itself due for renewal before it has reached the pods.
pub const MIN_LIFETIME_SECONDS: u64 = 2 * RENEWAL_NOTICE_SECONDS as u64;

/// A Kubernetes-only problem with `c`'s certificate lifetime (the schema allows the local
/// platform's shorter ones).
pub fn lifetime_problem(c: &OpenGaussCluster) -> Option<opengauss_crd::validate::FieldError> {
    let tls = &c.spec.tls;
    (tls.enabled && tls.certificate_lifetime_seconds < MIN_LIFETIME_SECONDS).then(|| {
        opengauss_crd::validate::FieldError {
            field: "spec.tls.certificateLifetimeSeconds".into(),
            message: format!(
                "{} is too short on Kubernetes: at least {MIN_LIFETIME_SECONDS}, since a renewed \
                 certificate can take the kubelet up to about 90 s to deliver to the pods and is \
                 renewed {RENEWAL_NOTICE_SECONDS} s before expiry",
                tls.certificate_lifetime_seconds
            ),
        }
    })
}

/// A Secret's value for `key` as text (from `data`, or `stringData` not yet merged).
fn text(secret: &Secret, key: &str) -> Option<String> {
    let from_data =
        secret.data.as_ref().and_then(|d| d.get(key)).and_then(|b| String::from_utf8(b.0.clone()).ok());
    from_data.or_else(|| secret.string_data.as_ref().and_then(|d| d.get(key)).cloned())
}

/// The authority kept in a CA Secret: with its key, the operator issues every instance's
/// pair; without it, the user supplies them in the TLS Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeptAuthority {
    Issuing(Authority),
    Supplied { ca_pem: String },
}

/// The authority kept in `secret` (the CA Secret), checked: a current CA certificate, and
/// when its key is there, a key that signs for it.
pub fn authority_from(secret: &Secret, now: OffsetDateTime) -> anyhow::Result<KeptAuthority> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let cert =
        text(secret, tls_keys::CA).with_context(|| format!("Secret {name} has no {:?}", tls_keys::CA))?;
    let refused = |e: String| anyhow::anyhow!("Secret {name}: the certificate authority is {e}");
    match text(secret, tls_keys::CA_KEY) {
        Some(key) => Authority::from_pem(cert, key, now).map(KeptAuthority::Issuing).map_err(refused),
        None => {
            crate::tls::authority::check_authority_certificate(&cert, now).map_err(refused)?;
            Ok(KeptAuthority::Supplied { ca_pem: cert })
        }
    }
}

/// What is wrong with the pairs a user supplies in the TLS Secret (`current`, named
/// `secret`), one line per problem: the authority's certificate must be there as in the CA
/// Secret (pods mount it), and every instance's pair must be signed by it, name the instance's
/// pod, be current and have its own key. Empty when all is well.
pub fn check_supplied(
    c: &OpenGaussCluster,
    ca_pem: &str,
    secret: &str,
    current: &BTreeMap<String, String>,
    opts: &Options,
    now: OffsetDateTime,
) -> Vec<String> {
    let mut problems = Vec::new();
    if current.get(tls_keys::CA).map(String::as_str) != Some(ca_pem) {
        problems.push(format!(
            "Secret {secret}: {:?} must hold the certificate of Secret {}",
            tls_keys::CA,
            ca_secret_name(cluster_name(c))
        ));
    }
    for instance in instance_names(cluster_name(c), c.spec.instances) {
        let (cert_key, key_key) = (tls_keys::certificate(&instance), tls_keys::key(&instance));
        let (Some(cert), Some(key)) = (current.get(&cert_key), current.get(&key_key)) else {
            problems.push(format!("Secret {secret} has no {cert_key:?} and {key_key:?} for {instance}"));
            continue;
        };
        let pair = KeyedCertificate { cert_pem: cert.clone(), key_pem: key.clone() };
        let names = [instance_host(c, &instance, opts)];
        if let Err(e) = crate::tls::inspect::check_server_pair(&pair, ca_pem, &names, now.unix_timestamp()) {
            problems.push(format!("Secret {secret}, {cert_key:?}: {e}"));
        }
    }
    problems
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
        if let Some(reason) =
            authority.renewal_reason(pair.as_ref(), &names, now.unix_timestamp(), RENEWAL_NOTICE_SECONDS)
        {
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

/// What a look at a cluster's certificates found.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The authority's certificate (PEM) the controller trusts.
    pub authority: String,
    /// Instances given a new pair, and why.
    pub issued: Vec<(String, String)>,
    /// With supplied pairs, what is wrong with them (pods keep the pairs they have).
    pub refused: Vec<String>,
}

/// The cluster's authority, made and kept in its CA Secret on first use, and its TLS Secret:
/// brought up to date when the operator issues, checked (never written) when the user
/// supplies the pairs.
pub async fn ensure(client: &kube::Client, c: &OpenGaussCluster, opts: &Options) -> anyhow::Result<Outcome> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace(c));
    let now = OffsetDateTime::now_utc();
    let ca_name = ca_secret_name(cluster_name(c));
    let kept = match api.get_opt(&ca_name).await.with_context(|| format!("reading Secret {ca_name}"))? {
        Some(secret) => authority_from(&secret, now)?,
        None => {
            let fresh = Authority::generate(cluster_name(c), now)?;
            let pp = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() };
            match api.create(&pp, &ca_secret(c, &fresh)).await {
                Ok(_) => KeptAuthority::Issuing(fresh),
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
    match kept {
        KeptAuthority::Issuing(authority) => {
            let plan = plan_tls_secret(c, &authority, &current, opts, now)?;
            if plan.entries != current {
                let params = PatchParams::apply(FIELD_MANAGER).force();
                api.patch(
                    &tls_name,
                    &params,
                    &Patch::Apply(&secret_with(c, tls_name.clone(), &plan.entries)),
                )
                .await
                .with_context(|| format!("applying Secret {tls_name}"))?;
            }
            Ok(Outcome {
                authority: authority.cert_pem().to_string(),
                issued: plan.issued,
                refused: Vec::new(),
            })
        }
        KeptAuthority::Supplied { ca_pem } => {
            let refused = check_supplied(c, &ca_pem, &tls_name, &current, opts, now);
            Ok(Outcome { authority: ca_pem, issued: Vec::new(), refused })
        }
    }
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
        assert_eq!(authority_from(&secret, now).expect("round trip"), KeptAuthority::Issuing(ca.clone()));

        // Without the key: the user supplies the pairs.
        let mut keyless = secret.clone();
        keyless.data.as_mut().expect("data").remove(tls_keys::CA_KEY);
        assert_eq!(
            authority_from(&keyless, now).expect("supplied"),
            KeptAuthority::Supplied { ca_pem: ca.cert_pem().to_string() }
        );
        let leaf = ca.issue("x", &["x".into()], now, Duration::from_secs(60)).expect("leaf");
        keyless
            .data
            .as_mut()
            .expect("data")
            .insert(tls_keys::CA.into(), ByteString(leaf.cert_pem.into_bytes()));
        let err = authority_from(&keyless, now).expect_err("refused").to_string();
        assert!(err.contains("Secret og-ca") && err.contains("not a certificate authority"), "{err}");

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
    fn supplied_pairs_are_checked_by_instance_and_named_when_wrong() {
        let opts = Options::default();
        let c = cluster(2);
        let now = OffsetDateTime::now_utc();
        let ca = Authority::generate("users", now).expect("ca");
        let lifetime = Duration::from_secs(3600);
        let pair_for = |instance: &str, authority: &Authority| {
            let host = instance_host(&c, instance, &opts);
            authority.issue(&host, std::slice::from_ref(&host), now, lifetime).expect("issue")
        };
        let mut entries = BTreeMap::from([(tls_keys::CA.to_string(), ca.cert_pem().to_string())]);
        for instance in ["og-0", "og-1"] {
            let pair = pair_for(instance, &ca);
            entries.insert(tls_keys::certificate(instance), pair.cert_pem);
            entries.insert(tls_keys::key(instance), pair.key_pem);
        }
        assert_eq!(check_supplied(&c, ca.cert_pem(), "og-tls", &entries, &opts, now), Vec::<String>::new());

        // Another authority's pair for og-1, and a third instance without a pair: each named.
        let other = Authority::generate("other", now).expect("other");
        let foreign = pair_for("og-1", &other);
        entries.insert(tls_keys::certificate("og-1"), foreign.cert_pem);
        entries.insert(tls_keys::key("og-1"), foreign.key_pem);
        let problems = check_supplied(&cluster(3), ca.cert_pem(), "og-tls", &entries, &opts, now);
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(problems[0].contains("\"og-1.crt\"") && problems[0].contains("not signed"), "{problems:#?}");
        assert!(problems[1].contains("no \"og-2.crt\""), "{problems:#?}");

        // A pair naming another pod, and a missing authority entry.
        let wrong = pair_for("og-1", &ca);
        entries.insert(tls_keys::certificate("og-0"), wrong.cert_pem);
        entries.insert(tls_keys::key("og-0"), wrong.key_pem);
        entries.remove(tls_keys::CA);
        let problems = check_supplied(&c, ca.cert_pem(), "og-tls", &entries, &opts, now);
        assert!(problems[0].contains("\"ca.crt\" must hold"), "{problems:#?}");
        assert!(
            problems[1].contains("\"og-0.crt\"") && problems[1].contains("does not name"),
            "{problems:#?}"
        );
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
