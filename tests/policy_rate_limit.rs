//! `kind = "rate_limit"` against real peers: the in-memory store, and the
//! Redis store with Debian's `redis-server` started by the test — two
//! Tollgate instances sharing one limit, Redis killed mid-test (fail-open,
//! fail-closed, local fallback; one warning per outage) and restarted.
//! Protocol-independent answers are rows in `policy_table.rs`.

mod common;

use std::time::{Duration, Instant};

use common::core_kit::{json, run_check};
use common::rate_kit::{RedisServer, count, statuses};
use common::*;

/// The warning the store logs once per outage.
const OUTAGE: &str = "rate limit store unreachable";
/// The info line it logs when Redis answers again.
const RECOVERED: &str = "rate limit store recovered";

/// A gateway with one catch-all route through `policies` (attached as `attach`).
fn gateway(backend: &Backend, policies: &str, attach: &str) -> Tollgate {
    Tollgate::start_with(&format!(
        "[[upstream]]\nname = \"b\"\ntargets = [\"{}\"]\n\n\
         [[route]]\nname = \"all\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"b\"\npolicies = [\"{attach}\"]\n\n{policies}\n",
        backend.addr
    ))
}

fn urls(tollgate: &Tollgate, n: usize) -> Vec<String> {
    (0..n).map(|i| tollgate.url(&format!("/r{i}"))).collect()
}

#[test]
fn memory_store_counts_down_then_refuses_and_refills_at_the_rate() {
    let backend = Backend::fixed("ok");
    // 1/s with a bucket of 2: two at once, then one a second.
    let tollgate = gateway(&backend, "[policy.rl]\nkind = \"rate_limit\"\nrate = \"1/s\"\nburst = 2\n", "rl");
    let url = tollgate.url("/a");
    let first = curl_full(&[&url]);
    let second = curl_full(&[&url]);
    let third = curl_full(&[&url]);
    assert_eq!((first.0, second.0, third.0), (200, 200, 429), "{}", third.1);
    assert_eq!(header_value(&first.1, "ratelimit-limit").as_deref(), Some("2"));
    assert_eq!(header_value(&first.1, "ratelimit-remaining").as_deref(), Some("1"));
    assert_eq!(header_value(&second.1, "ratelimit-remaining").as_deref(), Some("0"));
    assert_eq!(header_value(&third.1, "ratelimit-remaining").as_deref(), Some("0"));
    assert_eq!(header_value(&third.1, "retry-after").as_deref(), Some("1"), "sub-second waits round up");
    // Full again once the next cell (under a second away) and one more (a second) have dripped back.
    assert_eq!(header_value(&third.1, "ratelimit-reset").as_deref(), Some("2"));
    let body = json(&third.2);
    assert_eq!(body["error"], "rate_limited");
    assert!(body["message"].as_str().unwrap().contains("1/s"), "{body}");
    assert_eq!(backend.requests().len(), 2, "a refused request never reaches the backend");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(curl_full(&[&url]).0, 200, "the bucket refills at the rate");
}

#[test]
fn header_keys_have_their_own_buckets_and_fall_back_to_the_client_ip() {
    let backend = Backend::fixed("ok");
    let tollgate = gateway(
        &backend,
        "[policy.rl]\nkind = \"rate_limit\"\nkey = \"header:x-tenant\"\nrate = \"1/h\"\nburst = 2\n",
        "rl",
    );
    let all = urls(&tollgate, 3);
    // With the log: a CI run once got no HTTP answer at all here (curl's 000, three times).
    assert_eq!(statuses(&["-H", "x-tenant: a"], &all), [200, 200, 429], "{}", tollgate.log());
    assert_eq!(statuses(&["-H", "x-tenant: b"], &all), [200, 200, 429], "tenant b has its own bucket");
    // Without the header the client IP is the key: a third bucket.
    assert_eq!(statuses(&[], &all), [200, 200, 429]);
    // A 10 KB value is hashed into a short key, still a bucket of its own.
    let long = format!("x-tenant: {}", "z".repeat(10_000));
    assert_eq!(statuses(&["-H", &long], &all), [200, 200, 429]);
}

#[test]
fn route_key_shares_one_bucket_per_route_across_clients() {
    let backend = Backend::fixed("ok");
    let tollgate = gateway(&backend, "[policy.rl]\nkind = \"rate_limit\"\nkey = \"route\"\nrate = \"2/h\"\n", "rl");
    let url = tollgate.url("/x");
    assert_eq!(statuses(&["--interface", "127.0.0.1"], std::slice::from_ref(&url)), [200]);
    assert_eq!(statuses(&["--interface", "127.0.0.2"], std::slice::from_ref(&url)), [200]);
    assert_eq!(statuses(&["--interface", "127.0.0.3"], &[url]), [429], "both clients spent the route's budget");
}

#[test]
fn two_instances_sharing_one_redis_enforce_one_combined_limit() {
    let redis = RedisServer::start();
    let backend = Backend::fixed("ok");
    let policy = format!(
        // A generous Redis timeout: on a loaded machine the default 100 ms can lapse and
        // fail open, which is tested on its own; this test is about the shared count.
        "[policy.shared]\nkind = \"rate_limit\"\nrate = \"100/h\"\nstore = \"redis\"\nredis = \"{}\"\nredis_timeout = \"3s\"\n",
        redis.url()
    );
    let a = gateway(&backend, &policy, "shared");
    let b = gateway(&backend, &policy, "shared");
    // 150 requests, alternating instances in batches of 10.
    let mut allowed = 0;
    let mut refused = 0;
    for round in 0..15 {
        let instance = if round % 2 == 0 { &a } else { &b };
        for status in statuses(&[], &urls(instance, 10)) {
            match status {
                200 => allowed += 1,
                429 => refused += 1,
                other => panic!("unexpected status {other}; log A:\n{}\nlog B:\n{}", a.log(), b.log()),
            }
        }
    }
    assert!((98..=102).contains(&allowed), "allowed {allowed} of 150 across both instances");
    assert_eq!(allowed + refused, 150);
    assert_eq!(backend.requests().len(), allowed);
    // The numbers both instances report come from the same bucket.
    let (status, headers, _) = curl_full(&[&b.url("/last")]);
    assert_eq!(status, 429);
    assert_eq!(header_value(&headers, "ratelimit-limit").as_deref(), Some("100"));
    assert_eq!(header_value(&headers, "ratelimit-remaining").as_deref(), Some("0"));
    assert!(!a.log().contains(OUTAGE) && !b.log().contains(OUTAGE));
}

/// Sends requests until `done` says yes about a status (or `limit` passes).
fn until(tollgate: &Tollgate, limit: Duration, done: impl Fn(u16, &str) -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let (status, headers, _) = curl_full(&[&tollgate.url("/probe")]);
        if done(status, &headers) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn redis_outage_fails_open_with_one_warning_and_recovers_when_redis_returns() {
    let mut redis = RedisServer::start();
    let backend = Backend::fixed("ok");
    let tollgate = gateway(
        &backend,
        &format!(
            "[policy.rl]\nkind = \"rate_limit\"\nrate = \"1/h\"\nburst = 3\nstore = \"redis\"\nredis = \"{}\"\nredis_timeout = \"1s\"\n",
            redis.url()
        ),
        "rl",
    );
    assert_eq!(statuses(&[], &urls(&tollgate, 4)), [200, 200, 200, 429], "Redis enforces the limit");

    redis.kill();
    let started = Instant::now();
    let during = statuses(&[], &urls(&tollgate, 30));
    assert!(during.iter().all(|s| *s == 200), "fail-open (the default) lets requests through: {during:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "requests do not wait out Redis: {:?}", started.elapsed());
    let (_, headers, _) = curl_full(&[&tollgate.url("/open")]);
    assert!(header_value(&headers, "ratelimit-limit").is_none(), "no numbers to report while Redis is down");
    // Probes keep failing for a while; still one warning.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(statuses(&[], &urls(&tollgate, 5)), [200; 5]);
    let log = tollgate.log();
    assert_eq!(count(&log, OUTAGE), 1, "exactly one warning per outage; log:\n{log}");
    assert!(log.contains("on_redis_error=\"allow\"") || log.contains("on_redis_error=allow"), "{log}");

    redis.restart();
    // Redis came back empty: the limit applies again from a full bucket.
    assert!(
        until(&tollgate, Duration::from_secs(8), |_, h| header_value(h, "ratelimit-limit").as_deref() == Some("3")),
        "Redis is used again after it returns; log:\n{}",
        tollgate.log()
    );
    assert_eq!(statuses(&[], &urls(&tollgate, 4)).last(), Some(&429), "the limit is enforced again");
    let log = tollgate.log();
    assert_eq!(count(&log, RECOVERED), 1, "{log}");
    assert_eq!(count(&log, OUTAGE), 1, "{log}");
}

#[test]
fn redis_outage_fails_closed_with_503_when_configured() {
    let mut redis = RedisServer::start();
    let backend = Backend::fixed("ok");
    let tollgate = gateway(
        &backend,
        &format!(
            "[policy.rl]\nkind = \"rate_limit\"\nrate = \"100/s\"\nstore = \"redis\"\nredis = \"{}\"\non_redis_error = \"deny\"\n",
            redis.url()
        ),
        "rl",
    );
    assert_eq!(curl_full(&[&tollgate.url("/a")]).0, 200);
    redis.kill();
    let seen = backend.requests().len();
    for _ in 0..5 {
        let (status, headers, body) = curl_full(&[&tollgate.url("/a")]);
        assert_eq!(status, 503, "{headers}");
        assert_eq!(header_value(&headers, "retry-after").as_deref(), Some("1"));
        assert_eq!(json(&body)["error"], "rate_limit_unavailable");
    }
    assert_eq!(backend.requests().len(), seen, "nothing reaches the backend while closed");
    assert_eq!(count(&tollgate.log(), OUTAGE), 1, "{}", tollgate.log());
}

#[test]
fn redis_outage_falls_back_to_a_local_limit_when_configured() {
    let mut redis = RedisServer::start();
    let backend = Backend::fixed("ok");
    let tollgate = gateway(
        &backend,
        &format!(
            "[policy.rl]\nkind = \"rate_limit\"\nrate = \"1/h\"\nburst = 2\nstore = \"redis\"\nredis = \"{}\"\non_redis_error = \"local\"\n",
            redis.url()
        ),
        "rl",
    );
    assert_eq!(statuses(&[], &urls(&tollgate, 1)), [200]);
    redis.kill();
    // The instance's own bucket (fresh) applies: 2 more, then 429.
    assert_eq!(statuses(&[], &urls(&tollgate, 3)), [200, 200, 429]);
    assert_eq!(count(&tollgate.log(), OUTAGE), 1);
}

#[test]
fn unreachable_redis_at_startup_is_one_outage_not_a_startup_failure() {
    let backend = Backend::fixed("ok");
    let nothing_there = free_port();
    let tollgate = gateway(
        &backend,
        &format!(
            "[policy.rl]\nkind = \"rate_limit\"\nrate = \"1/h\"\nstore = \"redis\"\nredis = \"redis://127.0.0.1:{nothing_there}\"\n"
        ),
        "rl",
    );
    assert_eq!(statuses(&[], &urls(&tollgate, 10)), [200; 10]);
    assert_eq!(count(&tollgate.log(), OUTAGE), 1, "{}", tollgate.log());
}

#[test]
fn bad_rate_limit_configs_name_the_line_and_key() {
    let base = "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:1\"\n\n";
    let cases: &[(&str, &str, &str)] = &[
        ("[policy.rl]\nkind = \"rate_limit\"\nrate = \"100/d\"\n", ":7: policy.rl.rate", "unit `d`"),
        ("[policy.rl]\nkind = \"rate_limit\"\nrate = \"fast\"\n", ":7: policy.rl.rate", "not a rate"),
        ("[policy.rl]\nkind = \"rate_limit\"\nrate = \"1/s\"\nkey = \"ip\"\n", ":8: policy.rl.key", "\"header:NAME\""),
        ("[policy.rl]\nkind = \"rate_limit\"\nrate = \"1/s\"\nburst = 0\n", ":8: policy.rl.burst", "between 1"),
        (
            "[policy.rl]\nkind = \"rate_limit\"\nrate = \"1/s\"\nstore = \"redis\"\n",
            ":8: policy.rl.redis",
            "needs redis",
        ),
        (
            "[policy.rl]\nkind = \"rate_limit\"\nrate = \"1/s\"\nstore = \"disk\"\n",
            ":8: policy.rl.store",
            "not a store",
        ),
        ("[policy.rl]\nkind = \"rate_limit\"\nrate = \"1/s\"\nredis = \"redis://x\"\n", ":8: policy.rl.redis", "store"),
        (
            "[policy.rl]\nkind = \"rate_limit\"\nrate = \"1/s\"\nstore = \"redis\"\nredis = \"mysql://x\"\n",
            ":9: policy.rl.redis",
            "not a Redis URL",
        ),
        (
            "[policy.rl]\nkind = \"rate_limit\"\nrate = \"1/s\"\nstore = \"redis\"\nredis = \"redis://x\"\non_redis_error = \"panic\"\n",
            ":10: policy.rl.on_redis_error",
            "\"local\"",
        ),
        ("[policy.rl]\nkind = \"rate_limit\"\nrate = \"1/s\"\nbrust = 3\n", ":8: policy.rl", "brust"),
        ("[policy.rl]\nkind = \"rate_limit\"\n", "policy.rl", "rate"),
    ];
    for (policy, location, words) in cases {
        let (out, path) = run_check(&format!("{base}{policy}"), &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{policy} should be rejected");
        assert!(stderr.contains(&path), "names the file: {stderr}");
        assert!(stderr.contains(location), "{policy}: expected `{location}` in: {stderr}");
        assert!(stderr.contains(words), "{policy}: expected `{words}` in: {stderr}");
    }
    let good = "[policy.rl]\nkind = \"rate_limit\"\nkey = \"claim:sub\"\nrate = \"${RATE}\"\nburst = 5\nstore = \"redis\"\n\
                redis = \"redis://127.0.0.1:6379\"\nredis_timeout = \"50ms\"\non_redis_error = \"deny\"\n";
    let (out, _) = run_check(&format!("{base}{good}"), &[("RATE", "10/m")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
