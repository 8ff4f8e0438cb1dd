//! TLS termination, HTTP/2 and the other listeners, through the real binary: a test CA made
//! here (rcgen), ALPN h2 and http/1.1, certificates chosen by SNI, an unknown SNI, bad
//! certificates refused at load, reloads under traffic (a broken file keeps the certificate in
//! service), the plain listener's refusal, prior-knowledge h2c, the HTTP/2 limits on the wire,
//! and the Unix-socket listener with its file mode.

mod common;

use raster_edge::metrics;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::transport::{shared_pki, Pki, Transport, Validity, TLS_HOST};
use common::{auth, client, edge_bin, free_addr, reserve, run_with_timeout, Edge, Mock, Proc};

const NO_CACHE: &str = "[cache]\nenabled = false\n[rate_limit]\nenabled = false\n";

/// The DER of the first certificate in a PEM file.
fn leaf_der(pem_path: &Path) -> Vec<u8> {
    let pem = std::fs::read(pem_path).expect("read pem");
    let mut reader = pem.as_slice();
    let der = rustls_pemfile::certs(&mut reader)
        .next()
        .expect("a certificate")
        .expect("pem")
        .to_vec();
    der
}

/// A client for `host` (resolved to `addr`) that trusts `pki`, reports the peer certificate,
/// and checks names only when `verify`.
fn tls_client(pki: &Pki, host: &str, addr: SocketAddr, verify: bool) -> reqwest::Client {
    pki.trusting(reqwest::Client::builder())
        .resolve(host, addr)
        .tls_info(true)
        .danger_accept_invalid_hostnames(!verify)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// The leaf certificate the gateway presented for `host`, or the error.
async fn served_cert(
    pki: &Pki,
    host: &str,
    addr: SocketAddr,
    verify: bool,
) -> Result<Vec<u8>, reqwest::Error> {
    let r = tls_client(pki, host, addr, verify)
        .get(format!("https://{host}:{}/me", addr.port()))
        .headers(auth("demo-read"))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let info = r
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .expect("tls info");
    Ok(info.peer_certificate().expect("peer certificate").to_vec())
}

fn tls_toml(cert: &Path, key: &Path) -> String {
    format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        cert.display(),
        key.display()
    )
}

fn sni_toml(files: &[(&[&str], &(PathBuf, PathBuf))]) -> String {
    let mut s = String::new();
    for (names, (cert, key)) in files {
        let names: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
        s.push_str(&format!(
            "[[tls.certificates]]\nserver_names = [{}]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            names.join(", "),
            cert.display(),
            key.display()
        ));
    }
    s
}

#[tokio::test]
async fn test_tls_handshake_negotiates_h2_or_http1_by_alpn() {
    let mock = Mock::start();
    let edge = Edge::start_over(Transport::H2Tls, &mock.url(), NO_CACHE);
    let pki = shared_pki();
    let url = edge.url("/me");
    // A client offering both gets h2; an HTTP/1.1-only client gets HTTP/1.1.
    let both = pki
        .trusting(reqwest::Client::builder())
        .resolve(TLS_HOST, edge.addr)
        .build()
        .unwrap();
    let h1 = pki
        .trusting(reqwest::Client::builder())
        .resolve(TLS_HOST, edge.addr)
        .http1_only()
        .build()
        .unwrap();
    for (client, version) in [
        (both, reqwest::Version::HTTP_2),
        (h1, reqwest::Version::HTTP_11),
    ] {
        let r = client
            .get(&url)
            .headers(auth("demo-read"))
            .send()
            .await
            .unwrap();
        assert_eq!((r.status().as_u16(), r.version()), (200, version));
        let v: serde_json::Value = r.json().await.unwrap();
        assert!(v["data"].is_object(), "{v}");
    }
    // TLS 1.2 is accepted, TLS 1.1 is not (openssl as the client).
    let tls12 = pki
        .trusting(reqwest::Client::builder())
        .resolve(TLS_HOST, edge.addr)
        .max_tls_version(reqwest::tls::Version::TLS_1_2)
        .build()
        .unwrap();
    assert_eq!(
        tls12
            .get(&url)
            .headers(auth("demo-read"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &edge.addr.to_string(), "-tls1_1"])
        .stdin(std::process::Stdio::null());
    let (code, out, _) = run_with_timeout(cmd, Duration::from_secs(10));
    assert_ne!(code, Some(0), "TLS 1.1 handshake must fail:\n{out}");
    // Plain HTTP on the TLS port gets no HTTP answer.
    assert!(client()
        .get(format!("http://{}/me", edge.addr))
        .send()
        .await
        .is_err());
}

#[tokio::test]
async fn test_tls_sni_chooses_among_certificates_and_wildcards() {
    let mock = Mock::start();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let a = pki.issue("a", &["a.test"], Validity::Current);
    let b = pki.issue("b", &["*.b.test"], Validity::Current);
    let toml = format!(
        "{NO_CACHE}{}{}",
        tls_toml(&pki.edge.0, &pki.edge.1),
        sni_toml(&[(&["a.test"], &a), (&["*.b.test"], &b)])
    );
    let edge = Edge::start(&mock.url(), &toml);
    for (host, want) in [
        ("a.test", &a.0),
        ("x.b.test", &b.0),
        ("API.B.TEST", &b.0),
        (TLS_HOST, &pki.edge.0),
    ] {
        let got = served_cert(&pki, host, edge.addr, true)
            .await
            .unwrap_or_else(|e| panic!("{host}: {e:?}"));
        assert_eq!(got, leaf_der(want), "{host}");
    }
    assert!(
        edge.metric(
            metrics::TLS_SNI_TOTAL,
            &[("result", metrics::SniResult::Matched.as_str())]
        )
        .await
            >= 3.0
    );
}

#[tokio::test]
async fn test_tls_unknown_sni_gets_the_default_certificate_or_is_refused() {
    let mock = Mock::start();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let a = pki.issue("a", &["a.test"], Validity::Current);
    let base = format!(
        "{NO_CACHE}{}{}",
        tls_toml(&pki.edge.0, &pki.edge.1),
        sni_toml(&[(&["a.test"], &a)])
    );

    // default: the default certificate, which a verifying client refuses for that name.
    let edge = Edge::start(&mock.url(), &base);
    let got = served_cert(&pki, "other.test", edge.addr, false)
        .await
        .unwrap();
    assert_eq!(got, leaf_der(&pki.edge.0));
    assert!(served_cert(&pki, "other.test", edge.addr, true)
        .await
        .is_err());
    // No SNI at all (an IP address): the default certificate too.
    let got = served_cert(&pki, "127.0.0.1", edge.addr, false)
        .await
        .unwrap();
    assert_eq!(got, leaf_der(&pki.edge.0));
    assert!(
        edge.metric(
            metrics::TLS_SNI_TOTAL,
            &[("result", metrics::SniResult::Default.as_str())]
        )
        .await
            >= 2.0
    );

    // refuse: the handshake fails; known names still work.
    let strict = Edge::start(
        &mock.url(),
        &base.replace("[tls]\n", "[tls]\nunknown_sni = \"refuse\"\n"),
    );
    let e = served_cert(&pki, "other.test", strict.addr, false)
        .await
        .unwrap_err();
    assert!(e.is_connect() || e.is_request(), "{e:?}");
    assert_eq!(
        served_cert(&pki, "a.test", strict.addr, true)
            .await
            .unwrap(),
        leaf_der(&a.0)
    );
    assert_eq!(
        strict
            .metric(
                metrics::TLS_SNI_TOTAL,
                &[("result", metrics::SniResult::Refused.as_str())]
            )
            .await,
        1.0
    );
}

/// `raster-edge check-config` and `raster-edge` itself on `toml`: both must fail, naming `key`
/// and saying `what`.
fn refused_at_load(toml: &str, key: &str, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, toml).unwrap();
    let mut check = Command::new(edge_bin());
    check.arg("check-config").arg(&path);
    let (code, _, err) = run_with_timeout(check, Duration::from_secs(10));
    assert_ne!(code, Some(0), "check-config accepted it");
    assert!(
        err.contains(key) && err.contains(what),
        "check-config: {err}"
    );

    let mut run = Command::new(edge_bin());
    run.arg("--config")
        .arg(&path)
        .arg("--listen")
        .arg(free_addr().to_string())
        .arg("--admin-listen")
        .arg(free_addr().to_string())
        .env("RASTER_EDGE_RUNTIME_DIR", dir.path());
    let (code, _, err) = run_with_timeout(run, Duration::from_secs(10));
    assert!(
        code.is_some() && code != Some(0),
        "raster-edge started: {err}"
    );
    assert!(
        err.contains(key) && err.contains(what),
        "raster-edge: {err}"
    );
}

#[test]
fn test_tls_expired_or_mismatched_certificates_are_refused_at_load_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let old = pki.issue("old", &["old.test"], Validity::Expired);
    let a = pki.issue("a", &["a.test"], Validity::Current);
    let b = pki.issue("b", &["b.test"], Validity::Current);
    let default = tls_toml(&pki.edge.0, &pki.edge.1);

    refused_at_load(&tls_toml(&old.0, &old.1), "tls.cert_file", "expired");
    refused_at_load(
        &format!("{default}{}", sni_toml(&[(&["old.test"], &old)])),
        "tls.certificates[0].cert_file",
        "expired",
    );
    refused_at_load(&tls_toml(&a.0, &b.1), "tls.key_file", "does not match");
    refused_at_load(
        &format!(
            "{default}{}",
            sni_toml(&[(&["a.test"], &a), (&["c.test"], &b)])
        ),
        "tls.certificates[1].server_names",
        "c.test",
    );
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    refused_at_load(&tls_toml(&garbage, &a.1), "tls.cert_file", "no CERTIFICATE");
    refused_at_load(
        "[tls]\ncert_file = \"/x.pem\"\n",
        "tls.key_file",
        "required",
    );
}

/// Writes `contents` to `path` the way deploy tools do: a temporary file renamed over it.
fn replace_file(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn test_tls_reload_under_traffic_serves_new_certificate_and_keeps_old_on_bad_file() {
    let mock = Mock::start();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let (cert, key) = pki.issue("live", &[TLS_HOST], Validity::Current);
    let edge = Edge::start(&mock.url(), &format!("{NO_CACHE}{}", tls_toml(&cert, &key)));
    let first = leaf_der(&cert);
    assert_eq!(
        served_cert(&pki, TLS_HOST, edge.addr, true).await.unwrap(),
        first
    );

    // Traffic on long-lived connections (h2 and HTTP/1.1) throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut workers = Vec::new();
    for h2 in [true, false] {
        let mut b = pki
            .trusting(reqwest::Client::builder())
            .resolve(TLS_HOST, edge.addr);
        b = if h2 {
            b.http2_prior_knowledge()
        } else {
            b.http1_only()
        };
        let c = b.build().unwrap();
        let url = format!("https://{TLS_HOST}:{}/me", edge.addr.port());
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match c.get(&url).headers(auth("demo-read")).send().await {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }

    // A new certificate (new key) replaces the files: new connections get it.
    let (new_cert, new_key) = pki.issue_pem(&[TLS_HOST], Validity::Current);
    replace_file(&key, &new_key);
    replace_file(&cert, &new_cert);
    let second = leaf_der(&cert);
    assert_ne!(first, second);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = served_cert(&pki, TLS_HOST, edge.addr, true).await.unwrap();
        if got == second {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        edge.metric(
            metrics::TLS_RELOADS_TOTAL,
            &[("result", metrics::TlsReloadResult::Ok.as_str())]
        )
        .await
            >= 1.0
    );

    // A broken certificate file: refused, logged, counted; the one in service stays.
    replace_file(
        &cert,
        "-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while edge
        .metric(
            metrics::TLS_RELOADS_TOTAL,
            &[("result", metrics::TlsReloadResult::Error.as_str())],
        )
        .await
        < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "the broken file was never noticed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        served_cert(&pki, TLS_HOST, edge.addr, true).await.unwrap(),
        second
    );
    assert!(
        edge.proc
            .output()
            .contains("TLS certificate reload refused"),
        "{}",
        edge.proc.output()
    );

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 10, "{ok} requests");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during reloads",
        ok + failed
    );
}

#[tokio::test]
async fn test_plain_listener_beside_tls_refuses_api_requests_unless_allowed() {
    let mock = Mock::start();
    for (policy, want) in [("refuse", 403), ("allow", 200)] {
        let plain = free_addr();
        let toml =
            format!("listen.plain = \"{plain}\"\nlisten.plain_api = \"{policy}\"\n{NO_CACHE}");
        let edge = Edge::start_over(Transport::H2Tls, &mock.url(), &toml);
        let r = client()
            .get(format!("http://{plain}/me"))
            .headers(auth("demo-read"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want, "{policy}");
        if want == 403 {
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], "HTTPS_REQUIRED", "{v}");
            assert_eq!(
                mock.requests().await,
                0,
                "a refused request reached the origin"
            );
        }
        // The TLS listener serves the API either way.
        let r = edge
            .client()
            .get(edge.url("/me"))
            .headers(auth("demo-read"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

#[tokio::test]
async fn test_h2c_prior_knowledge_and_http1_share_the_plain_listener() {
    let mock = Mock::start();
    let edge = Edge::start_over(Transport::H2c, &mock.url(), NO_CACHE);
    for t in [Transport::H2c, Transport::Http1] {
        let r = t
            .client(edge.addr)
            .get(edge.url("/me"))
            .headers(auth("demo-read"))
            .send()
            .await
            .unwrap();
        assert_eq!((r.status().as_u16(), r.version()), (200, t.version()));
    }
    // Without listen.h2c the preface is not HTTP/1.1: no answer over h2.
    let plain = Edge::start(&mock.url(), NO_CACHE);
    assert!(Transport::H2c
        .client(plain.addr)
        .get(plain.url("/me"))
        .send()
        .await
        .is_err());
}

#[tokio::test]
async fn test_h2_settings_carry_the_configured_limits_and_oversized_headers_get_431() {
    let mock = Mock::start();
    let edge = Edge::start_over(
        Transport::H2c,
        &mock.url(),
        &format!("{NO_CACHE}[http2]\nmax_concurrent_streams = 7\n[server]\nmax_header_size = \"16KiB\"\n"),
    );
    let mut cmd = Command::new("nghttp");
    cmd.args([
        "-nv",
        "-H",
        "authorization: Bearer demo-read",
        "-H",
        "api-version: 2026-05-20",
        &edge.url("/me"),
    ]);
    let (code, out, err) = run_with_timeout(cmd, Duration::from_secs(10));
    assert_eq!(code, Some(0), "nghttp: {err}\n{out}");
    assert!(
        out.contains("SETTINGS_MAX_CONCURRENT_STREAMS(0x03):7"),
        "{out}"
    );
    assert!(
        out.contains("SETTINGS_MAX_HEADER_LIST_SIZE(0x06):16384"),
        "{out}"
    );
    assert!(out.contains(":status: 200"), "{out}");

    let big = "x".repeat(20 * 1024);
    let r = Transport::H2c
        .client(edge.addr)
        .get(edge.url("/me"))
        .headers(auth("demo-read"))
        .header("x-big", big)
        .send()
        .await;
    match r {
        Ok(r) => assert_eq!(r.status(), 431),
        // h2 may also refuse the stream outright.
        Err(e) => assert!(e.is_request(), "{e:?}"),
    }
    assert_eq!(
        mock.requests().await,
        1,
        "only nghttp's request reached the origin"
    );
}

#[tokio::test]
async fn test_unix_socket_listener_with_its_file_mode() {
    let mock = Mock::start();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("edge.sock");
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "{NO_CACHE}[listen]\nproxy = \"unix:{}\"\nunix_mode = \"0600\"\nh2c = true\n",
            sock.display()
        ),
    )
    .unwrap();
    let admin = reserve();
    let mut cmd = Command::new(edge_bin());
    cmd.arg("--config")
        .arg(&config)
        .arg("--admin-listen")
        .arg(admin.addr().to_string())
        .arg("--upstream")
        .arg(mock.url())
        .env("RASTER_EDGE_RUNTIME_DIR", dir.path());
    let admin = admin.release();
    let proc = Proc::spawn("raster-edge", cmd);
    let ready = format!("http://{admin}/readyz");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = client().get(&ready).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "not ready:\n{}", proc.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let meta = std::fs::metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    for h2 in [false, true] {
        let b = reqwest::Client::builder().unix_socket(sock.clone());
        let c = if h2 {
            b.http2_prior_knowledge()
        } else {
            b.http1_only()
        }
        .build()
        .unwrap();
        let r = c
            .get("http://edge/me")
            .headers(auth("demo-read"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "h2={h2}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert!(v["data"].is_object(), "{v}");
    }
    drop(proc);
}

/// The configuration reload reads the certificate files again: with the file watcher off,
/// renewed files are served after SIGHUP (and not before), and the reload is counted.
#[tokio::test]
async fn test_sighup_reloads_certificates_without_the_watcher() {
    let mock = Mock::start();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let (cert, key) = pki.issue("sighup", &[TLS_HOST], Validity::Current);
    let toml = format!("{NO_CACHE}{}watch = false\n", tls_toml(&cert, &key));
    let edge = Edge::start(&mock.url(), &toml);
    let first = leaf_der(&cert);
    assert_eq!(
        served_cert(&pki, TLS_HOST, edge.addr, true).await.unwrap(),
        first
    );

    let (new_cert, new_key) = pki.issue_pem(&[TLS_HOST], Validity::Current);
    replace_file(&key, &new_key);
    replace_file(&cert, &new_cert);
    let second = leaf_der(&cert);
    assert_ne!(first, second);
    // No watcher: the old certificate stays until the reload.
    assert_eq!(
        served_cert(&pki, TLS_HOST, edge.addr, true).await.unwrap(),
        first
    );

    edge.proc.signal(1); // SIGHUP
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_cert(&pki, TLS_HOST, edge.addr, true).await.unwrap() != second {
        assert!(
            Instant::now() < deadline,
            "SIGHUP never brought the new certificate: {}",
            edge.proc.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        edge.metric(
            metrics::CONFIG_RELOAD_TOTAL,
            &[("result", metrics::ReloadResult::Ok.as_str())]
        )
        .await,
        1.0
    );
}
