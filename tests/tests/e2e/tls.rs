//! TLS on the gRPC port, end to end with certificates made at run time: a client that trusts
//! the issuing CA is served; one that does not, or that speaks plaintext, is refused; an
//! `https://` endpoint never sends the API key in the clear; with `tls_client_ca_path` the server
//! requires a client certificate (mTLS).

use std::path::PathBuf;
use std::time::Duration;

use memoire_sdk::{Client, Error, RetryPolicy};
use memoire_tests::tls::{Pem, TestCa};
use memoire_tests::{ClientTls, TestServer, proto as pb};
use tokio::io::AsyncReadExt as _;

/// Writes `pem`'s certificate and key into a fresh directory; returns their paths.
fn files(pem: &Pem, ca: Option<&str>) -> (PathBuf, PathBuf, Option<PathBuf>) {
    let dir = std::env::temp_dir().join(format!("memoire-tls-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    (
        write("server.pem", &pem.cert),
        write("server.key", &pem.key),
        ca.map(|c| write("client-ca.pem", c)),
    )
}

/// A client of `port` over TLS trusting `ca` (none: the system's roots only), one attempt.
fn client(port: u16, ca: Option<&str>, identity: Option<&Pem>, key: &str) -> Client {
    let mut b = Client::builder(format!("https://localhost:{port}"))
        .api_key(key)
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .retry(RetryPolicy {
            max_retries: 0,
            ..RetryPolicy::default()
        });
    if let Some(ca) = ca {
        b = b.tls_ca_pem(ca.to_owned());
    }
    if let Some(id) = identity {
        b = b.tls_identity_pem(id.cert.clone(), id.key.clone());
    }
    b.build().expect("client")
}

fn teach(content: &str) -> pb::TeachRequest {
    pb::TeachRequest {
        user_id: "u".into(),
        kind: pb::MemoryKind::Fact as i32,
        content: content.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_clients_that_trust_its_ca_and_refuses_the_rest() {
    let ca = TestCa::new("Mémoire test CA");
    let (cert, key, _) = files(&ca.issue(&["localhost", "127.0.0.1"]), None);
    let server = TestServer::start_tls(
        |c| {
            c.tls_cert_path = Some(cert);
            c.tls_key_path = Some(key);
        },
        ClientTls {
            ca: ca.cert.clone(),
            identity: None,
        },
    )
    .await;
    let (tenant, trusted) = server.tenant("t", pb::KeyRole::Writer).await;
    let taught = trusted
        .teach(teach("Lives in Porto"))
        .await
        .expect("teach over TLS");
    let secret = server.key(&tenant, pb::KeyRole::Writer).await;
    let port = server.grpc_addr.port();
    let got = client(port, Some(&ca.cert), None, &secret)
        .get_memory(&taught.memory.expect("memory").id)
        .await
        .expect("a second TLS client");
    assert_eq!(got.content, "Lives in Porto");

    // The system's roots do not know the test CA, nor does another CA.
    let other = TestCa::new("another CA");
    for (who, ca) in [
        ("system roots", None),
        ("another CA", Some(other.cert.as_str())),
    ] {
        let err = client(port, ca, None, &secret)
            .teach(teach("never written"))
            .await
            .expect_err(who);
        assert!(matches!(err, Error::Unavailable(_)), "{who}: {err:?}");
    }
    // Plaintext to the TLS port gets nowhere.
    let plain = Client::builder(format!("http://{}", server.grpc_addr))
        .api_key(&secret)
        .timeout(Duration::from_secs(5))
        .retry(RetryPolicy {
            max_retries: 0,
            ..RetryPolicy::default()
        })
        .build()
        .expect("client");
    plain
        .teach(teach("never written either"))
        .await
        .expect_err("plaintext to a TLS port");
    let written: i64 = sqlx::query_scalar("SELECT count(*) FROM memories")
        .fetch_one(server.pool())
        .await
        .expect("count");
    assert_eq!(written, 1, "only the trusted client wrote");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_endpoint_never_sends_the_key_to_a_plaintext_listener() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut bytes = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut bytes))
            .await
            .expect("the client sent something")
            .expect("read");
        bytes.truncate(n);
        bytes // dropping the socket ends the handshake
    });
    let err = client(port, None, None, "mem_do_not_leak")
        .get_memory("x")
        .await
        .expect_err("no TLS server there");
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    let bytes = seen.await.expect("listener");
    assert_eq!(
        bytes.first(),
        Some(&0x16),
        "a TLS handshake record came first"
    );
    assert!(
        !bytes.windows(15).any(|w| w == b"mem_do_not_leak"),
        "the key was sent before any handshake"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_client_ca_the_server_requires_a_client_certificate() {
    let ca = TestCa::new("Mémoire test CA");
    let clients = TestCa::new("client CA");
    let (cert, key, client_ca) = files(&ca.issue(&["localhost"]), Some(&clients.cert));
    let identity = clients.issue(&["app-1"]);
    let server = TestServer::start_tls(
        |c| {
            c.tls_cert_path = Some(cert);
            c.tls_key_path = Some(key);
            c.tls_client_ca_path = client_ca;
        },
        ClientTls {
            ca: ca.cert.clone(),
            identity: Some(identity.clone()),
        },
    )
    .await;
    let (tenant, with_certificate) = server.tenant("t", pb::KeyRole::Writer).await;
    with_certificate
        .teach(teach("Lives in Porto"))
        .await
        .expect("a client with a certificate");
    let secret = server.key(&tenant, pb::KeyRole::Writer).await;
    let port = server.grpc_addr.port();
    // With TLS 1.3 the client learns of the refusal after its own handshake, as a dropped
    // connection (reported as unavailable, cancelled or a transport error).
    client(port, Some(&ca.cert), None, &secret)
        .teach(teach("never written"))
        .await
        .expect_err("no client certificate");
    // A certificate from a CA the server does not trust is refused too.
    let stranger = ca.issue(&["app-2"]);
    client(port, Some(&ca.cert), Some(&stranger), &secret)
        .teach(teach("never written either"))
        .await
        .expect_err("a certificate of another CA");
    let written: i64 = sqlx::query_scalar("SELECT count(*) FROM memories")
        .fetch_one(server.pool())
        .await
        .expect("count");
    assert_eq!(written, 1, "only the client with a certificate wrote");
}
