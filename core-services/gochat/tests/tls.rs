//! TLS on the gateway's client port, end to end against a real `gochat dev`
//! with certificates generated here: HTTPS REST and `wss://` through the
//! gateway, a plaintext client refused, verification that is real (an
//! unknown CA fails), and a SIGHUP certificate reload that keeps open
//! connections.

mod support;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use support::{recv, send, spawn_ready, temp_dir, text_msg, Server, Ws, CHEAP_ARGON2};
use tokio_tungstenite::{Connector, MaybeTlsStream};

/// A test certificate authority.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A server certificate for 127.0.0.1 with common name `cn`, written to
    /// `dir` as PEM; returns the leaf's DER.
    fn issue(&self, cn: &str, cert_path: &Path, key_path: &Path) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        // Written beside, then renamed: a reload never sees half a file.
        let (tmp_c, tmp_k) = (cert_path.with_extension("crt.new"), key_path.with_extension("key.new"));
        std::fs::write(&tmp_c, cert.pem()).unwrap();
        std::fs::write(&tmp_k, key.serialize_pem()).unwrap();
        std::fs::rename(tmp_c, cert_path).unwrap();
        std::fs::rename(tmp_k, key_path).unwrap();
        cert.der().clone()
    }
}

fn client_config(trusted: &Ca) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.der()).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

struct TlsServer {
    server: Server,
    https: reqwest::Client,
    tls: Arc<rustls::ClientConfig>,
    cert: PathBuf,
    key: PathBuf,
}

impl TlsServer {
    /// `gochat dev` serving TLS with a certificate `ca` issued (CN `cn`).
    fn start(name: &str, ca: &Ca, cn: &str) -> (Self, CertificateDer<'static>) {
        let dir = temp_dir(name);
        let (cert, key) = (dir.join("gateway.crt"), dir.join("gateway.key"));
        let leaf = ca.issue(cn, &cert, &key);
        let data = dir.to_str().unwrap();
        let mut env: Vec<(&str, &str)> = CHEAP_ARGON2.to_vec();
        env.push(("GOCHAT_GATEWAY__TLS_CERT_PATH", cert.to_str().unwrap()));
        env.push(("GOCHAT_GATEWAY__TLS_KEY_PATH", key.to_str().unwrap()));
        let (child, ready) =
            spawn_ready(&["dev", "--listen", "127.0.0.1:0", "--shards", "2", "--data-dir", data], &env);
        assert_eq!(ready["tls"], true, "{ready}");
        let addr: SocketAddr = ready["addr"].as_str().unwrap().parse().unwrap();
        assert_eq!(ready["url"], format!("https://{addr}"));
        let tls = client_config(ca);
        let https = reqwest::Client::builder().use_preconfigured_tls((*tls).clone()).build().unwrap();
        (TlsServer { server: Server::attach_gateway(child, &ready), https, tls, cert, key }, leaf)
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.server.addr)
    }

    async fn user(&self, name: &str) -> (String, String) {
        let body = json!({"username": name, "password": "correct-horse", "nickname": name});
        let r = self.https.post(self.url("/api/v1/auth/register")).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 201, "register {name} over https");
        let id = r.json::<Value>().await.unwrap()["user_id"].as_str().unwrap().to_owned();
        let body = json!({"username": name, "password": "correct-horse"});
        let r = self.https.post(self.url("/api/v1/auth/login")).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200, "login {name} over https");
        (id, r.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_owned())
    }

    async fn wss(&self, token: &str, tls: Arc<rustls::ClientConfig>) -> Result<Ws, String> {
        let url = format!("wss://{}/ws?token={token}", self.server.addr);
        let (ws, resp) =
            tokio_tungstenite::connect_async_tls_with_config(url, None, false, Some(Connector::Rustls(tls)))
                .await
                .map_err(|e| e.to_string())?;
        assert_eq!(resp.status(), 101);
        Ok(ws)
    }
}

/// The certificate the server presented on this connection.
fn peer_leaf(ws: &Ws) -> CertificateDer<'static> {
    match ws.get_ref() {
        MaybeTlsStream::Rustls(s) => s.get_ref().1.peer_certificates().expect("peer certificates")[0].clone(),
        _ => panic!("not a TLS stream"),
    }
}

async fn exchange(from: &mut Ws, to: &mut Ws, to_user: &str, cmid: &str) {
    send(from, text_msg(cmid, to_user, &format!("over tls {cmid}"))).await;
    let ack = recv(from).await;
    assert_eq!(ack["type"], "message-ack", "{ack}");
    let m = recv(to).await;
    assert_eq!((m["type"].as_str(), m["client_msg_id"].as_str()), (Some("new-message"), Some(cmid)), "{m}");
    assert_eq!(m["content"]["text"], format!("over tls {cmid}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_end_to_end_and_plaintext_gets_no_service() {
    let ca = Ca::new("gochat test ca");
    let (srv, leaf) = TlsServer::start("tls-e2e", &ca, "gateway-a");
    let (alice, ta) = srv.user("alice").await;
    let (bob, tb) = srv.user("bob").await;
    let r = srv.https.get(srv.url("/healthz")).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.text().await.unwrap().as_str()), (200, "ok\n"));

    let mut a = srv.wss(&ta, srv.tls.clone()).await.expect("alice wss");
    let mut b = srv.wss(&tb, srv.tls.clone()).await.expect("bob wss");
    assert_eq!(peer_leaf(&a), leaf);
    exchange(&mut a, &mut b, &bob, "a-1").await;
    exchange(&mut b, &mut a, &alice, "b-1").await;
    // A burst: many frames queued at once go out through rustls' bounded buffer.
    for i in 0..50 {
        send(&mut a, text_msg(&format!("burst-{i}"), &bob, &"x".repeat(2000))).await;
    }
    let mut seen = 0;
    while seen < 50 {
        let m = recv(&mut b).await;
        if m["type"] == "new-message" {
            seen += 1;
        }
    }
    // History over HTTPS: a large response body through the TLS writer.
    let cid = support::conv_id(&alice, &bob);
    let r = srv
        .https
        .get(srv.url(&format!("/api/v1/conversations/{cid}/messages?limit=100")))
        .bearer_auth(&ta)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["messages"].as_array().unwrap().len(), 52);

    // Plaintext HTTP against the TLS port: no HTTP answer, the socket closes.
    let addr = srv.server.addr;
    let plain = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        got
    })
    .await
    .unwrap();
    assert!(!plain.starts_with(b"HTTP/"), "plaintext got an HTTP answer: {:?}", String::from_utf8_lossy(&plain));
    assert!(!String::from_utf8_lossy(&plain).contains("ok"), "plaintext was served");
    // ...and a plaintext WebSocket upgrade fails.
    let e = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token={ta}")).await;
    assert!(e.is_err(), "plaintext ws upgrade succeeded on the TLS port");

    // Verification is real: a client trusting another CA refuses the server.
    let other = Ca::new("someone else's ca");
    let e = srv.wss(&ta, client_config(&other)).await.expect_err("untrusted certificate accepted");
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    let bad = reqwest::Client::builder().use_preconfigured_tls((*client_config(&other)).clone()).build().unwrap();
    assert!(bad.get(srv.url("/healthz")).send().await.is_err(), "https with an untrusted ca succeeded");
    // ...and so does one that checks for another name.
    let connector = tokio_rustls::TlsConnector::from(srv.tls.clone());
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let wrong = connector.connect(ServerName::try_from("gochat.example").unwrap(), tcp).await;
    assert!(wrong.is_err(), "a certificate for another name was accepted");

    // The open connections survived all of that.
    exchange(&mut a, &mut b, &bob, "a-2").await;
    let failures = srv.metric("gochat_gateway_tls_handshake_failures_total").await;
    assert!(failures >= 3.0, "failed handshakes counted: {failures}");
}

impl TlsServer {
    /// Sum of a metric over its label sets, read from the admin listener
    /// (plain HTTP on loopback; the TLS client port serves no /metrics).
    async fn metric(&self, name: &str) -> f64 {
        let url = self.server.admin_url("/metrics");
        let text = self.server.http.get(url).send().await.unwrap().text().await.unwrap();
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_and_keeps_open_connections() {
    let ca = Ca::new("gochat reload ca");
    let (srv, leaf_a) = TlsServer::start("tls-reload", &ca, "gateway-before");
    let (_alice, ta) = srv.user("alice").await;
    let (bob, tb) = srv.user("bob").await;
    let mut a = srv.wss(&ta, srv.tls.clone()).await.expect("alice wss");
    let mut b = srv.wss(&tb, srv.tls.clone()).await.expect("bob wss");
    assert_eq!(peer_leaf(&a), leaf_a);

    // A bad certificate file: the reload fails, the old certificate stays.
    std::fs::write(&srv.cert, "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n").unwrap();
    unsafe { libc::kill(srv.server.pid() as i32, libc::SIGHUP) };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = srv.wss(&ta, srv.tls.clone()).await.expect("handshake after a failed reload");
    assert_eq!(peer_leaf(&c), leaf_a, "a bad new certificate replaced the old one");
    drop(c);

    // A new pair, then SIGHUP: new handshakes get it, within a few seconds.
    let leaf_b = ca.issue("gateway-after", &srv.cert, &srv.key);
    assert_ne!(leaf_a, leaf_b);
    unsafe { libc::kill(srv.server.pid() as i32, libc::SIGHUP) };
    let mut fresh = None;
    for _ in 0..100 {
        let ws = srv.wss(&ta, srv.tls.clone()).await.expect("handshake after reload");
        if peer_leaf(&ws) == leaf_b {
            fresh = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut fresh = fresh.expect("no handshake presented the reloaded certificate");
    // Every shard switched (one per connection attempt round robin is not
    // guaranteed, so try several more).
    for _ in 0..8 {
        let ws = srv.wss(&ta, srv.tls.clone()).await.unwrap();
        assert_eq!(peer_leaf(&ws), leaf_b, "a shard still presents the old certificate");
    }
    // Connections opened before the reload still work, both ways.
    assert_eq!(peer_leaf(&a), leaf_a);
    exchange(&mut a, &mut b, &bob, "after-reload-1").await;
    send(&mut fresh, text_msg("after-reload-2", &bob, "over tls after-reload-2")).await;
    loop {
        // `fresh` is alice's second device: it also saw after-reload-1.
        let m = recv(&mut fresh).await;
        if m["type"] == "message-ack" {
            assert_eq!(m["client_msg_id"], "after-reload-2");
            break;
        }
    }
    let m = recv(&mut b).await;
    assert_eq!(m["client_msg_id"], "after-reload-2");
    let _ = recv(&mut a).await; // alice's other device sees her own message
}
