//! HTTPS upstreams: the gateway verifies the origin's certificate chain and host name (SNI), and
//! trusts a private CA only when `upstream.ca_file` names it. The origin is `openssl s_server`
//! with a CA and a leaf certificate made for the test; for HTTP/2 it is raster-mock serving TLS
//! (`--tls-cert/--tls-key`, ALPN h2 and http/1.1) with a certificate from an rcgen test CA.

mod common;

use raster_edge::metrics;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::transport::{Transport, Validity};
use common::{auth, client, spawn_on_fresh_port, Edge, Mock, Proc};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a leaf for `localhost`, and an `openssl s_server` answering HTTPS with them.
fn tls_origin(dir: &Path) -> (u16, Proc) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=raster-edge test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write ext");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
            "-out",
            "leaf.pem",
        ],
    );
    spawn_on_fresh_port("openssl s_server", Duration::from_secs(10), |port| {
        let mut cmd = Command::new("openssl");
        cmd.current_dir(dir).args([
            "s_server",
            "-4",
            "-accept",
            &port.to_string(),
            "-cert",
            "leaf.pem",
            "-key",
            "leaf.key",
            "-www",
            "-quiet",
        ]);
        cmd
    })
}

const PLAIN: &str = "[cache]\nenabled = false\n[rate_limit]\nenabled = false\n";

#[tokio::test]
async fn test_https_upstream_verified_with_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (port, _origin) = tls_origin(dir.path());
    let ca = dir.path().join("ca.pem");
    let edge = Edge::start(
        &format!("https://localhost:{port}"),
        &format!("{PLAIN}[upstream]\nca_file = \"{}\"\n", ca.display()),
    );
    let r = client()
        .get(edge.url("/"))
        .headers(auth("demo-read"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert!(body.contains("s_server"), "{body}");
}

#[tokio::test]
async fn test_https_upstream_with_untrusted_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (port, _origin) = tls_origin(dir.path());
    let edge = Edge::start(&format!("https://localhost:{port}"), PLAIN);
    let r = client()
        .get(edge.url("/"))
        .headers(auth("demo-read"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "UPSTREAM_UNAVAILABLE");
    assert!(
        edge.metric(
            metrics::UPSTREAM_ERRORS_TOTAL,
            &[("kind", metrics::UpstreamErrorKind::Tls.as_str())]
        )
        .await
            >= 1.0
    );
}

/// raster-mock serving TLS with ALPN h2 and http/1.1, its certificate from a test CA.
fn tls_mock(pki: &common::transport::Pki) -> Mock {
    let (cert, key) = pki.issue("mock", &["localhost"], Validity::Current);
    Mock::start_with(&[
        "--tls-cert",
        &cert.display().to_string(),
        "--tls-key",
        &key.display().to_string(),
    ])
}

/// The mock's counters, read over its own TLS listener.
async fn tls_mock_stats(pki: &common::transport::Pki, mock: &Mock) -> serde_json::Value {
    let v: serde_json::Value = pki
        .trusting(reqwest::Client::builder())
        .build()
        .unwrap()
        .get(format!(
            "https://localhost:{}/__mock/stats",
            mock.addr.port()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["data"].clone()
}

/// `upstream.http2 = true` negotiates h2 with the origin by ALPN; `false` stays on HTTP/1.1.
/// The client side is parameterised too: HTTP/1.1, h2c and h2 over TLS to the gateway.
async fn upstream_h2(t: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let pki = common::transport::Pki::new(dir.path());
    let mock = tls_mock(&pki);
    let upstream = format!("https://localhost:{}", mock.addr.port());
    for (http2, want_h2) in [(true, 3), (false, 0)] {
        let edge = Edge::start_over(
            t,
            &upstream,
            &format!(
                "[cache]\nenabled = false\n[rate_limit]\nenabled = false\n[upstream]\nhttp2 = {http2}\nca_file = \"{}\"\n",
                pki.dir.join("ca.pem").display()
            ),
        );
        let before = tls_mock_stats(&pki, &mock).await;
        for path in ["/me", "/organizations/monogram-labs/libraries", "/me"] {
            let r = edge
                .client()
                .get(edge.url(path))
                .headers(auth("demo-read"))
                .send()
                .await
                .unwrap();
            assert_eq!(
                (r.status().as_u16(), r.version()),
                (200, t.version()),
                "{path}"
            );
            let v: serde_json::Value = r.json().await.unwrap();
            assert!(v["data"].is_object() || v["data"].is_array(), "{v}");
        }
        let after = tls_mock_stats(&pki, &mock).await;
        let h2 = after["http2"].as_u64().unwrap() - before["http2"].as_u64().unwrap();
        let all = after["requests"].as_u64().unwrap() - before["requests"].as_u64().unwrap();
        assert_eq!((all, h2), (3, want_h2), "upstream.http2 = {http2}");
    }
}

over_transports!(
    test_upstream_http2_negotiates_h2_with_a_tls_origin,
    upstream_h2
);
