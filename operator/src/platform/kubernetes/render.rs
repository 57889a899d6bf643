//! `opengauss-operator render -f CLUSTER.yaml`: every object the operator would create for a
//! cluster, as a multi-document YAML stream, offline. Secret values are redacted.

use std::path::PathBuf;

use anyhow::Context;
use opengauss_crd::OpenGaussCluster;
use serde::Serialize;

use super::builders::{self, ClusterObjects};
use super::credentials::Credentials;
use super::options::{DEFAULT_CLUSTER_DOMAIN, DEFAULT_OPERATOR_IMAGE, MANAGER_PORT, Options};

#[derive(clap::Args, Debug, Clone)]
pub struct RenderArgs {
    /// The OpenGaussCluster file.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Namespace of the cluster when the file names none.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// The operator image the init containers copy the instance manager from.
    #[arg(long, env = "OPERATOR_IMAGE", default_value = DEFAULT_OPERATOR_IMAGE)]
    pub operator_image: String,
    /// The Kubernetes cluster's DNS domain.
    #[arg(long, env = "CLUSTER_DOMAIN", default_value = DEFAULT_CLUSTER_DOMAIN)]
    pub cluster_domain: String,
}

/// Tagged with `apiVersion` and `kind`, which k8s-openapi types leave out of their fields.
pub fn document<K: k8s_openapi::Resource + Serialize>(object: &K) -> anyhow::Result<String> {
    use serde_yaml_ng::Value;
    let Value::Mapping(fields) = serde_yaml_ng::to_value(object)? else {
        anyhow::bail!("{} does not serialise to a mapping", K::KIND);
    };
    let mut tagged = serde_yaml_ng::Mapping::new();
    tagged.insert("apiVersion".into(), K::API_VERSION.into());
    tagged.insert("kind".into(), K::KIND.into());
    for (k, v) in fields {
        if k.as_str() != Some("apiVersion") && k.as_str() != Some("kind") {
            tagged.insert(k, v);
        }
    }
    Ok(serde_yaml_ng::to_string(&Value::Mapping(tagged))?)
}

/// The YAML stream for `cluster`, in creation order.
pub fn render_cluster(cluster: &OpenGaussCluster, opts: &Options) -> anyhow::Result<String> {
    let credentials = Credentials::redacted(cluster.spec.engine);
    let ClusterObjects { secret, config_map, headless, rw, ro, pdb, instances } =
        builders::cluster_objects(cluster, None, &credentials, opts);
    let name = builders::cluster_name(cluster);
    let mut out = format!(
        "# Objects the operator creates for OpenGaussCluster {ns}/{name}.\n\
         # Secret values are redacted: the operator generates them once, in the cluster.\n\
         # In the cluster, each object also carries a controller ownerReference to the\n\
         # OpenGaussCluster, so deleting the cluster deletes them.\n",
        ns = builders::namespace(cluster),
    );
    let docs = [
        document(&secret)?,
        document(&config_map)?,
        document(&headless)?,
        document(&rw)?,
        document(&ro)?,
        document(&pdb)?,
    ];
    for d in docs {
        out += "---\n";
        out += &d;
    }
    for (pvc, pod) in &instances {
        out += "---\n";
        out += &document(pvc)?;
        out += "---\n";
        out += &document(pod)?;
    }
    Ok(out)
}

pub fn render(args: &RenderArgs) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let mut cluster = opengauss_crd::parse_cluster(&text)
        .with_context(|| format!("{} is not a valid cluster", args.file.display()))?;
    if let Some(ns) = &args.namespace {
        match cluster.metadata.namespace.as_deref() {
            Some(own) if own != ns => {
                anyhow::bail!("{} names namespace {own:?}, not {ns:?}", args.file.display())
            }
            _ => cluster.metadata.namespace = Some(ns.clone()),
        }
    }
    let opts = Options {
        operator_image: args.operator_image.clone(),
        cluster_domain: args.cluster_domain.clone(),
        manager_port: MANAGER_PORT,
    };
    render_cluster(&cluster, &opts)
}
