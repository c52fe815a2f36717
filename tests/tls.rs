//! Inter-node TLS (`raft.tls-enabled yes`) with real servers and certificates generated
//! here: a cluster whose nodes only reach each other on their TLS ports replicates,
//! compacts and sends a snapshot to a late joiner; a node whose certificate is signed by
//! another CA, or that does not trust the cluster's CA, cannot join; TLS without
//! certificate settings is refused before anything is written.
//!
//! Each server listens on a plain port for the test's client and on a TLS port that is
//! its `raft.addr`, so every byte between nodes goes over TLS.
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

struct Authority {
    cert: rcgen::Certificate,
    key: KeyPair,
    pem_path: PathBuf,
}

impl Authority {
    fn new(dir: &Path, name: &str) -> Authority {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pem_path = dir.join(format!("{name}.crt"));
        std::fs::write(&pem_path, cert.pem()).unwrap();
        Authority {
            cert,
            key,
            pem_path,
        }
    }

    /// A node certificate (server and client use) signed by this authority.
    fn issue(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let cert_path = dir.join(format!("{name}.crt"));
        let key_path = dir.join(format!("{name}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }
}

struct TlsNode {
    server: Server,
    tls_addr: String,
}

/// A server with a plain client port and a TLS port used as its raft address.
fn tls_node(trusted_ca: &Path, cert: &Path, key: &Path) -> TlsNode {
    let tls_port = free_port("127.0.0.1").to_string();
    let tls_addr = format!("127.0.0.1:{tls_port}");
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let (ca, cert, key) = (path(trusted_ca), path(cert), path(key));
    let opts = ServerOpts::new()
        .raft("tls-enabled", "yes")
        .raft("addr", &tls_addr)
        .raft("periodic-interval", &PERIODIC_MS.to_string())
        .raft("request-timeout", &REQUEST_TIMEOUT_MS.to_string())
        .raft("election-timeout", &ET_MS.to_string())
        .raft("join-timeout", "4000")
        .args(&[
            "--tls-port",
            &tls_port,
            "--tls-ca-cert-file",
            &ca,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-auth-clients",
            "yes",
        ]);
    TlsNode {
        server: Server::start(opts),
        tls_addr,
    }
}

fn index(node: &TlsNode, field: &str) -> i64 {
    try_info(&node.server.addr()).map_or(-1, |info| num(&info, field))
}

fn applied(node: &TlsNode) -> i64 {
    index(node, "raft_last_applied_index")
}

/// The follower applied everything the leader has in its log.
fn wait_caught_up(leader: &TlsNode, follower: &TlsNode) {
    let caught_up = wait_until(CONVERGE_TIMEOUT, || {
        let target = index(leader, "raft_current_index");
        target > 0 && applied(follower) >= target
    });
    assert!(
        caught_up,
        "follower at {} never reached the leader's {}; follower log:\n{}",
        applied(follower),
        applied(leader),
        tail(&follower.server.log(), 30)
    );
}

fn local_get(node: &TlsNode, key: &str) -> String {
    let reply: redis::Value = node
        .server
        .cmd(&["RAFT.DEBUG", "EXEC", "GET", key])
        .unwrap();
    value_text(&reply)
}

#[test]
fn a_cluster_replicates_and_sends_snapshots_over_tls() {
    let certs = tempfile::tempdir().unwrap();
    let ca = Authority::new(certs.path(), "cluster-ca");
    let nodes: Vec<TlsNode> = (1..=3)
        .map(|n| {
            let (cert, key) = ca.issue(certs.path(), &format!("node{n}"));
            tls_node(&ca.pem_path, &cert, &key)
        })
        .collect();
    let init: String = nodes[0].server.cmd(&["RAFT.CLUSTER", "INIT"]).unwrap();
    assert!(init.starts_with("OK "), "{init}");
    nodes[0].server.expect_serving(FORM_TIMEOUT);
    let joined: String = nodes[1]
        .server
        .cmd(&["RAFT.CLUSTER", "JOIN", &nodes[0].tls_addr])
        .unwrap();
    assert_eq!(joined, "OK");

    let mut leader = nodes[0].server.client();
    for i in 0..200 {
        let _: () = exec(&mut leader, &["SET", &format!("k{i}"), &format!("v{i}")]).unwrap();
    }
    wait_caught_up(&nodes[0], &nodes[1]);
    assert_eq!(local_get(&nodes[1], "k199"), "v199");

    // Compact, so the third node can only catch up by a snapshot sent over TLS.
    let _: redis::Value = nodes[0].server.cmd(&["RAFT.DEBUG", "COMPACT"]).unwrap();
    let joined: String = nodes[2]
        .server
        .cmd(&["RAFT.CLUSTER", "JOIN", &nodes[0].tls_addr])
        .unwrap();
    assert_eq!(joined, "OK");
    wait_caught_up(&nodes[0], &nodes[2]);
    assert_eq!(local_get(&nodes[2], "k0"), "v0");
    assert_eq!(local_get(&nodes[2], "k199"), "v199");
    let received = num(
        &try_info(&nodes[2].server.addr()).unwrap(),
        "raft_snapshots_received",
    );
    assert!(received >= 1, "the joiner caught up without a snapshot");

    // Writes after the join reach everyone; the peers' addresses are the TLS ports.
    let _: () = exec(&mut leader, &["SET", "after", "join"]).unwrap();
    for node in &nodes[1..] {
        wait_caught_up(&nodes[0], node);
        assert_eq!(local_get(node, "after"), "join");
    }
    // A restarted member reconnects over TLS and catches up.
    let mut nodes = nodes;
    nodes[1].server.restart();
    let _: () = exec(&mut leader, &["SET", "after", "restart"]).unwrap();
    wait_caught_up(&nodes[0], &nodes[1]);
    assert_eq!(local_get(&nodes[1], "after"), "restart");

    let info = try_info(&nodes[0].server.addr()).unwrap();
    let peers = info_nodes(&info);
    assert_eq!(peers.len(), 3, "{info:?}");
    for node in &nodes {
        assert!(
            peers.values().any(|(_, addr)| *addr == node.tls_addr),
            "{} not among {peers:?}",
            node.tls_addr
        );
    }
}

#[test]
fn nodes_with_a_foreign_certificate_or_trust_cannot_join() {
    let certs = tempfile::tempdir().unwrap();
    let ca = Authority::new(certs.path(), "cluster-ca");
    let rogue = Authority::new(certs.path(), "rogue-ca");
    let (cert, key) = ca.issue(certs.path(), "member");
    let member = tls_node(&ca.pem_path, &cert, &key);
    let _: String = member.server.cmd(&["RAFT.CLUSTER", "INIT"]).unwrap();
    member.server.expect_serving(FORM_TIMEOUT);
    let mut client = member.server.client();
    let _: () = exec(&mut client, &["SET", "k", "v"]).unwrap();

    // Its certificate is signed by another CA (it trusts the cluster's CA itself).
    let (cert, key) = rogue.issue(certs.path(), "intruder");
    let intruder = tls_node(&ca.pem_path, &cert, &key);
    // It has the cluster's certificate but does not trust the cluster's CA.
    let (cert, key) = ca.issue(certs.path(), "distrustful");
    let distrustful = tls_node(&rogue.pem_path, &cert, &key);

    for node in [&intruder, &distrustful] {
        let started = Instant::now();
        let reply: redis::RedisResult<String> =
            node.server.cmd(&["RAFT.CLUSTER", "JOIN", &member.tls_addr]);
        let error = err_text(&reply.expect_err("a join over a bad TLS link succeeded"));
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the failed join took {:?}",
            started.elapsed()
        );
        assert!(error.contains("ERR"), "{error}");
        let state = node.server.info_field("raft", "raft_state");
        assert_ne!(state.as_deref(), Some("up"), "{error}");
    }
    assert!(
        distrustful.server.log().contains("TLS")
            || distrustful.server.log().contains("certificate"),
        "the refused server certificate is not logged:\n{}",
        tail(&distrustful.server.log(), 20)
    );
    let info = try_info(&member.server.addr()).unwrap();
    assert_eq!(num(&info, "raft_num_nodes"), 1, "{info:?}");
    let _: () = exec(&mut client, &["SET", "k", "still-serving"]).unwrap();
}

#[test]
fn tls_without_certificate_settings_is_refused_before_init() {
    let server = Server::start(ServerOpts::new().raft("tls-enabled", "yes"));
    let reply: redis::RedisResult<String> = server.cmd(&["RAFT.CLUSTER", "INIT"]);
    let error = err_text(&reply.expect_err("INIT without certificates succeeded"));
    assert!(error.contains("tls-enabled"), "{error}");
    assert!(error.contains("tls-ca-cert-file"), "{error}");
    assert!(
        !server.raft_log_path().exists(),
        "a log was created by a refused INIT"
    );
    // Still a fresh node: the error is about TLS, not "already member".
    let again: redis::RedisResult<String> = server.cmd(&["RAFT.CLUSTER", "INIT"]);
    assert!(err_text(&again.unwrap_err()).contains("tls-enabled"));
    // Not a member yet, so the setting may still change; once a member, it may not.
    let _: () = server
        .cmd(&["CONFIG", "SET", "raft.tls-enabled", "no"])
        .unwrap();
    let init: String = server.cmd(&["RAFT.CLUSTER", "INIT"]).unwrap();
    assert!(init.starts_with("OK "), "{init}");
    let refused: redis::RedisResult<()> = server.cmd(&["CONFIG", "SET", "raft.tls-enabled", "yes"]);
    assert!(
        err_text(&refused.unwrap_err()).contains("not allowed after init"),
        "tls-enabled changed on a member"
    );
}
