//! SIGHUP swaps the config snapshot without dropping the process or in-flight requests.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn config(addr: std::net::SocketAddr, backend: std::net::SocketAddr) -> String {
    format!(
        "[[listener]]\nname = \"t\"\nbind = \"{addr}\"\n\n[[upstream]]\nname = \"b\"\ntargets = [\"{backend}\"]\n\n\
         [[route]]\nname = \"all\"\nupstream = \"b\"\n"
    )
}

#[test]
fn sighup_reloads_routes_and_rejects_a_bad_file_keeping_the_running_config() {
    let old = Backend::fixed("old");
    let new = Backend::fixed("new");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let tollgate = Tollgate::start(&config(addr, old.addr), addr);
    assert_eq!(curl_full(&[&tollgate.url("/")]).2, b"old");

    let config_path = tollgate.dir.path().join("tollgate.toml");
    std::fs::write(&config_path, "[[listener]]\nname = 't'\nbind = 'nonsense'\n").unwrap();
    tollgate.signal("HUP");
    assert!(tollgate.wait_for_log("config reload rejected", Duration::from_secs(5)), "{}", tollgate.log());
    assert!(tollgate.log().contains("tollgate.toml:3: listener.t.bind"), "{}", tollgate.log());
    assert_eq!(curl_full(&[&tollgate.url("/")]).2, b"old", "a bad file keeps the running config");

    std::fs::write(&config_path, config(addr, new.addr)).unwrap();
    tollgate.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (code, _, body) = curl_full(&[&tollgate.url("/")]);
        assert_eq!(code, 200);
        if body == b"new" {
            break;
        }
        assert!(Instant::now() < deadline, "reload did not take effect: {}", tollgate.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}
