//! API keys and the admin token never leave the process: not in its log (at `debug`, every
//! target), not in `/metrics`, not in `/admin/stats`. The log does carry the key id prefix,
//! so the test reads a log that has the request lines in it.

mod common;

use common::{auth, client, Edge, Mock};
use raster_edge::edge::KeyIdHasher;

const KEY_ID_SECRET: &str = "secrets-test-key-id-secret";
const ADMIN_TOKEN: &str = "admin-tok-5b1e0c9a7f";
const WRONG_ADMIN_TOKEN: &str = "admin-tok-wrong-77d2";
const ROTATED: [&str; 3] = [
    "sk-rotated-a1b2c3d4e5",
    "sk-rotated-f6a7b8c9d0",
    "sk-rotated-0e1d2c3b4a",
];
const PATH: &str = "/organizations/monogram-labs/libraries/barcelona/assets";

#[tokio::test]
async fn keys_and_admin_token_are_never_logged_or_exported() {
    let mock = Mock::start();
    let edge = Edge::start(
        &mock.url(),
        &format!(
            "[log]\nlevel = \"debug\"\n[edge]\nkey_id_secret = \"{KEY_ID_SECRET}\"\n\
             [admin]\ntoken = \"{ADMIN_TOKEN}\"\n"
        ),
    );
    let c = client();
    // A valid key (a miss, then a hit), unknown keys, a duplicate credential.
    for _ in 0..2 {
        let r = c
            .get(edge.url(PATH))
            .headers(auth("demo-read"))
            .send()
            .await
            .expect("valid key");
        assert_eq!(r.status(), 200);
    }
    for k in ROTATED {
        let r = c
            .get(edge.url(PATH))
            .headers(auth(k))
            .send()
            .await
            .expect("unknown key");
        assert_eq!(r.status(), 401);
    }
    let r = c
        .get(edge.url(PATH))
        .headers(auth("demo-write"))
        .header("authorization", format!("Bearer {}", ROTATED[0]))
        .send()
        .await
        .expect("two credentials");
    assert_eq!(r.status(), 400);
    // The admin token, right and wrong.
    for (token, want) in [(ADMIN_TOKEN, 200), (WRONG_ADMIN_TOKEN, 401)] {
        let r = c
            .post(edge.admin_url("/admin/purge"))
            .bearer_auth(token)
            .body(format!("{{\"scope\":\"{PATH}\"}}"))
            .send()
            .await
            .expect("purge");
        assert_eq!(r.status().as_u16(), want, "{token}");
    }
    let stats = c
        .get(edge.admin_url("/admin/stats"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("stats")
        .text()
        .await
        .expect("stats text");
    let metrics = edge.metrics().await;

    let id = KeyIdHasher::new(KEY_ID_SECRET.as_bytes())
        .key_id("demo-read")
        .short();
    let log = edge.proc.output();
    assert!(
        log.contains(&format!("key={id}")),
        "the access log names the key by its id prefix {id}:\n{log}"
    );
    let secrets = ["demo-read", "demo-write", ADMIN_TOKEN, WRONG_ADMIN_TOKEN]
        .into_iter()
        .chain(ROTATED);
    for s in secrets {
        assert!(!log.contains(s), "{s} in the log:\n{log}");
        assert!(!metrics.contains(s), "{s} in /metrics");
        assert!(!stats.contains(s), "{s} in /admin/stats");
    }
}
