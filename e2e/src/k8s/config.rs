//! The components' configuration files and command lines, written under `.k8s/config`.
//! Choices that differ from upstream defaults say why.

use std::path::Path;

use super::Layout;
use super::images::Images;
use super::layout::{
    API_PORT, BRIDGE, CLUSTER_DOMAIN, COREDNS_HEALTH_PORT, COREDNS_READY_PORT, ETCD_CLIENT_PORT,
    ETCD_PEER_PORT, KUBE_PROXY_HEALTH_PORT, KUBELET_PORT, NODE_IP, NODE_NAME, POD_CIDR, POD_SUBNET,
    SERVICE_CIDR,
};
use super::pki::{self, Pki};

fn p(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

pub fn etcd_args(layout: &Layout) -> Vec<String> {
    let client = format!("http://127.0.0.1:{ETCD_CLIENT_PORT}");
    let peer = format!("http://127.0.0.1:{ETCD_PEER_PORT}");
    let mut a = args(&["--name", "opengauss-node", "--log-level", "warn"]);
    a.extend([
        "--data-dir".into(),
        p(&layout.etcd_data()),
        "--listen-client-urls".into(),
        client.clone(),
        "--advertise-client-urls".into(),
        client,
        "--listen-peer-urls".into(),
        peer.clone(),
        "--initial-advertise-peer-urls".into(),
        peer.clone(),
        "--initial-cluster".into(),
        format!("opengauss-node={peer}"),
        // A throwaway test cluster: durability of etcd itself buys nothing here.
        "--unsafe-no-fsync".into(),
    ]);
    a
}

pub fn apiserver_args(pki: &Pki) -> Vec<String> {
    vec![
        format!("--etcd-servers=http://127.0.0.1:{ETCD_CLIENT_PORT}"),
        format!("--bind-address={NODE_IP}"),
        format!("--advertise-address={NODE_IP}"),
        format!("--secure-port={API_PORT}"),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        "--authorization-mode=Node,RBAC".into(),
        "--enable-admission-plugins=NodeRestriction".into(),
        "--allow-privileged=true".into(),
        format!("--client-ca-file={}", p(&pki.ca_cert())),
        format!("--tls-cert-file={}", p(&pki.cert("apiserver"))),
        format!("--tls-private-key-file={}", p(&pki.key("apiserver"))),
        format!("--kubelet-client-certificate={}", p(&pki.cert(pki::APISERVER_KUBELET_CLIENT.file))),
        format!("--kubelet-client-key={}", p(&pki.key(pki::APISERVER_KUBELET_CLIENT.file))),
        format!("--kubelet-certificate-authority={}", p(&pki.ca_cert())),
        "--kubelet-preferred-address-types=InternalIP".into(),
        format!("--service-account-issuer=https://kubernetes.default.svc.{CLUSTER_DOMAIN}"),
        format!("--service-account-key-file={}", p(&pki.service_account_public())),
        format!("--service-account-signing-key-file={}", p(&pki.service_account_key())),
        "--profiling=false".into(),
    ]
}

pub fn controller_manager_args(pki: &Pki) -> Vec<String> {
    let kubeconfig = p(&pki.kubeconfig(&pki::CONTROLLER_MANAGER));
    vec![
        format!("--kubeconfig={kubeconfig}"),
        format!("--authentication-kubeconfig={kubeconfig}"),
        format!("--authorization-kubeconfig={kubeconfig}"),
        "--bind-address=127.0.0.1".into(),
        format!("--service-account-private-key-file={}", p(&pki.service_account_key())),
        format!("--root-ca-file={}", p(&pki.ca_cert())),
        "--use-service-account-credentials=true".into(),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        "--allocate-node-cidrs=false".into(),
        "--leader-elect=false".into(),
        "--controllers=*".into(),
        "--profiling=false".into(),
    ]
}

pub fn scheduler_config(pki: &Pki) -> String {
    serde_json::json!({
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "clientConnection": { "kubeconfig": p(&pki.kubeconfig(&pki::SCHEDULER)) },
        "leaderElection": { "leaderElect": false },
    })
    .to_string()
}

pub fn scheduler_args(layout: &Layout, pki: &Pki) -> Vec<String> {
    let kubeconfig = p(&pki.kubeconfig(&pki::SCHEDULER));
    vec![
        format!("--config={}", p(&layout.config().join("scheduler.json"))),
        format!("--authentication-kubeconfig={kubeconfig}"),
        format!("--authorization-kubeconfig={kubeconfig}"),
        "--bind-address=127.0.0.1".into(),
    ]
}

/// containerd 1.6 (config version 2) with the CRI plugin: cgroupfs as the kubelet (there is no
/// systemd), the busybox sandbox image, the CNI plugins from Debian and the conflist under
/// `.k8s/cni`. Nothing is configured to pull from a registry.
pub fn containerd_config(layout: &Layout, images: &Images) -> String {
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{socket}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  disable_apparmor = true
  tolerate_missing_hugetlb_controller = true
  # This machine's root lacks CAP_SYS_RESOURCE, so no process may lower its OOM score: the
  # kubelet's -998 for sandboxes (and -997 for guaranteed pods) would make runc fail every
  # pod. Scores are raised to containerd's own instead.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
    max_conf_num = 1

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
        root = p(&layout.containerd_root()),
        state = p(&layout.containerd_state()),
        socket = p(&layout.containerd_socket()),
        pause = images.pause,
        cni = p(&layout.cni_conf_dir()),
        opt = p(&layout.containerd_root().join("opt")),
    )
}

/// The pod network: Debian's bridge plugin on the project's bridge, addresses from its subnet
/// (the first ones left to the node), no masquerading (nothing is routed off the machine), and
/// hairpin mode so a pod reaches itself through a Service. No `portmap`: nothing here uses
/// host ports, and it would leave packet filter chains behind.
pub fn cni_conflist() -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "opengauss-k8s",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": POD_SUBNET, "rangeStart": "10.244.0.10", "gateway": NODE_IP.to_string() }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": "/run/opengauss-k8s/cni-ipam",
                },
            },
        ],
    })
    .to_string()
}

/// The kubelet: cgroupfs, cgroup v1 allowed, the cluster DNS on the node, no disk-pressure
/// evictions or image garbage collection (imported images cannot be pulled again).
pub fn kubelet_config(layout: &Layout, pki: &Pki) -> String {
    serde_json::json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP.to_string(),
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "authentication": {
            "anonymous": { "enabled": false },
            "webhook": { "enabled": true },
            "x509": { "clientCAFile": p(&pki.ca_cert()) },
        },
        "authorization": { "mode": "Webhook" },
        "tlsCertFile": p(&pki.cert("kubelet-serving")),
        "tlsPrivateKeyFile": p(&pki.key("kubelet-serving")),
        "containerRuntimeEndpoint": format!("unix://{}", p(&layout.containerd_socket())),
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": false,
        "failSwapOn": false,
        "clusterDNS": [NODE_IP.to_string()],
        "clusterDomain": CLUSTER_DOMAIN,
        // No nameserver of the machine's is handed to pods: names outside the cluster fail.
        "resolvConf": "",
        "podLogsDir": p(&layout.pod_logs()),
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": { "nodefs.available": "0%", "nodefs.inodesFree": "0%", "imagefs.available": "0%", "imagefs.inodesFree": "0%" },
        "rotateCertificates": false,
        "serializeImagePulls": false,
        "maxPods": 110,
    })
    .to_string()
}

pub fn kubelet_args(layout: &Layout, pki: &Pki) -> Vec<String> {
    vec![
        format!("--config={}", p(&layout.config().join("kubelet.json"))),
        format!("--kubeconfig={}", p(&pki.kubeconfig(&pki::KUBELET))),
        format!("--root-dir={}", p(&layout.kubelet_root())),
        format!("--hostname-override={NODE_NAME}"),
        format!("--node-ip={NODE_IP}"),
        "--v=1".into(),
    ]
}

/// kube-proxy in iptables mode; NodePorts only on the bridge's address; conntrack sysctls
/// left alone.
pub fn kube_proxy_config(pki: &Pki) -> String {
    serde_json::json!({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": { "kubeconfig": p(&pki.kubeconfig(&pki::KUBE_PROXY)) },
        "hostnameOverride": NODE_NAME,
        "bindAddress": NODE_IP.to_string(),
        "healthzBindAddress": format!("127.0.0.1:{KUBE_PROXY_HEALTH_PORT}"),
        "metricsBindAddress": "127.0.0.1:10249",
        "mode": "iptables",
        "clusterCIDR": POD_CIDR,
        "nodePortAddresses": [format!("{NODE_IP}/32")],
        "iptables": { "minSyncPeriod": "1s", "syncPeriod": "30s" },
        "conntrack": { "maxPerCore": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s" },
    })
    .to_string()
}

pub fn kube_proxy_args(layout: &Layout) -> Vec<String> {
    vec![format!("--config={}", p(&layout.config().join("kube-proxy.json")))]
}

/// CoreDNS on the node's address: the cluster zone and the reverse zones from the API, and
/// nothing else (no `forward`: a name outside the cluster fails at once, nothing leaves the
/// machine).
pub fn corefile(pki: &Pki) -> String {
    format!(
        r#"{CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{
    bind {NODE_IP}
    errors
    health 127.0.0.1:{COREDNS_HEALTH_PORT}
    ready 127.0.0.1:{COREDNS_READY_PORT}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    cache 5
}}
.:53 {{
    bind {NODE_IP}
    errors
}}
"#,
        kubeconfig = p(&pki.kubeconfig(&pki::ADMIN)),
    )
}

pub fn coredns_args(layout: &Layout) -> Vec<String> {
    vec!["-conf".into(), p(&layout.config().join("Corefile"))]
}

/// The storage provisioner kind ships (`rancher.io/local-path`), configured here: volumes are
/// directories under `.k8s/volumes`, made mode 0777 by a helper pod (so any pod user can
/// write them) and removed when their claim goes; `standard` is the default StorageClass.
pub fn storage_manifests(layout: &Layout, images: &Images) -> String {
    let config_map = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": "local-path-config", "namespace": "local-path-storage" },
        "data": {
            "config.json": provisioner_config(layout),
            "setup": "#!/bin/sh\nset -eu\nmkdir -m 0777 -p \"$VOL_DIR\"\n",
            "teardown": "#!/bin/sh\nset -eu\nrm -rf \"$VOL_DIR\"\n",
            "helperPod.yaml": provisioner_helper_pod(images),
        },
    });
    let namespace = serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "local-path-storage" },
    });
    let account = serde_json::json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": { "name": "local-path-provisioner-service-account", "namespace": "local-path-storage" },
    });
    let class = serde_json::json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": super::layout::STORAGE_CLASS,
            "annotations": { "storageclass.kubernetes.io/is-default-class": "true" },
        },
        "provisioner": "rancher.io/local-path",
        "volumeBindingMode": "WaitForFirstConsumer",
        "reclaimPolicy": "Delete",
    });
    let list = serde_json::json!({
        "apiVersion": "v1", "kind": "List", "items": [namespace, account, config_map, class],
    });
    list.to_string()
}

pub fn provisioner_config(layout: &Layout) -> String {
    serde_json::json!({
        "nodePathMap": [{ "node": "DEFAULT_PATH_FOR_NON_LISTED_NODES", "paths": [p(&layout.volumes())] }],
    })
    .to_string()
}

pub fn provisioner_args(layout: &Layout, pki: &Pki, images: &Images) -> Vec<String> {
    vec![
        "start".into(),
        format!("--config={}", p(&layout.config().join("local-path.json"))),
        format!("--kubeconfig={}", p(&pki.kubeconfig(&pki::ADMIN))),
        "--namespace=local-path-storage".into(),
        format!("--helper-image={}", images.busybox),
        "--configmap-name=local-path-config".into(),
        format!("--helper-pod-file={}", p(&layout.config().join("local-path-helper.yaml"))),
    ]
}

pub fn provisioner_helper_pod(images: &Images) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: helper-pod\nspec:\n  containers:\n  - name: helper-pod\n    image: {}\n    imagePullPolicy: Never\n",
        images.busybox
    )
}

/// The kustomization that deploys `deploy/` as shipped, with the locally built operator image.
pub fn deploy_overlay(layout: &Layout, images: &Images) -> String {
    let (name, tag) = images.operator.rsplit_once(':').unwrap_or((images.operator.as_str(), "dev"));
    let relative = pathdiff(&layout.workspace.join("deploy"), &layout.deploy_overlay());
    format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {relative}\nimages:\n  - name: opengauss-operator\n    newName: {name}\n    newTag: \"{tag}\"\n"
    )
}

/// `target` relative to `from` (both absolute, `from` a directory).
fn pathdiff(target: &Path, from: &Path) -> String {
    let t: Vec<_> = target.components().collect();
    let f: Vec<_> = from.components().collect();
    let common = t.iter().zip(&f).take_while(|(a, b)| a == b).count();
    let mut out: Vec<String> = f[common..].iter().map(|_| "..".to_string()).collect();
    out.extend(t[common..].iter().map(|c| c.as_os_str().to_string_lossy().into_owned()));
    out.join("/")
}

/// Writes every configuration file.
pub fn write_all(layout: &Layout, pki: &Pki, images: &Images) -> anyhow::Result<()> {
    let dir = layout.config();
    std::fs::create_dir_all(&dir)?;
    std::fs::create_dir_all(layout.cni_conf_dir())?;
    std::fs::create_dir_all(layout.deploy_overlay())?;
    std::fs::create_dir_all(layout.volumes())?;
    std::fs::write(dir.join("scheduler.json"), scheduler_config(pki))?;
    std::fs::write(dir.join("containerd.toml"), containerd_config(layout, images))?;
    std::fs::write(layout.cni_conf_dir().join("10-opengauss.conflist"), cni_conflist())?;
    std::fs::write(dir.join("kubelet.json"), kubelet_config(layout, pki))?;
    std::fs::write(dir.join("kube-proxy.json"), kube_proxy_config(pki))?;
    std::fs::write(dir.join("Corefile"), corefile(pki))?;
    std::fs::write(dir.join("local-path.json"), provisioner_config(layout))?;
    std::fs::write(dir.join("local-path-helper.yaml"), provisioner_helper_pod(images))?;
    std::fs::write(dir.join("storage.json"), storage_manifests(layout, images))?;
    std::fs::write(layout.deploy_overlay().join("kustomization.yaml"), deploy_overlay(layout, images))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_climb_to_the_common_ancestor() {
        assert_eq!(pathdiff(Path::new("/w/main/deploy"), Path::new("/w/main/.k8s/deploy")), "../../deploy");
        assert_eq!(pathdiff(Path::new("/a/b"), Path::new("/a")), "b");
    }

    #[test]
    fn the_pod_network_keeps_its_packets_on_the_machine() {
        let conf: serde_json::Value = serde_json::from_str(&cni_conflist()).expect("json");
        let bridge = &conf["plugins"][0];
        assert_eq!(bridge["bridge"], BRIDGE);
        assert_eq!(bridge["ipMasq"], false, "no masquerading towards the machine's own network");
        assert_eq!(bridge["hairpinMode"], true);
    }

    #[test]
    fn coredns_forwards_nothing() {
        let pki = Pki { dir: "/x".into() };
        let text = corefile(&pki);
        assert!(!text.contains("forward"), "{text}");
        assert!(text.contains(&format!("bind {NODE_IP}")));
    }
}
