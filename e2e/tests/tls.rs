//! TLS everywhere (issue 12), on real PostgreSQL: clients connect with verify-full and the
//! cluster's authority and nothing less, replication runs encrypted through a failover and a
//! switchover, the instance managers' API is HTTPS only and still wants its token, and
//! certificates are renewed under a writer without a failed commit.

use std::time::Duration;

use nix::sys::signal::Signal;
use opengauss_e2e::wait::{Probe, until};
use opengauss_e2e::writer::{Writer, missing_rows};
use opengauss_e2e::{LocalCluster, postgres_available};
use opengauss_operator::tls::Authority;
use tokio_postgres::NoTls;

const BOOT: Duration = Duration::from_secs(90);
const CONVERGE: Duration = Duration::from_secs(120);

fn require_postgres() {
    assert!(
        postgres_available(),
        "these tests need the PostgreSQL server binaries (apt-get install postgresql)"
    );
}

fn config(c: &LocalCluster, instance: &str) -> tokio_postgres::Config {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(c.host_of(instance))
        .port(c.port_of(instance))
        .user("postgres")
        .password(c.superuser_password())
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(3));
    cfg
}

/// Every standby streams from `primary` over TLS: `(application_name, state, ssl)` rows.
async fn replication_over_tls(c: &LocalCluster, primary: &str) -> Vec<(String, String, bool)> {
    let client = c.connect(primary).await.expect("connect to the primary");
    let rows = client
        .query(
            "SELECT r.application_name, r.state, s.ssl FROM pg_stat_replication r \
             JOIN pg_stat_ssl s USING (pid) ORDER BY 1",
            &[],
        )
        .await
        .expect("pg_stat_replication");
    rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect()
}

async fn wait_replication_encrypted(c: &LocalCluster, primary: &str, standbys: usize, when: &str) {
    until(
        &format!("{standbys} standbys streaming over TLS {when}"),
        CONVERGE,
        Duration::from_millis(200),
        || async {
            let rows = replication_over_tls(c, primary).await;
            let ok =
                rows.len() == standbys && rows.iter().all(|(_, state, ssl)| state == "streaming" && *ssl);
            if ok { Probe::Done(()) } else { Probe::NotYet(format!("{rows:?}")) }
        },
    )
    .await
    .expect("replication over TLS");
}

/// Kills `primary`; returns the new primary once every standby, the old primary included,
/// streams from it over TLS again.
async fn kill_and_fail_over(c: &LocalCluster, primary: &str) -> String {
    c.signal_instance(primary, Signal::SIGKILL).expect("kill the primary");
    let after = c
        .wait_for("a new primary", CONVERGE, |s| s.current_primary.as_deref().is_some_and(|p| p != primary))
        .await
        .expect("failed over");
    let new_primary = after.current_primary.clone().expect("primary");
    c.wait_healthy(CONVERGE).await.expect("healthy after the failover");
    wait_replication_encrypted(c, &new_primary, 2, "after a failover").await;
    new_primary
}

fn manager_base(c: &LocalCluster, instance: &str, scheme: &str) -> String {
    let port = std::fs::read_to_string(c.instance_dir(instance).join("manager.port")).expect("manager port");
    format!("{scheme}://127.0.0.1:{}", port.trim())
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_replication_and_the_manager_api_use_tls_only() {
    require_postgres();
    let mut c = LocalCluster::new("tls", 3, "");
    c.start();
    c.wait_healthy(BOOT).await.expect("healthy");
    let primary = c.primary().expect("primary");

    for k in 0..3 {
        let name = c.instance(k);
        // verify-full with the cluster's authority: the connection is encrypted.
        let client = c.connect(&name).await.expect("a verify-full client connects");
        let ssl: bool = client
            .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
            .await
            .expect("pg_stat_ssl")
            .get(0);
        assert!(ssl, "{name}: the session is encrypted");
        // Without TLS: refused by the server.
        let plain =
            config(&c, &name).connect(NoTls).await.map(drop).expect_err("a client without TLS is refused");
        let why = plain.as_db_error().map(|e| e.message().to_string()).unwrap_or_else(|| plain.to_string());
        assert!(why.contains("no encryption"), "{name}: {why}");
        // Trusting another authority: the server's certificate does not verify.
        let stranger = Authority::generate("stranger", time::OffsetDateTime::now_utc()).expect("authority");
        let tls = opengauss_operator::tls::config::client(stranger.cert_pem()).expect("client config");
        let mut cfg = config(&c, &name);
        cfg.ssl_mode(tokio_postgres::config::SslMode::Require);
        let foreign = cfg
            .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
            .await
            .map(drop)
            .expect_err("a client trusting another authority is refused");
        assert!(format!("{foreign:?}").to_lowercase().contains("certificate"), "{name}: {foreign:?}");
    }
    wait_replication_encrypted(&c, &primary, 2, "at start").await;

    // The manager API: HTTPS only, token still required.
    let token = std::fs::read_to_string(c.state_dir.join("secrets/api-token")).expect("token");
    let http = c.manager_http_client();
    let status_url = |scheme: &str| format!("{}/v1/status", manager_base(&c, &primary, scheme));
    opengauss_operator::tls::config::install_default_provider();
    let plain = reqwest::Client::new().get(status_url("http")).bearer_auth(token.trim()).send().await;
    assert!(plain.is_err(), "plain HTTP is not served: {plain:?}");
    let anonymous = http.get(status_url("https")).send().await.expect("https answers");
    assert_eq!(anonymous.status(), 401, "no token");
    let wrong =
        http.get(status_url("https")).bearer_auth("not-the-token").send().await.expect("https answers");
    assert_eq!(wrong.status(), 401, "wrong token");
    let right = http.get(status_url("https")).bearer_auth(token.trim()).send().await.expect("https answers");
    assert_eq!(right.status(), 200, "right authority and token");
    let report: serde_json::Value = right.json().await.expect("a report");
    assert_eq!(report["instance"], primary.as_str());
    let stranger = Authority::generate("stranger", time::OffsetDateTime::now_utc()).expect("authority");
    let foreign = reqwest::Client::builder()
        .tls_backend_preconfigured(
            opengauss_operator::tls::config::client(stranger.cert_pem()).expect("config"),
        )
        .build()
        .expect("client");
    assert!(
        foreign.get(status_url("https")).send().await.is_err(),
        "a client trusting another authority fails"
    );

    // A failover, then a switchover: both standbys stream over TLS each time.
    let new_primary = kill_and_fail_over(&c, &primary).await;

    let target = (0..3).map(|k| c.instance(k)).find(|n| *n != new_primary).expect("a standby");
    let dir = c.state_dir.display().to_string();
    let out = c.cli(&["local", "switchover", "--state-dir", &dir, &target]);
    assert!(out.status.success(), "switchover: {}", String::from_utf8_lossy(&out.stderr));
    c.wait_for("the switchover", CONVERGE, |s| s.current_primary.as_deref() == Some(target.as_str()))
        .await
        .expect("switched over");
    c.wait_healthy(CONVERGE).await.expect("healthy after the switchover");
    wait_replication_encrypted(&c, &target, 2, "after a switchover").await;

    // No key, password or token in the logs or the status.
    let status = c.cli(&["local", "status", "--state-dir", &dir, "-o", "json"]);
    let mut printed = vec![c.controller_output(), String::from_utf8_lossy(&status.stdout).into_owned()];
    printed.extend((0..3).map(|k| c.manager_output(&c.instance(k))));
    for text in &printed {
        assert!(!text.contains("PRIVATE KEY"), "a private key was printed:\n{text}");
        assert!(!text.contains(token.trim()), "the API token was printed");
        assert!(!text.contains(&c.superuser_password()), "the password was printed");
    }
    assert!(c.down().status.success());
}

/// Certificates that last 30 s are renewed at about 20 s, twice, while a writer
/// commits: no commit fails, nothing is lost, and after the first certificates expired every
/// instance still serves clients and its API, so they serve the renewed ones.
#[tokio::test(flavor = "multi_thread")]
async fn short_lived_certificates_are_renewed_under_writes() {
    require_postgres();
    let mut c = LocalCluster::new("tlsrot", 3, "  tls:\n    certificateLifetimeSeconds: 30\n");
    c.start();
    let status = c.wait_healthy(BOOT).await.expect("healthy");
    let names: Vec<String> = (0..3).map(|k| c.instance(k)).collect();
    let first: Vec<i64> = names
        .iter()
        .map(|n| {
            status
                .instance(n)
                .and_then(|r| r.certificate_expires.as_ref())
                .expect("expiry in status")
                .0
                .as_second()
        })
        .collect();
    let w = Writer::start(&c).await.expect("writer");
    let mut acked = w.progress(0, "before renewals").await;

    // Two renewals of every instance's certificate, seen in the status.
    until("two renewals of every certificate", Duration::from_secs(90), Duration::from_millis(500), || {
        let s = c.status().unwrap_or_default();
        let renewed: Vec<i64> = names
            .iter()
            .map(|n| {
                s.instance(n).and_then(|r| r.certificate_expires.as_ref()).map_or(0, |t| t.0.as_second())
            })
            .collect();
        // One renewal moves the expiry about 20 s on; only a second one moves it 30 s or more.
        let done = renewed.iter().zip(&first).all(|(now, was)| *now >= was + 30);
        std::future::ready(if done {
            Probe::Done(())
        } else {
            Probe::NotYet(format!("{renewed:?} from {first:?}"))
        })
    })
    .await
    .expect("renewed");
    let expired_by = first.iter().max().copied().unwrap_or_default();
    until(
        "the first certificates to have expired",
        Duration::from_secs(40),
        Duration::from_millis(500),
        || {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            std::future::ready(if now > expired_by + 1 {
                Probe::Done(())
            } else {
                Probe::NotYet(format!("{now}"))
            })
        },
    )
    .await
    .expect("time passes");
    acked = w.progress(acked, "after the first certificates expired").await;

    // Every instance serves a valid certificate: clients and the API verify them now.
    let http = c.manager_http_client();
    for name in &names {
        let client = c.connect(name).await.expect("verify-full after renewals");
        client.simple_query("SELECT 1").await.expect("query");
        let health = http.get(format!("{}/healthz", manager_base(&c, name, "https"))).send().await;
        assert!(
            health.is_ok_and(|r| r.status().is_success()),
            "{name}: its API serves a renewed certificate"
        );
    }
    let primary = c.primary().expect("primary");
    wait_replication_encrypted(&c, &primary, 2, "after renewals").await;
    let _ = acked;
    let written = w.stop().await.expect("writer stops");
    assert!(written.failures.is_empty(), "commits failed during renewals: {:?}", written.failures);
    let missing = missing_rows(&c, &written.acknowledged).await.expect("count");
    assert!(missing.is_empty(), "acknowledged rows lost: {missing:?}");
    let renewals =
        names.iter().map(|n| c.manager_output(n).matches("now serving the new server certificate").count());
    assert!(
        renewals.clone().all(|k| k >= 2),
        "every manager took up two renewals: {:?}",
        renewals.collect::<Vec<_>>()
    );
    assert!(c.down().status.success());
}

/// `IDENTIFY_SYSTEM` over a replication connection to `instance` as the replication user with
/// its password, presenting `client` (certificate, key) when given. psql's output or error.
fn replication_login(
    c: &LocalCluster,
    instance: &str,
    client: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<String, String> {
    let bin =
        opengauss_operator::platform::local::binaries::find_bin_dir(opengauss_crd::Engine::Postgres, None)
            .expect("PostgreSQL binaries");
    let password =
        std::fs::read_to_string(c.state_dir.join("secrets/replication-password")).expect("password");
    let mut conninfo = format!(
        "host={} port={} user=replicator dbname=replication replication=true sslmode=verify-full \
         sslrootcert={} connect_timeout=5",
        c.host_of(instance),
        c.port_of(instance),
        c.state_dir.join("tls/ca.crt").display()
    );
    // Without a certificate of its own, libpq must not pick one up from ~/.postgresql.
    let (cert, key) = client.map_or(("/nonexistent".into(), "/nonexistent".into()), |(c, k)| {
        (c.display().to_string(), k.display().to_string())
    });
    conninfo += &format!(" sslcert={cert} sslkey={key}");
    let out = std::process::Command::new(bin.join("psql"))
        .args(["-X", "-At", "-d", &conninfo, "-c", "IDENTIFY_SYSTEM"])
        .env("PGPASSWORD", password.trim())
        .output()
        .expect("psql runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// With `replicationClientCertificates`, standbys stream and rejoin with their certificates,
/// and the replication password alone no longer opens a replication connection; a member's
/// certificate does, another authority's does not.
#[tokio::test(flavor = "multi_thread")]
async fn replication_authenticates_with_member_certificates() {
    require_postgres();
    let mut c = LocalCluster::new("tlscert", 3, "  tls:\n    replicationClientCertificates: true\n");
    c.start();
    c.wait_healthy(BOOT).await.expect("healthy");
    let primary = c.primary().expect("primary");
    wait_replication_encrypted(&c, &primary, 2, "at start").await;
    let client = c.connect(&primary).await.expect("connect");
    let presented: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) \
             WHERE s.client_dn IS NOT NULL AND r.usename = 'replicator'",
            &[],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0);
    assert_eq!(presented, 2, "both standbys present a certificate");

    let refused = replication_login(&c, &primary, None).expect_err("the password alone is refused");
    assert!(refused.contains("certificate"), "{refused}");

    // A member's pair (copied: libpq wants its key owned by the user running it).
    let scratch = tempfile::tempdir().expect("tempdir");
    let member = c.instance_dir(&c.instance(if primary == c.instance(0) { 1 } else { 0 }));
    let (cert, key) = (scratch.path().join("member.crt"), scratch.path().join("member.key"));
    std::fs::copy(member.join("server.crt"), &cert).expect("copy cert");
    std::fs::copy(member.join("server.key"), &key).expect("copy key");
    let out = replication_login(&c, &primary, Some((&cert, &key))).expect("a member's certificate is let in");
    assert!(!out.trim().is_empty(), "IDENTIFY_SYSTEM answers: {out:?}");

    // A certificate from another authority, for the same name: refused.
    let stranger = Authority::generate("stranger", time::OffsetDateTime::now_utc()).expect("authority");
    let forged = stranger
        .issue(
            &c.host_of(&primary),
            &[c.host_of(&primary)],
            time::OffsetDateTime::now_utc(),
            Duration::from_secs(600),
        )
        .expect("issue");
    std::fs::write(&cert, &forged.cert_pem).expect("write cert");
    std::fs::write(&key, &forged.key_pem).expect("write key");
    let foreign =
        replication_login(&c, &primary, Some((&cert, &key))).expect_err("another authority's is refused");
    // The server's handshake refuses it: its authority is not the cluster's.
    assert!(foreign.contains("unknown ca"), "{foreign}");

    // A failover: the old primary is rewound and rejoins, streaming with its certificate.
    kill_and_fail_over(&c, &primary).await;
    assert!(c.down().status.success());
}

/// Writes `pair` as the supplied certificate of `instance` in `tls_dir`.
fn supply(tls_dir: &std::path::Path, instance: &str, pair: &opengauss_operator::tls::KeyedCertificate) {
    std::fs::write(tls_dir.join(format!("{instance}.crt")), &pair.cert_pem).expect("write cert");
    std::fs::write(tls_dir.join(format!("{instance}.key")), &pair.key_pem).expect("write key");
}

/// Server certificates the user supplies (the authority's certificate without its key, and
/// each instance's pair in `<state-dir>/tls/`): `local up` refuses to start without a usable
/// pair for every instance, serves exactly the supplied ones, takes up a replacement, and
/// refuses a broken replacement with the file named while the instance keeps serving the
/// previous pair. The operator never makes a key of its own for the authority.
#[tokio::test(flavor = "multi_thread")]
async fn supplied_certificates_are_used_as_given_and_broken_ones_refused() {
    require_postgres();
    let mut c = LocalCluster::new("tlssup", 3, "");
    let tls_dir = c.state_dir.join("tls");
    std::fs::create_dir_all(&tls_dir).expect("tls dir");
    let now = time::OffsetDateTime::now_utc();
    let users = Authority::generate("users", now).expect("authority");
    std::fs::write(tls_dir.join("ca.crt"), users.cert_pem()).expect("ca");
    let names = ["127.0.0.1".to_string(), "localhost".to_string()];
    let lifetime = Duration::from_secs(3600);
    let issue = |subject: &str| {
        users.issue(subject, &names, time::OffsetDateTime::now_utc(), lifetime).expect("issue")
    };
    let instances: Vec<String> = (0..3).map(|k| c.instance(k)).collect();

    // One instance without a pair: refused before anything runs, the missing file named.
    supply(&tls_dir, &instances[0], &issue("127.0.0.1"));
    supply(&tls_dir, &instances[1], &issue("127.0.0.1"));
    c.start();
    let code = c.wait_controller(Duration::from_secs(60)).expect("local up exits");
    assert_ne!(code, Some(0), "local up must refuse");
    let missing = format!("{}.crt", instances[2]);
    assert!(c.controller_output().contains(&missing), "{missing} named:\n{}", c.controller_output());
    assert!(c.manager_pid(&instances[0]).is_none(), "nothing started");

    let supplied: Vec<_> = instances.iter().map(|_| issue("127.0.0.1")).collect();
    for (name, pair) in instances.iter().zip(&supplied) {
        supply(&tls_dir, name, pair);
    }
    c.start();
    c.wait_healthy(BOOT).await.expect("healthy");
    let primary = c.primary().expect("primary");
    wait_replication_encrypted(&c, &primary, 2, "with supplied certificates").await;
    for (name, pair) in instances.iter().zip(&supplied) {
        c.connect(name).await.expect("a verify-full client trusting the user's authority connects");
        let served = std::fs::read_to_string(c.instance_dir(name).join("server.crt")).expect("served");
        assert_eq!(served, pair.cert_pem, "{name} serves its supplied certificate as given");
    }
    assert!(!tls_dir.join("ca.key").exists(), "the operator made no authority key");

    // A broken replacement (another name): refused, the file named, the old pair kept.
    let target = &instances[1];
    supply(&tls_dir, target, &users.issue("10.9.9.9", &["10.9.9.9".into()], now, lifetime).expect("issue"));
    until("the broken pair refused", Duration::from_secs(30), Duration::from_millis(200), || async {
        let out = c.controller_output();
        if out.contains(&format!("{target} keeps its server certificate"))
            && out.contains("does not name 127.0.0.1")
        {
            Probe::Done(())
        } else {
            Probe::NotYet("not refused yet".into())
        }
    })
    .await
    .expect("refused");
    let served = std::fs::read_to_string(c.instance_dir(target).join("server.crt")).expect("served");
    assert_eq!(served, supplied[1].cert_pem, "the previous pair stays");
    c.connect(target).await.expect("still serving");

    // A good replacement is taken up without a restart.
    let server = c.server_pid(target);
    let fresh = issue("127.0.0.1");
    supply(&tls_dir, target, &fresh);
    until("the replacement served", Duration::from_secs(30), Duration::from_millis(200), || async {
        let served = std::fs::read_to_string(c.instance_dir(target).join("server.crt")).unwrap_or_default();
        let loaded = c.manager_output(target).matches("now serving the new server certificate").count();
        if served == fresh.cert_pem && loaded >= 1 {
            Probe::Done(())
        } else {
            Probe::NotYet(format!("loaded {loaded}"))
        }
    })
    .await
    .expect("replacement taken up");
    assert_eq!(c.server_pid(target), server, "no restart");
    c.connect(target).await.expect("serving the replacement");
    assert!(c.down().status.success());
}
