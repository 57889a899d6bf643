//! The cluster's certificates and kubeconfigs, made fresh by every `up` (ECDSA P-256 keys are
//! quick to make): one CA, the API server's and kubelet's serving certificates, a client
//! certificate per identity, the service-account signing key, and a kubeconfig per client.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::Layout;
use super::layout::{API_PORT, API_SERVICE_IP, CLUSTER_DOMAIN, NODE_IP, NODE_NAME};

/// A client identity: who it is to the API server (CN is the user, O the groups).
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    /// File stem of its certificate, key and kubeconfig.
    pub file: &'static str,
    pub user: &'static str,
    pub group: Option<&'static str>,
}

/// The harness's own administrator (kubectl, CoreDNS and the storage provisioner).
pub const ADMIN: Identity =
    Identity { file: "admin", user: "kubernetes-admin", group: Some("system:masters") };
pub const CONTROLLER_MANAGER: Identity =
    Identity { file: "controller-manager", user: "system:kube-controller-manager", group: None };
pub const SCHEDULER: Identity = Identity { file: "scheduler", user: "system:kube-scheduler", group: None };
pub const KUBE_PROXY: Identity = Identity { file: "kube-proxy", user: "system:kube-proxy", group: None };
/// The Node authorizer knows a kubelet by exactly this user and group.
pub const KUBELET: Identity =
    Identity { file: "kubelet", user: "system:node:opengauss-node", group: Some("system:nodes") };
/// The API server's identity towards the kubelet (logs, exec, port-forward).
pub const APISERVER_KUBELET_CLIENT: Identity = Identity {
    file: "apiserver-kubelet-client",
    user: "kube-apiserver-kubelet-client",
    group: Some("system:masters"),
};

/// The files `make` writes, by path.
#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    pub fn cert(&self, stem: &str) -> PathBuf {
        self.dir.join(format!("{stem}.crt"))
    }
    pub fn key(&self, stem: &str) -> PathBuf {
        self.dir.join(format!("{stem}.key"))
    }
    /// The service-account token signing key, and its public half for verification.
    pub fn service_account_key(&self) -> PathBuf {
        self.dir.join("service-account.key")
    }
    pub fn service_account_public(&self) -> PathBuf {
        self.dir.join("service-account.pub")
    }
    pub fn kubeconfig(&self, identity: &Identity) -> PathBuf {
        self.dir.join(format!("{}.kubeconfig", identity.file))
    }
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

fn leaf(
    pki: &Pki,
    issuer: &Issuer<'_, KeyPair>,
    stem: &str,
    common_name: &str,
    organization: Option<&str>,
    names: Vec<String>,
    usage: ExtendedKeyUsagePurpose,
) -> anyhow::Result<()> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name.push(DnType::CommonName, common_name);
    if let Some(o) = organization {
        params.distinguished_name.push(DnType::OrganizationName, o);
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, issuer).with_context(|| format!("signing {stem}"))?;
    std::fs::write(pki.cert(stem), cert.pem())?;
    write_private(&pki.key(stem), &key.serialize_pem())
}

/// The API server's address as clients on this machine use it.
pub fn api_url() -> String {
    format!("https://{NODE_IP}:{API_PORT}")
}

fn kubeconfig_text(pki: &Pki, identity: &Identity) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: opengauss-k8s\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: {user}\n  user:\n    client-certificate: {cert}\n    client-key: {key}\ncontexts:\n- name: opengauss-k8s\n  context:\n    cluster: opengauss-k8s\n    user: {user}\ncurrent-context: opengauss-k8s\n",
        server = api_url(),
        ca = pki.ca_cert().display(),
        user = identity.user,
        cert = pki.cert(identity.file).display(),
        key = pki.key(identity.file).display(),
    )
}

/// Makes every certificate, key and kubeconfig under `.k8s/pki`, and the administrator's
/// kubeconfig at `.k8s/kubeconfig`.
pub fn make(layout: &Layout) -> anyhow::Result<Pki> {
    let pki = Pki { dir: layout.pki() };
    std::fs::create_dir_all(&pki.dir)?;
    std::fs::set_permissions(&pki.dir, std::fs::Permissions::from_mode(0o700))?;

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name.push(DnType::CommonName, "opengauss-k8s-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key)?;
    std::fs::write(pki.ca_cert(), ca_cert.pem())?;
    write_private(&pki.key("ca"), &ca_key.serialize_pem())?;
    let issuer = Issuer::new(ca, ca_key);

    let api_names: Vec<String> = [
        "kubernetes".to_string(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        format!("kubernetes.default.svc.{CLUSTER_DOMAIN}"),
        "localhost".into(),
        NODE_NAME.into(),
        IpAddr::from(NODE_IP).to_string(),
        IpAddr::from(API_SERVICE_IP).to_string(),
        "127.0.0.1".into(),
    ]
    .into();
    let server = ExtendedKeyUsagePurpose::ServerAuth;
    let client = ExtendedKeyUsagePurpose::ClientAuth;
    leaf(&pki, &issuer, "apiserver", "kube-apiserver", None, api_names, server.clone())?;
    leaf(
        &pki,
        &issuer,
        "kubelet-serving",
        NODE_NAME,
        None,
        vec![NODE_NAME.into(), IpAddr::from(NODE_IP).to_string()],
        server,
    )?;
    for identity in [ADMIN, CONTROLLER_MANAGER, SCHEDULER, KUBE_PROXY, KUBELET, APISERVER_KUBELET_CLIENT] {
        leaf(&pki, &issuer, identity.file, identity.user, identity.group, vec![], client.clone())?;
        write_private(&pki.kubeconfig(&identity), &kubeconfig_text(&pki, &identity))?;
    }

    // The API server verifies tokens with the public key in SubjectPublicKeyInfo form (it
    // reads EC private keys only in the SEC1 form, rcgen writes PKCS#8).
    let sa = KeyPair::generate()?;
    write_private(&pki.service_account_key(), &sa.serialize_pem())?;
    std::fs::write(pki.service_account_public(), sa.public_key_pem())?;

    write_private(&layout.kubeconfig(), &kubeconfig_text(&pki, &ADMIN))?;
    Ok(pki)
}
