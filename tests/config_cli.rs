//! The command line and config validation: `tollgate check` reports
//! `FILE:LINE: KEY: message` for each kind of mistake, `--version`,
//! `[runtime]` settings and `${ENV}` expansion, through the real binary.

mod common;

use std::net::SocketAddr;

use common::core_kit::*;
use common::*;

/// A config that is valid as written.
const VALID: &str = r#"[runtime]
worker_threads = 2
shutdown_grace = "5s"

[log]
format = "json"
level = "info"

[[listener]]
name = "public"
bind = "127.0.0.1:18080"
max_body_bytes = 1048576

[[upstream]]
name = "legacy"
targets = ["127.0.0.1:9000", { address = "127.0.0.1:9001", weight = 3 }]
balance = "least_request"
first_byte_timeout = "300ms"

[[route]]
name = "api"
match = { path_prefix = "/api/", method = ["GET", "POST"] }
upstream = "legacy"
strip_prefix = true
"#;

/// Runs `check` on `config` and asserts it fails with exactly one
/// `FILE:LINE: KEY: ...` line containing `message_part`.
fn assert_check_fails_at(config: &str, env: &[(&str, &str)], line: usize, key: &str, message_part: &str) {
    let (out, path) = run_check(config, env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check accepted a bad config:\n{config}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let expected_prefix = format!("{path}:{line}: {key}: ");
    let error_line = stderr
        .lines()
        .find(|l| l.contains(&path))
        .unwrap_or_else(|| panic!("no error line naming the file in:\n{stderr}"));
    assert!(error_line.contains(&expected_prefix), "expected `{expected_prefix}` in the error, got:\n{stderr}");
    assert!(error_line.contains(message_part), "expected `{message_part}` in:\n{stderr}");
}

#[test]
fn check_accepts_a_valid_config_and_exits_zero() {
    let (out, path) = run_check(VALID, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&path) && stdout.contains("ok"), "{stdout}");
    assert!(stdout.contains("1 listeners, 1 routes, 1 upstreams"), "{stdout}");
}

#[test]
fn check_names_line_and_key_of_an_unknown_listener_key() {
    let config = "[[listener]]\nname = \"public\"\nbind = \"127.0.0.1:18080\"\nbnid = \"127.0.0.1:18081\"\n";
    assert_check_fails_at(config, &[], 4, "listener.bnid", "unknown field `bnid`");
}

#[test]
fn check_names_line_and_key_of_an_unknown_key_in_a_later_route_match() {
    let config =
        format!("{VALID}\n[[route]]\nname = \"typo\"\nmatch = {{ path_prefx = \"/x\" }}\nupstream = \"legacy\"\n");
    let line = config.lines().position(|l| l.contains("path_prefx")).unwrap() + 1;
    assert_check_fails_at(&config, &[], line, "route.match.path_prefx", "unknown field `path_prefx`");
}

#[test]
fn check_names_the_key_not_the_value_when_a_value_has_the_wrong_type() {
    let config = "[runtime]\nworker_threads = \"two\"\n";
    assert_check_fails_at(config, &[], 2, "runtime.worker_threads", "expected i64");
    let config = "[[listener]]\nname = \"public\"\nbind = \"127.0.0.1:18080\"\nmerge_slashes = \"no\"\n";
    assert_check_fails_at(config, &[], 4, "listener.merge_slashes", "expected a boolean");
    let config =
        format!("{VALID}\n[[route]]\nname = \"typed\"\nmatch = {{ path_prefix = 5 }}\nupstream = \"legacy\"\n");
    let line = config.lines().position(|l| l.contains("path_prefix = 5")).unwrap() + 1;
    assert_check_fails_at(&config, &[], line, "route.match.path_prefix", "expected a string");
    // A value TOML cannot parse, and one that fits none of a field's shapes.
    let config = "[[listener]]\nname = \"public\"\nbind = 127.0.0.1\n";
    assert_check_fails_at(config, &[], 3, "listener.bind", "invalid");
    let config = "[[upstream]]\nname = \"u\"\ntargets = [1]\n";
    assert_check_fails_at(config, &[], 3, "upstream.targets", "expected a target: \"host:port\" or { address");
}

#[test]
fn check_names_the_line_and_column_of_a_byte_that_is_not_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latin1.toml");
    // A Latin-1 "é" pasted into a value on line 3.
    std::fs::write(&path, b"[[listener]]\nname = \"public\"\nbind = \"caf\xe9:80\"\n").unwrap();
    let out = std::process::Command::new(Tollgate::binary()).arg("check").arg("--config").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let expected = format!("{}:3: config: not UTF-8 text (TOML must be): a stray byte at column 12", path.display());
    assert!(stderr.contains(&expected), "expected `{expected}` in:\n{stderr}");
}

#[test]
fn check_rejects_an_unknown_top_level_section() {
    let config = format!("{VALID}\n[listner]\nbind = \"x\"\n");
    let line = config.lines().position(|l| l == "[listner]").unwrap() + 1;
    assert_check_fails_at(&config, &[], line, "listner", "unknown field `listner`");
}

#[test]
fn check_names_a_route_whose_upstream_does_not_exist() {
    let config = VALID.replace("upstream = \"legacy\"", "upstream = \"legacyy\"");
    let line = config.lines().position(|l| l == "upstream = \"legacyy\"").unwrap() + 1;
    assert_check_fails_at(&config, &[], line, "route.api.upstream", "no upstream named `legacyy`");
}

#[test]
fn check_names_a_bad_bind_address() {
    for bad in ["127.0.0.1:99999", "localhost:8080", "127.0.0.1"] {
        let config = VALID.replace("bind = \"127.0.0.1:18080\"", &format!("bind = \"{bad}\""));
        assert_check_fails_at(&config, &[], 11, "listener.public.bind", &format!("`{bad}` is not an address"));
    }
}

#[test]
fn check_names_an_upstream_target_without_a_usable_port() {
    let cases = [
        ("127.0.0.1:99999", "the port must be between 1 and 65535"),
        ("127.0.0.1:0", "the port must be between 1 and 65535"),
        ("127.0.0.1", "needs a port"),
        ("http://127.0.0.1:9000/x", "is not HOST:PORT"),
    ];
    for (bad, message) in cases {
        let config = VALID.replace("\"127.0.0.1:9000\"", &format!("\"{bad}\""));
        assert_check_fails_at(&config, &[], 16, "upstream.legacy.targets", message);
    }
}

#[test]
fn check_names_a_missing_tls_certificate_file() {
    let dir = tempfile::tempdir().unwrap();
    let key = write_file(dir.path(), "key.pem", b"not used");
    let missing = dir.path().join("missing-cert.pem");
    let config = VALID.replace(
        "max_body_bytes = 1048576",
        &format!("tls = {{ cert = \"{}\", key = \"{}\" }}", missing.display(), key.display()),
    );
    assert_check_fails_at(&config, &[], 12, "listener.public.tls.cert", "does not exist");
}

#[test]
fn check_names_a_bad_duration_and_a_duplicate_name() {
    let config = VALID.replace("\"300ms\"", "\"300 ms\"");
    assert_check_fails_at(&config, &[], 18, "upstream.legacy.first_byte_timeout", "300 ms");
    let config = format!("{VALID}\n[[upstream]]\nname = \"legacy\"\ntargets = [\"127.0.0.1:9002\"]\n");
    let line = config.lines().enumerate().filter(|(_, l)| *l == "name = \"legacy\"").nth(1).unwrap().0 + 1;
    assert_check_fails_at(&config, &[], line, "upstream.name", "defined twice");
}

#[test]
fn check_names_an_unknown_forwarding_field_and_accepts_known_ones_in_any_case() {
    let config =
        VALID.replace("strip_prefix = true", "strip_prefix = true\nforward_headers = [\"X-Forwarded-For\", \"via\"]");
    let (out, _) = run_check(&config, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let config = VALID.replace(
        "strip_prefix = true",
        "strip_prefix = true\nrequest_id_header = false\nforward_headers = [\"via\", \"x-real-ip\"]",
    );
    let line = config.lines().position(|l| l.starts_with("forward_headers")).unwrap() + 1;
    assert_check_fails_at(&config, &[], line, "route.api.forward_headers", "`x-real-ip` is not one of x-forwarded-for");
}

#[test]
fn check_names_grpc_json_mistakes_on_their_line() {
    let descriptors = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/grpc/catalog.pb");
    let grpc = format!(
        "{VALID}\n[[upstream]]\nname = \"catalog\"\nprotocol = \"grpc\"\ntargets = [\"127.0.0.1:9100\"]\n\n\
         [[route]]\nname = \"rest\"\nmatch = {{ path_prefix = \"/v1/\" }}\nupstream = \"catalog\"\n"
    );
    let with = |table: &str| format!("{grpc}grpc_json = {table}\n");
    let line = |config: &str| config.lines().position(|l| l.starts_with("grpc_json")).unwrap() + 1;

    let good = with(&format!("{{ descriptors = \"{descriptors}\", services = [\"shop.v1.Catalog\"] }}"));
    let (out, _) = run_check(&good, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let missing = with("{ descriptors = \"/nonexistent/api.pb\" }");
    assert_check_fails_at(&missing, &[], line(&missing), "route.rest.grpc_json.descriptors", "does not exist");

    let not_a_set = with(&format!(
        "{{ descriptors = \"{}\" }}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/grpc/catalog.proto")
    ));
    assert_check_fails_at(&not_a_set, &[], line(&not_a_set), "route.rest.grpc_json", "not a usable descriptor set");

    let no_service = with(&format!("{{ descriptors = \"{descriptors}\", services = [\"shop.v1.Nope\"] }}"));
    assert_check_fails_at(&no_service, &[], line(&no_service), "route.rest.grpc_json", "no service `shop.v1.Nope`");

    let http1 = with(&format!("{{ descriptors = \"{descriptors}\" }}"))
        .replace("upstream = \"catalog\"", "upstream = \"legacy\"");
    assert_check_fails_at(&http1, &[], line(&http1), "route.rest.grpc_json", "protocol = \"grpc\"");
}

#[test]
fn check_of_a_missing_file_fails_naming_it() {
    let out = std::process::Command::new(Tollgate::binary())
        .args(["check", "--config", "/nonexistent/tollgate.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/tollgate.toml"));
}

#[test]
fn version_flag_prints_the_package_version() {
    let out = std::process::Command::new(Tollgate::binary()).arg("--version").output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.trim(), format!("tollgate {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn one_worker_thread_is_accepted_and_serves_while_zero_is_rejected() {
    let one = VALID.replace("worker_threads = 2", "worker_threads = 1");
    let (out, _) = run_check(&one, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let zero = VALID.replace("worker_threads = 2", "worker_threads = 0");
    assert_check_fails_at(&zero, &[], 2, "runtime.worker_threads", "between 1 and 1024");

    // And the gateway really runs on a single worker: both protocols still proxy.
    assert_one_worker_serves_every_protocol("");
}

/// Starts a gateway on one runtime worker, with `runtime_lines` added to its
/// `[runtime]` table, and proxies a request through it over every protocol.
fn assert_one_worker_serves_every_protocol(runtime_lines: &str) {
    let backend = Backend::fixed("one worker");
    let tollgate = Tollgate::start_with(&format!(
        "{}{}[runtime]\nworker_threads = 1\n{runtime_lines}\n",
        upstream_toml("b", &[backend.addr], ""),
        route_toml("all", "path_prefix = \"/\"", "b", "")
    ));
    for proto in Proto::ALL {
        let (code, _, body) = curl_proto(proto, &[&tollgate.url("/")]);
        assert_eq!((code, body.as_slice()), (200, &b"one worker"[..]), "{runtime_lines:?}: {proto:?}");
    }
}

#[test]
fn event_gathering_takes_a_bounded_pause_and_the_gateway_serves_with_it_on_or_off() {
    let runtime = |extra: &str| VALID.replace("shutdown_grace = \"5s\"", &format!("shutdown_grace = \"5s\"\n{extra}"));
    assert_check_fails_at(&runtime("gather_events = \"2ms\""), &[], 4, "runtime.gather_events", "at most 1ms");
    assert_check_fails_at(&runtime("gather_events = \"20\""), &[], 4, "runtime.gather_events", "has no unit");
    assert_check_fails_at(&runtime("gather_after_busy = \"15x\""), &[], 4, "runtime.gather_after_busy", "unit `x`");

    // Off, and as eager as it gets (a 200 µs pause after every turn): both serve every protocol.
    assert_one_worker_serves_every_protocol("gather_events = \"0us\"");
    assert_one_worker_serves_every_protocol("gather_events = \"200us\"\ngather_after_busy = \"0us\"");
}

#[test]
fn env_variables_are_expanded_in_strings() {
    let (out, _) = run_check(
        &VALID.replace("\"127.0.0.1:18080\"", "\"${TOLLGATE_TEST_BIND}\""),
        &[("TOLLGATE_TEST_BIND", "127.0.0.1:18080")],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The running gateway binds where the variable says and proxies to the target it names.
    let backend = Backend::fixed("from env");
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = "[[listener]]\nname = \"env\"\nbind = \"${TG_TEST_BIND}\"\n\n[[upstream]]\nname = \"b\"\ntargets = [\"${TG_TEST_TARGET}\"]\n\n[[route]]\nname = \"all\"\nmatch = { path_prefix = \"${TG_TEST_PREFIX}\" }\nupstream = \"b\"\n";
    let tollgate = start_with_env(
        config,
        addr,
        &[
            ("TG_TEST_BIND", &addr.to_string()),
            ("TG_TEST_TARGET", &backend.addr.to_string()),
            ("TG_TEST_PREFIX", "/env/"),
        ],
    );
    let (code, _, body) = curl_full(&[&tollgate.url("/env/x")]);
    assert_eq!((code, body.as_slice()), (200, &b"from env"[..]));
    let (code, _, _) = curl_full(&[&tollgate.url("/other")]);
    assert_eq!(code, 404, "the prefix came from the environment");
}

#[test]
fn a_missing_env_variable_is_an_error_naming_it() {
    let config = VALID.replace("\"127.0.0.1:18080\"", "\"${TOLLGATE_TEST_SURELY_UNSET}\"");
    assert_check_fails_at(
        &config,
        &[],
        11,
        "listener.public.bind",
        "environment variable `TOLLGATE_TEST_SURELY_UNSET` is not set",
    );
    // Running (not just checking) refuses to start on it too.
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "t.toml", config.as_bytes());
    let out = std::process::Command::new(Tollgate::binary()).arg("--config").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TOLLGATE_TEST_SURELY_UNSET"));
}
