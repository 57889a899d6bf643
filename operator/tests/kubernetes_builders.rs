//! The pure builders: what each object of a cluster looks like, and that the pieces fit
//! together (the manager's configuration points into the volumes the pod mounts, the Services
//! select what the pods carry, names stay within Kubernetes' limits).

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::{Container, Pod};
use opengauss_crd::{OpenGaussCluster, parse_cluster};
use opengauss_operator::engine::{self, DesiredConfig, Peer};
use opengauss_operator::instance::InstanceConfig;
use opengauss_operator::platform::kubernetes::builders::{self, paths};
use opengauss_operator::platform::kubernetes::credentials::{Credentials, REDACTED, keys};
use opengauss_operator::platform::kubernetes::render::render_cluster;
use opengauss_operator::platform::kubernetes::roles::RoleLabel;
use opengauss_operator::platform::kubernetes::{Options, labels};

fn cluster(extra: &str) -> OpenGaussCluster {
    let mut c = parse_cluster(&format!(
        "apiVersion: ha.opengauss.dev/v1alpha1\nkind: OpenGaussCluster\nmetadata:\n  name: og\n  namespace: apps\nspec:\n  instances: 3\n{extra}"
    ))
    .expect("valid cluster");
    c.metadata.uid = Some("0f0e0d0c-0000-4000-8000-000000000001".into());
    c
}

fn database(pod: &Pod) -> &Container {
    let spec = pod.spec.as_ref().expect("spec");
    spec.containers.iter().find(|c| c.name == builders::DATABASE_CONTAINER).expect("database container")
}

fn mounts(c: &Container) -> BTreeMap<String, (String, bool)> {
    c.volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.mount_path.clone(), (m.name.clone(), m.read_only.unwrap_or(false))))
        .collect()
}

/// The volume mounted at the longest prefix of `path`.
fn volume_of(c: &Container, path: &Path) -> Option<(String, bool)> {
    mounts(c)
        .into_iter()
        .filter(|(mount, _)| path.starts_with(mount))
        .max_by_key(|(mount, _)| mount.len())
        .map(|(_, v)| v)
}

#[test]
fn replconninfo_uses_stable_per_pod_dns_names() {
    let c = cluster("");
    let opts = Options::default();
    let cfg = builders::instance_config(&c, "og-0", &opts);
    assert_eq!(cfg.advertise_host, "og-0.og-headless.apps.svc.cluster.local");
    assert_eq!(cfg.ha_port, 5433);
    let peers = ["og-1", "og-2"]
        .into_iter()
        .map(|p| Peer {
            instance: p.into(),
            host: builders::instance_host(&c, p, &opts),
            ha_port: builders::ha_port(&c),
            manager: None,
        })
        .collect();
    let desired = DesiredConfig {
        standby: false,
        upstream: None,
        synchronous: None,
        most_available_sync: false,
        max_wal_senders: 10,
        wal_keep_segments: 256,
        peers,
        parameters: Default::default(),
        lease_milliseconds: 0,
    };
    let conf = engine::dialect(c.spec.engine).managed_conf(&cfg.server_config(&desired));
    assert!(
        conf.contains(
            "replconninfo1 = 'localhost=og-0.og-headless.apps.svc.cluster.local localport=5433 localheartbeatport=5437 \
             remotehost=og-1.og-headless.apps.svc.cluster.local remoteport=5433 remoteheartbeatport=5437'"
        ),
        "{conf}"
    );
    assert!(conf.contains("remotehost=og-2.og-headless.apps.svc.cluster.local"), "{conf}");
    assert!(conf.contains("listen_addresses = '*'"), "{conf}");
    assert!(conf.contains(&format!("unix_socket_directory = '{}'", paths::SOCKET_DIR)), "{conf}");
}

#[test]
fn cluster_domain_is_configurable() {
    let opts = Options { cluster_domain: "corp.example".into(), ..Options::default() };
    assert_eq!(
        builders::instance_host(&cluster(""), "og-2", &opts),
        "og-2.og-headless.apps.svc.corp.example"
    );
}

#[test]
fn the_manager_runs_as_pid_1_of_the_stock_image_with_its_config_mounted() {
    let c = cluster("");
    let opts = Options { operator_image: "reg/op:1".into(), ..Options::default() };
    let pod = builders::pod(&c, "og-1", RoleLabel::None, &opts);
    let spec = pod.spec.as_ref().expect("spec");
    let db = database(&pod);
    assert_eq!(db.image.as_deref(), Some(opengauss_crd::spec::DEFAULT_OPENGAUSS_IMAGE));
    let cmd = db.command.clone().expect("command");
    assert_eq!(cmd[..3], [paths::MANAGER_BINARY, "instance", "run"]);
    assert_eq!(cmd[3..], ["--config".to_string(), format!("{}/og-1.json", paths::CONFIG_DIR)]);
    assert!(db.args.is_none(), "the image's entrypoint is replaced, not fed");

    // The init container copies the binary from the operator image into the shared emptyDir.
    let init = &spec.init_containers.as_ref().expect("init")[0];
    assert_eq!(init.image.as_deref(), Some("reg/op:1"));
    let script = init.command.as_ref().expect("command").join(" ");
    assert!(script.contains(&format!("cp {} {}", paths::OPERATOR_BINARY, paths::MANAGER_BINARY)), "{script}");
    assert_eq!(volume_of(init, Path::new(paths::MANAGER_BINARY)).map(|v| v.0), Some("controller".into()));
    assert_eq!(volume_of(db, Path::new(paths::MANAGER_BINARY)), Some(("controller".into(), true)));
    let controller = spec.volumes.iter().flatten().find(|v| v.name == "controller").expect("volume");
    assert!(controller.empty_dir.is_some());

    // The ConfigMap item it reads is this instance's, and parses as an InstanceConfig.
    let config_volume = spec.volumes.iter().flatten().find(|v| v.name == "config").expect("config volume");
    let cm_source = config_volume.config_map.as_ref().expect("configMap");
    assert_eq!(cm_source.name, builders::config_map_name("og"));
    let item = &cm_source.items.as_ref().expect("items")[0];
    assert_eq!((item.key.as_str(), item.path.as_str()), ("og-1.json", "og-1.json"));
    let cm = builders::config_map(&c, &opts);
    let cfg: InstanceConfig =
        serde_json::from_str(&cm.data.as_ref().expect("data")["og-1.json"]).expect("InstanceConfig");
    assert_eq!(cfg, builders::instance_config(&c, "og-1", &opts));
    assert_eq!(cfg.api_listen.to_string(), "0.0.0.0:8000");
    assert_eq!(cm.data.as_ref().expect("data").len(), 3);

    // Every path the manager uses lies in a volume mounted in its container, writable where
    // it writes.
    for (path, volume, writable) in [
        (cfg.root.clone(), "data", true),
        (cfg.data_dir(), "data", true),
        (cfg.socket_dir.clone(), "run", true),
        (cfg.token_file.clone(), "secret", false),
        (cfg.superuser_password_file.clone(), "secret", false),
        (cfg.replication_password_file.clone(), "secret", false),
        (cfg.passfile.clone(), "controller", false),
    ] {
        let got = volume_of(db, &path).unwrap_or_else(|| panic!("{} is in no volume", path.display()));
        assert_eq!(got.0, volume, "{}", path.display());
        if writable {
            assert!(!got.1, "{} must be writable", path.display());
        }
    }
    // The secret files are the Secret's keys.
    for (path, key) in [
        (&cfg.token_file, keys::API_TOKEN),
        (&cfg.superuser_password_file, keys::PASSWORD),
        (&cfg.replication_password_file, keys::REPLICATION_PASSWORD),
    ] {
        assert_eq!(path, &Path::new(paths::SECRET_DIR).join(key));
    }
    let data = spec.volumes.iter().flatten().find(|v| v.name == "data").expect("data volume");
    assert_eq!(
        data.persistent_volume_claim.as_ref().expect("pvc").claim_name,
        builders::pvc(&c, "og-1").metadata.name.expect("name")
    );
}

#[test]
fn probes_map_to_the_manager_health_endpoints() {
    let pod = builders::pod(&cluster(""), "og-0", RoleLabel::None, &Options::default());
    let db = database(&pod);
    let get = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        let h = p.as_ref().expect("probe").http_get.clone().expect("httpGet");
        (h.path.expect("path"), h.port)
    };
    let port = k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("manager".into());
    assert_eq!(get(&db.liveness_probe), ("/healthz".to_string(), port.clone()));
    assert_eq!(get(&db.readiness_probe), ("/readyz".to_string(), port));
    let manager_port =
        db.ports.iter().flatten().find(|p| p.name.as_deref() == Some("manager")).expect("port");
    assert_eq!(manager_port.container_port, 8000);
    assert!(db.startup_probe.is_none());
}

#[test]
fn pods_need_no_privilege_sysctl_or_api_access() {
    for (extra, uid) in [("  engine: openGauss\n", 70), ("  engine: postgres\n", 999)] {
        let pod = builders::pod(&cluster(extra), "og-0", RoleLabel::None, &Options::default());
        let spec = pod.spec.as_ref().expect("spec");
        let psc = spec.security_context.as_ref().expect("pod securityContext");
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!((psc.run_as_user, psc.fs_group), (Some(uid), Some(uid)), "{extra}");
        assert!(psc.sysctls.is_none(), "no sysctls");
        assert_eq!(psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()), Some("RuntimeDefault"));
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert!(spec.host_network.is_none() && spec.host_ipc.is_none() && spec.host_pid.is_none());
        for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
            let sc = c.security_context.as_ref().expect("container securityContext");
            assert_eq!(sc.privileged, Some(false), "{}", c.name);
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
            let caps = sc.capabilities.as_ref().expect("capabilities");
            assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]), "{}", c.name);
            assert!(caps.add.is_none(), "{}", c.name);
        }
    }
}

#[test]
fn services_select_pods_by_role() {
    let c = cluster("");
    let opts = Options::default();
    let rw = builders::rw_service(&c);
    let ro = builders::ro_service(&c);
    let headless = builders::headless_service(&c);
    let primary = builders::pod(&c, "og-0", RoleLabel::Primary, &opts);
    let standby = builders::pod(&c, "og-1", RoleLabel::Standby, &opts);
    let none = builders::pod(&c, "og-2", RoleLabel::None, &opts);
    let selects = |svc: &k8s_openapi::api::core::v1::Service, pod: &Pod| {
        let sel = svc.spec.as_ref().and_then(|s| s.selector.clone()).expect("selector");
        let pod_labels = pod.metadata.labels.clone().unwrap_or_default();
        sel.iter().all(|(k, v)| pod_labels.get(k) == Some(v))
    };
    assert!(selects(&rw, &primary) && !selects(&rw, &standby) && !selects(&rw, &none));
    assert!(selects(&ro, &standby) && !selects(&ro, &primary) && !selects(&ro, &none));
    assert!(selects(&headless, &primary) && selects(&headless, &standby) && selects(&headless, &none));
    let hs = headless.spec.as_ref().expect("spec");
    assert_eq!(hs.cluster_ip.as_deref(), Some("None"));
    assert_eq!(hs.publish_not_ready_addresses, Some(true));
    let ports: Vec<i32> = hs.ports.iter().flatten().map(|p| p.port).collect();
    assert_eq!(ports, [5432, 5433, 5437], "database, HA and HA heartbeat");
    let pod_spec = none.spec.as_ref().expect("spec");
    assert_eq!(pod_spec.subdomain.as_deref(), headless.metadata.name.as_deref());
    assert_eq!(pod_spec.hostname.as_deref(), Some("og-2"));
    assert_eq!(none.metadata.labels.as_ref().expect("labels")[labels::ROLE], "none");
    let pdb = builders::pod_disruption_budget(&c);
    let pdb_sel =
        pdb.spec.as_ref().and_then(|s| s.selector.clone()).and_then(|s| s.match_labels).expect("selector");
    assert!(pdb_sel.iter().all(|(k, v)| primary.metadata.labels.as_ref().expect("labels").get(k) == Some(v)));
    assert_eq!(
        pdb.spec.as_ref().and_then(|s| s.max_unavailable.clone()),
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
}

#[test]
fn postgres_variant_finds_its_tools_from_the_image_tag() {
    let c = cluster("  engine: postgres\n  image: postgres:16.4-bookworm\n");
    let cfg = builders::instance_config(&c, "og-0", &Options::default());
    assert_eq!(cfg.bin_dir, Path::new("/usr/lib/postgresql/16/bin"));
    assert_eq!(cfg.superuser, "postgres");
    let svc = builders::headless_service(&c);
    let ports: Vec<i32> =
        svc.spec.as_ref().and_then(|s| s.ports.clone()).expect("ports").iter().map(|p| p.port).collect();
    assert_eq!(ports, [5432], "no openGauss HA ports for PostgreSQL");
}

#[test]
fn annotations_override_the_image_layout() {
    let mut c = cluster("");
    c.metadata.annotations = Some(BTreeMap::from([
        ("ha.opengauss.dev/bin-dir".to_string(), "/opt/og/bin".to_string()),
        ("ha.opengauss.dev/run-as-user".to_string(), "1580".to_string()),
    ]));
    let layout = builders::image_layout(&c);
    assert_eq!((layout.bin_dir.as_str(), layout.uid, layout.gid), ("/opt/og/bin", 1580, 1580));
}

#[test]
fn everything_is_owned_by_the_cluster() {
    let c = cluster("");
    let objects =
        builders::cluster_objects(&c, None, &Credentials::generate(c.spec.engine), &Options::default());
    let mut metas = vec![
        objects.secret.metadata.clone(),
        objects.config_map.metadata.clone(),
        objects.headless.metadata.clone(),
        objects.rw.metadata.clone(),
        objects.ro.metadata.clone(),
        objects.pdb.metadata.clone(),
    ];
    for (pvc, pod) in &objects.instances {
        metas.push(pvc.metadata.clone());
        metas.push(pod.metadata.clone());
    }
    assert_eq!(metas.len(), 12);
    for m in metas {
        let r = &m.owner_references.as_ref().expect("owner references")[0];
        assert_eq!(r.uid, c.metadata.uid.clone().expect("uid"));
        assert_eq!((r.controller, r.block_owner_deletion), (Some(true), Some(true)));
        assert_eq!(m.namespace.as_deref(), Some("apps"));
        assert_eq!(m.labels.as_ref().expect("labels")[labels::CLUSTER], "og");
    }
    // Without a uid (a cluster file) there is no owner to point at.
    let mut file = c.clone();
    file.metadata.uid = None;
    assert!(
        builders::secret(&file, &Credentials::redacted(file.spec.engine)).metadata.owner_references.is_none()
    );
}

#[test]
fn names_stay_within_kubernetes_limits() {
    let name = "a".repeat(opengauss_crd::validate::MAX_CLUSTER_NAME_LEN);
    let c = parse_cluster(&format!(
        "apiVersion: ha.opengauss.dev/v1alpha1\nkind: OpenGaussCluster\nmetadata:\n  name: {name}\nspec:\n  instances: 9\n  replication:\n    maxWalSenders: 10\n"
    ))
    .expect("longest valid name");
    let objects =
        builders::cluster_objects(&c, None, &Credentials::redacted(c.spec.engine), &Options::default());
    for svc in [&objects.headless, &objects.rw, &objects.ro] {
        assert!(svc.metadata.name.as_ref().expect("name").len() <= 63, "Service names are DNS-1035 labels");
    }
    for (pvc, pod) in &objects.instances {
        let pod_name = pod.metadata.name.as_ref().expect("name");
        assert!(pod_name.len() <= 63, "a pod's hostname is a DNS label: {pod_name}");
        assert!(pvc.metadata.name.as_ref().expect("name").len() <= 253);
        for v in pod.metadata.labels.as_ref().expect("labels").values() {
            assert!(v.len() <= 63, "label value {v}");
        }
    }
}

#[test]
fn render_prints_every_object_with_secrets_redacted() {
    let c = cluster("");
    let text = render_cluster(&c, &Options::default()).expect("render");
    let kinds: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("kind: ")).collect();
    assert_eq!(
        kinds,
        [
            "Secret",
            "ConfigMap",
            "Service",
            "Service",
            "Service",
            "PodDisruptionBudget",
            "PersistentVolumeClaim",
            "Pod",
            "PersistentVolumeClaim",
            "Pod",
            "PersistentVolumeClaim",
            "Pod"
        ]
    );
    for key in [keys::PASSWORD, keys::REPLICATION_PASSWORD, keys::API_TOKEN, keys::PGPASS] {
        assert!(text.contains(&format!("  {key}: {REDACTED}")), "{key} redacted:\n{text}");
    }
    // Rendering twice gives the same text: nothing random leaks in.
    assert_eq!(text, render_cluster(&c, &Options::default()).expect("render"));
}

#[test]
fn render_command_refuses_an_invalid_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, "apiVersion: ha.opengauss.dev/v1alpha1\nkind: OpenGaussCluster\nmetadata:\n  name: x\nspec:\n  instances: 0\n")
        .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_opengauss-operator"))
        .args(["render", "-f"])
        .arg(&file)
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("spec.instances"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
}
