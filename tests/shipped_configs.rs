//! Every config we ship validates, and the default one serves what the README promises.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn every_shipped_config_passes_check() {
    let mut files = vec![std::path::PathBuf::from("config/tollgate.toml")];
    for entry in std::fs::read_dir("config/examples").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            files.push(path);
        }
    }
    assert!(files.len() >= 3, "{files:?}");
    for file in files {
        let out = Command::new(Tollgate::binary()).args(["check", "--config"]).arg(&file).output().unwrap();
        assert!(out.status.success(), "{}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn default_config_serves_the_welcome_page_and_the_proxied_status_page() {
    // The default config binds fixed ports; skip only if something else holds them.
    let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
        || std::net::TcpStream::connect_timeout(&"127.0.0.1:9901".parse().unwrap(), Duration::from_millis(100)).is_ok()
    {
        panic!("ports 8080/9901 are taken; the default config cannot be tested");
    }
    let text = std::fs::read_to_string("config/tollgate.toml").unwrap();
    let mut tollgate = Tollgate::start(&text, addr);
    let (code, headers, body) = curl_full(&[&tollgate.url("/")]);
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&body).contains("Tollgate is running"));
    assert!(header_value(&headers, "x-request-id").is_some());

    let (code, headers, body) = curl_full(&[&tollgate.url("/admin/status")]);
    assert_eq!(code, 200);
    assert_eq!(header_value(&headers, "via").as_deref(), Some("1.1 tollgate"));
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status["upstreams"][0]["name"], "admin");
    assert_eq!(status["upstreams"][0]["targets"][0]["healthy"], true);

    let (code, _, _) = curl_full(&[&tollgate.url("/nothing-here.html")]);
    assert_eq!(code, 404);
    tollgate.signal("TERM");
    assert!(tollgate.wait_exit(Duration::from_secs(5)).is_some_and(|s| s.success()));
}
