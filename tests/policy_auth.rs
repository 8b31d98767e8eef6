//! Authentication and authorization policies against real peers: a JWKS
//! served by a loopback backend (rotation, rate-limited refetches), every key
//! type (RSA from openssl, P-256/P-384/Ed25519 from rcgen), algorithm
//! confusion, an `https://` JWKS behind a CA made here (and one it does not
//! trust), API keys from a file of digests, authz on consumers, and mTLS
//! with curl presenting certificates from a CA made here.
//! The per-protocol basics of each kind are rows in policy_table.rs.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::core_kit::run_check;
use common::transport::write_cert;
use common::*;
use hyper::Response;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

/// Protocols the cleartext cases run over (curl flags).
const CLEARTEXT: [&str; 2] = ["--http1.1", "--http2-prior-knowledge"];

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// base64url without padding (RFC 7515 §2), for JWK members.
fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A signing key and the public JWK that verifies it.
#[derive(Clone)]
struct TestKey {
    alg: Algorithm,
    kid: String,
    encoding: EncodingKey,
    jwk: serde_json::Value,
}

impl TestKey {
    /// RSA 2048 from openssl (ring cannot generate RSA keys).
    fn rsa(dir: &Path, kid: &str) -> TestKey {
        let pem = dir.join(format!("{kid}.pem"));
        let ok = Command::new("openssl")
            .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
            .arg(&pem)
            .output()
            .expect("openssl is installed")
            .status
            .success();
        assert!(ok, "openssl genpkey failed");
        let modulus = Command::new("openssl").args(["rsa", "-noout", "-modulus", "-in"]).arg(&pem).output().unwrap();
        let hex = String::from_utf8(modulus.stdout).unwrap();
        let hex = hex.trim().trim_start_matches("Modulus=");
        let n: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        TestKey {
            alg: Algorithm::RS256,
            kid: kid.into(),
            encoding: EncodingKey::from_rsa_pem(&std::fs::read(&pem).unwrap()).unwrap(),
            jwk: serde_json::json!({"kty": "RSA", "kid": kid, "use": "sig", "n": b64url(&n), "e": "AQAB"}),
        }
    }

    /// An EC (P-256 or P-384) or Ed25519 key from rcgen.
    fn rcgen(kid: &str, alg: Algorithm) -> TestKey {
        let sig = match alg {
            Algorithm::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Algorithm::ES384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            Algorithm::EdDSA => &rcgen::PKCS_ED25519,
            other => panic!("{other:?} is not made by rcgen here"),
        };
        let pair = rcgen::KeyPair::generate_for(sig).unwrap();
        let raw = pair.public_key_raw();
        let (encoding, jwk) = match alg {
            Algorithm::EdDSA => (
                EncodingKey::from_ed_der(&pair.serialize_der()),
                serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64url(raw)}),
            ),
            _ => {
                let half = (raw.len() - 1) / 2; // 0x04 || X || Y
                let crv = if alg == Algorithm::ES256 { "P-256" } else { "P-384" };
                (
                    EncodingKey::from_ec_der(&pair.serialize_der()),
                    serde_json::json!({"kty": "EC", "crv": crv, "kid": kid,
                        "x": b64url(&raw[1..1 + half]), "y": b64url(&raw[1 + half..])}),
                )
            }
        };
        TestKey { alg, kid: kid.into(), encoding, jwk }
    }

    /// A token signed with this key, naming its kid.
    fn sign(&self, claims: serde_json::Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding).unwrap()
    }
}

fn jwks(keys: &[&TestKey]) -> String {
    serde_json::json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

fn claims(sub: &str) -> serde_json::Value {
    serde_json::json!({"sub": sub, "iss": "https://issuer.test", "aud": "tollgate", "exp": unix_now() + 600})
}

/// A gateway with one cleartext listener routing everything to `backend`
/// through `attach`, with `policies` appended.
fn gateway(backend: &Backend, policies: &str, attach: &[&str]) -> Tollgate {
    let attach: Vec<String> = attach.iter().map(|p| format!("\"{p}\"")).collect();
    Tollgate::start_with(&format!(
        "[[upstream]]\nname = \"echo\"\ntargets = [\"{}\"]\n\n\
         [[route]]\nname = \"all\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"echo\"\npolicies = [{}]\n\n{policies}\n",
        backend.addr,
        attach.join(", ")
    ))
}

/// GET `path` with `Authorization: Bearer token` over `flag`: (status, headers).
fn get_with_token(tollgate: &Tollgate, flag: &str, path: &str, token: &str) -> (u16, String) {
    let auth = format!("Authorization: Bearer {token}");
    let (status, headers, _) = curl_full(&[flag, "-H", &auth, &tollgate.url(path)]);
    (status, headers)
}

const WHO: &str = "[policy.who]\nkind = \"headers\"\nrequest_set = { x-principal = \"{principal}\" }\n";

#[test]
fn jwks_url_rotation_picks_up_a_new_kid_and_unknown_kids_cannot_hammer_the_issuer() {
    let dir = tempfile::tempdir().unwrap();
    let old = TestKey::rsa(dir.path(), "2024-old");
    let new = TestKey::rsa(dir.path(), "2025-new");
    let served = Arc::new(Mutex::new(jwks(&[&old])));
    let document = Arc::clone(&served);
    let idp = Backend::start(move |_req| {
        let body = document.lock().unwrap().clone();
        async move { Response::new(full(body)) }
    });
    let backend = Backend::fixed("ok");
    let policy = format!(
        "[policy.jwt]\nkind = \"jwt\"\njwks_url = \"http://{}/.well-known/jwks.json\"\n\
         jwks_min_refresh = \"1s\"\njwks_refresh = \"1h\"\nissuer = \"https://issuer.test\"\naudience = \"tollgate\"\n\n{WHO}",
        idp.addr
    );
    let tollgate = gateway(&backend, &policy, &["jwt", "who"]);

    for flag in CLEARTEXT {
        let (status, headers) = get_with_token(&tollgate, flag, "/", &old.sign(claims("alice")));
        assert_eq!(status, 200, "{headers}\n{}", tollgate.log());
    }
    assert_eq!(backend.requests().last().unwrap().headers["x-principal"], "alice");
    assert_eq!(idp.requests().len(), 1, "one fetch serves every request until something changes");
    assert_eq!(idp.requests()[0].uri, "/.well-known/jwks.json");

    // The issuer rotates: the new key replaces the old one.
    *served.lock().unwrap() = jwks(&[&new]);
    std::thread::sleep(Duration::from_millis(1100));
    for flag in CLEARTEXT {
        let (status, headers) = get_with_token(&tollgate, flag, "/", &new.sign(claims("bob")));
        assert_eq!(status, 200, "a new kid is fetched at once: {headers}\n{}", tollgate.log());
    }
    assert_eq!(idp.requests().len(), 2);
    assert_eq!(backend.requests().last().unwrap().headers["x-principal"], "bob");

    // Tokens naming kids the issuer never published: refused, and at most
    // one fetch per jwks_min_refresh however many arrive.
    let before = idp.requests().len();
    let forged = [TestKey::rsa(dir.path(), "forged"), TestKey::rcgen("forged", Algorithm::ES256)];
    for i in 0..20 {
        let key = TestKey { kid: format!("made-up-{i}"), ..forged[i % 2].clone() };
        let (status, headers) = get_with_token(&tollgate, "--http1.1", "/", &key.sign(claims("mallory")));
        assert_eq!(status, 401, "{headers}");
        assert_eq!(
            header_value(&headers, "www-authenticate").as_deref(),
            Some(
                "Bearer realm=\"tollgate\", error=\"invalid_token\", error_description=\"no key to verify the token\""
            )
        );
    }
    assert!(idp.requests().len() <= before + 1, "{} fetches for 20 unknown kids", idp.requests().len() - before);

    // The retired key no longer verifies.
    let (status, _) = get_with_token(&tollgate, "--http1.1", "/", &old.sign(claims("alice")));
    assert_eq!(status, 401);
}

#[test]
fn jwks_url_down_at_start_is_retried_later() {
    let idp_port = free_port();
    let backend = Backend::fixed("ok");
    let policy = format!(
        "[policy.jwt]\nkind = \"jwt\"\njwks_url = \"http://127.0.0.1:{idp_port}/jwks\"\njwks_min_refresh = \"500ms\"\n"
    );
    let tollgate = gateway(&backend, &policy, &["jwt"]);
    let key = TestKey::rcgen("late", Algorithm::EdDSA);
    let (status, _) = get_with_token(&tollgate, "--http1.1", "/", &key.sign(claims("a")));
    assert_eq!(status, 401, "no keys yet");
    assert!(tollgate.wait_for_log("JWKS fetch failed", Duration::from_secs(5)), "{}", tollgate.log());

    let document = jwks(&[&key]);
    let _idp = common::transport::backend_on(format!("127.0.0.1:{idp_port}").parse().unwrap(), move |_req| {
        let body = document.clone();
        async move { Response::new(full(body)) }
    });
    std::thread::sleep(Duration::from_millis(600));
    let (status, headers) = get_with_token(&tollgate, "--http1.1", "/", &key.sign(claims("a")));
    assert_eq!(status, 200, "{headers}\n{}", tollgate.log());
}

#[test]
fn every_key_type_verifies_from_a_jwks_file_and_time_issuer_audience_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let keys = [
        TestKey::rsa(dir.path(), "rsa"),
        TestKey::rcgen("p256", Algorithm::ES256),
        TestKey::rcgen("p384", Algorithm::ES384),
        TestKey::rcgen("ed", Algorithm::EdDSA),
    ];
    let file = write_file(dir.path(), "jwks.json", jwks(&keys.iter().collect::<Vec<_>>()).as_bytes());
    let backend = Backend::fixed("ok");
    let policy = format!(
        "[policy.jwt]\nkind = \"jwt\"\njwks_file = \"{}\"\nissuer = \"https://issuer.test\"\naudience = \"tollgate\"\n\
         leeway = \"5s\"\nforward_claims = {{ sub = \"x-user\" }}\n",
        file.display()
    );
    let tollgate = gateway(&backend, &policy, &["jwt"]);
    for key in &keys {
        for flag in CLEARTEXT {
            let (status, headers) =
                get_with_token(&tollgate, flag, "/", &key.sign(claims(&format!("user-{}", key.kid))));
            assert_eq!(status, 200, "{:?} over {flag}: {headers}\n{}", key.alg, tollgate.log());
            assert_eq!(backend.requests().last().unwrap().headers["x-user"], format!("user-{}", key.kid).as_str());
        }
    }

    let now = unix_now();
    let rsa = &keys[0];
    let cases = [
        (
            serde_json::json!({"sub": "a", "iss": "https://issuer.test", "aud": "tollgate", "exp": now - 30}),
            "token expired",
        ),
        (
            serde_json::json!({"sub": "a", "iss": "https://issuer.test", "aud": "tollgate", "exp": now + 600, "nbf": now + 60}),
            "token not valid yet",
        ),
        (
            serde_json::json!({"sub": "a", "iss": "https://other.test", "aud": "tollgate", "exp": now + 600}),
            "token issuer not accepted",
        ),
        (
            serde_json::json!({"sub": "a", "iss": "https://issuer.test", "aud": ["x", "y"], "exp": now + 600}),
            "token audience not accepted",
        ),
        (
            serde_json::json!({"sub": "a", "iss": "https://issuer.test", "exp": now + 600}),
            "token lacks a required claim",
        ),
    ];
    for (claims, reason) in cases {
        let (status, headers) = get_with_token(&tollgate, "--http2-prior-knowledge", "/", &rsa.sign(claims));
        assert_eq!(status, 401, "{reason}: {headers}");
        let challenge = header_value(&headers, "www-authenticate").unwrap();
        assert!(challenge.ends_with(&format!("error_description=\"{reason}\"")), "{challenge}");
    }
    // Within the leeway an expired token still passes (clock skew).
    let skewed = serde_json::json!({"sub": "a", "iss": "https://issuer.test", "aud": "tollgate", "exp": now - 1});
    assert_eq!(get_with_token(&tollgate, "--http1.1", "/", &rsa.sign(skewed)).0, 200);

    // An ES384 header on a P-256 key: the key is bound to ES256 only.
    let mut header = Header::new(Algorithm::ES384);
    header.kid = Some("p256".into());
    let p384_signed = jsonwebtoken::encode(&header, &claims("a"), &keys[2].encoding).unwrap();
    assert_eq!(get_with_token(&tollgate, "--http1.1", "/", &p384_signed).0, 401);
    // A signature from another key under a known kid.
    let impostor = TestKey { kid: "p256".into(), ..TestKey::rcgen("x", Algorithm::ES256) };
    let (status, headers) = get_with_token(&tollgate, "--http1.1", "/", &impostor.sign(claims("a")));
    assert_eq!(status, 401);
    assert!(header_value(&headers, "www-authenticate").unwrap().contains("token signature does not verify"));
}

#[test]
fn alg_confusion_an_hs256_token_keyed_with_the_rsa_public_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = TestKey::rsa(dir.path(), "rsa");
    let public_pem = Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(dir.path().join("rsa.pem"))
        .output()
        .unwrap()
        .stdout;
    let file = write_file(dir.path(), "jwks.json", jwks(&[&rsa]).as_bytes());
    let backend = Backend::fixed("ok");
    // HS256 explicitly allowed too: the RSA key is still bound to RS*/PS* only.
    for allow in ["", "algorithms = [\"RS256\", \"HS256\"]\n"] {
        let policy = format!("[policy.jwt]\nkind = \"jwt\"\njwks_file = \"{}\"\n{allow}", file.display());
        let tollgate = gateway(&backend, &policy, &["jwt"]);
        let good = rsa.sign(serde_json::json!({"sub": "a", "exp": unix_now() + 600}));
        assert_eq!(get_with_token(&tollgate, "--http1.1", "/", &good).0, 200, "{}", tollgate.log());
        for secret in [public_pem.as_slice(), rsa.jwk["n"].as_str().unwrap().as_bytes()] {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some("rsa".into());
            let forged = jsonwebtoken::encode(
                &header,
                &serde_json::json!({"sub": "admin", "exp": unix_now() + 600}),
                &EncodingKey::from_secret(secret),
            )
            .unwrap();
            for flag in CLEARTEXT {
                let (status, headers) = get_with_token(&tollgate, flag, "/", &forged);
                assert_eq!(status, 401, "alg confusion must fail ({allow}): {headers}");
            }
        }
    }
    assert_eq!(backend.requests().len(), 2, "only the two genuine tokens reached the backend");
}

#[test]
fn api_keys_from_a_file_of_digests_with_authz_on_consumers() {
    let dir = tempfile::tempdir().unwrap();
    let digest = |key: &str| {
        let out = Command::new("sh").arg("-c").arg(format!("printf %s '{key}' | sha256sum")).output().unwrap();
        String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_string()
    };
    let file = write_file(
        dir.path(),
        "keys",
        format!(
            "# consumer:sha256(key)\nalice:{}\n\nbob:{}\n",
            digest("alice-secret-key-01"),
            digest("bob-secret-key-0002")
        )
        .as_bytes(),
    );
    let backend = Backend::fixed("ok");
    let policies = format!(
        "[policy.keys]\nkind = \"api_key\"\nquery = \"key\"\nkeys_file = \"{}\"\nstrip_key = true\n\n\
         [policy.only-alice]\nkind = \"authz\"\nallow_consumers = [\"alice\"]\n\n{WHO}",
        file.display()
    );
    let tollgate = gateway(&backend, &policies, &["only-alice", "keys", "who"]);
    for flag in CLEARTEXT {
        let (status, headers, _) = curl_full(&[flag, &tollgate.url("/items?key=alice-secret-key-01&page=2")]);
        assert_eq!(status, 200, "{headers}\n{}", tollgate.log());
        let seen = backend.requests().pop().unwrap();
        assert_eq!(seen.uri, "/items?page=2", "the key is removed from the query");
        assert_eq!(seen.headers["x-principal"], "alice");

        let (status, _, body) = curl_full(&[flag, &tollgate.url("/items?key=bob-secret-key-0002")]);
        assert_eq!(status, 403, "bob is authenticated but not allowed");
        assert!(String::from_utf8_lossy(&body).contains("\"forbidden\""));

        let (status, headers, body) = curl_full(&[flag, &tollgate.url("/items?key=carol-guessing-000")]);
        assert_eq!(status, 401);
        assert_eq!(
            header_value(&headers, "www-authenticate").as_deref(),
            Some("ApiKey realm=\"tollgate\", query=\"key\"")
        );
        let (_, _, missing_body) = curl_full(&[flag, &tollgate.url("/items")]);
        let message = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).unwrap()["message"].clone();
        assert_eq!(message(&body), message(&missing_body), "missing and wrong keys look the same");
    }

    // A key file line that is not a digest is a config error naming the line.
    let bad = write_file(dir.path(), "bad-keys", b"alice:not-hex\n");
    let (out, _) = run_check(
        &format!(
            "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:1\"\n\n[policy.keys]\nkind = \"api_key\"\nkeys_file = \"{}\"\n",
            bad.display()
        ),
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(":7:") && stderr.contains("policy.keys.keys_file") && stderr.contains("line 1"),
        "{stderr}"
    );
}

/// A CA and client certificates it signs, written as PEM files.
struct Pki {
    ca_path: std::path::PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let ca_path = write_file(dir, &format!("{name}.pem"), cert.pem().as_bytes());
        Pki { ca_path, issuer: rcgen::Issuer::new(params, key) }
    }

    /// A server certificate for `name` (DNS SAN): (certificate, key) in DER.
    fn server(
        &self,
        name: &str,
    ) -> (rustls::pki_types::CertificateDer<'static>, rustls::pki_types::PrivateKeyDer<'static>) {
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let der = rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());
        (cert.der().clone(), der.into())
    }

    /// A client certificate `CN=cn,O=Acme` with a DNS and a URI SAN: (cert path, key path).
    fn client(&self, dir: &Path, cn: &str) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(vec![format!("{cn}.example")]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(format!("spiffe://acme/{cn}").try_into().unwrap()));
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "Acme");
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let cert_path = write_file(dir, &format!("{cn}.crt"), cert.pem().as_bytes());
        let key_path = write_file(dir, &format!("{cn}.key"), key.serialize_pem().as_bytes());
        (cert_path.display().to_string(), key_path.display().to_string())
    }
}

/// An HTTPS server on loopback (hyper behind tokio-rustls, ALPN `http/1.1`)
/// answering every request with one document; stops when dropped.
struct HttpsIdp {
    addr: SocketAddr,
    /// Requests that got through the handshake.
    fetches: Arc<AtomicUsize>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl HttpsIdp {
    /// Serves `document` with a `localhost` certificate signed by `pki`.
    fn start(pki: &Pki, document: String) -> HttpsIdp {
        let (cert, key) = pki.server("localhost");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let fetches = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&fetches);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let serve = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else { continue };
                        let (acceptor, counter, document) = (acceptor.clone(), Arc::clone(&counter), document.clone());
                        tokio::spawn(async move {
                            // A client that does not trust us aborts here.
                            let Ok(tls) = acceptor.accept(stream).await else { return };
                            let service = hyper::service::service_fn(move |_req| {
                                counter.fetch_add(1, Ordering::SeqCst);
                                let body = document.clone();
                                async move { Ok::<_, std::convert::Infallible>(Response::new(full(body))) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                                .await;
                        });
                    }
                };
                tokio::select! {
                    _ = serve => {},
                    _ = rx => {},
                }
            });
        });
        HttpsIdp { addr, fetches, _shutdown: tx }
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

#[test]
fn jwks_over_https_is_verified_against_jwks_ca_and_an_untrusted_server_means_401_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "idp-ca");
    let rogue = Pki::new(dir.path(), "other-ca");
    let key = TestKey::rcgen("idp-1", Algorithm::ES256);
    let idp = HttpsIdp::start(&pki, jwks(&[&key]));
    let backend = Backend::fixed("ok");
    let policy = |ca: &Path| {
        format!(
            "[policy.jwt]\nkind = \"jwt\"\njwks_url = \"https://localhost:{}/jwks.json\"\njwks_ca = \"{}\"\n\
             jwks_timeout = \"3s\"\nissuer = \"https://issuer.test\"\naudience = \"tollgate\"\n\n{WHO}",
            idp.addr.port(),
            ca.display()
        )
    };

    let tollgate = gateway(&backend, &policy(&pki.ca_path), &["jwt", "who"]);
    for flag in CLEARTEXT {
        let (status, headers) = get_with_token(&tollgate, flag, "/", &key.sign(claims("alice")));
        assert_eq!(status, 200, "{headers}\n{}", tollgate.log());
        assert_eq!(backend.requests().last().unwrap().headers["x-principal"], "alice");
    }
    // Another key under the same kid: the served key does not verify it.
    let impostor = TestKey { kid: "idp-1".into(), ..TestKey::rcgen("x", Algorithm::ES256) };
    let (status, headers) = get_with_token(&tollgate, "--http1.1", "/", &impostor.sign(claims("mallory")));
    assert_eq!(status, 401, "{headers}");
    assert!(header_value(&headers, "www-authenticate").unwrap().contains("token signature does not verify"));
    assert_eq!(idp.fetches(), 1, "one fetch over TLS serves every request");
    assert_eq!(backend.requests().len(), 2);
    drop(tollgate);

    // A CA that did not sign the IdP's certificate: the handshake fails, no
    // key is ever loaded, every token is refused quickly and the reason is logged.
    let tollgate = gateway(&backend, &policy(&rogue.ca_path), &["jwt"]);
    let started = Instant::now();
    let (status, headers) = get_with_token(&tollgate, "--http1.1", "/", &key.sign(claims("alice")));
    assert_eq!(status, 401, "{headers}\n{}", tollgate.log());
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    assert!(tollgate.wait_for_log("JWKS fetch failed", Duration::from_secs(5)), "{}", tollgate.log());
    assert!(tollgate.log().contains("TLS handshake failed"), "{}", tollgate.log());
    assert_eq!(idp.fetches(), 1, "nothing was served to the client that does not trust the IdP");
    assert_eq!(backend.requests().len(), 2);

    // A jwks_ca that cannot be read is a config error naming line and key.
    let (out, _) = run_check(
        "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:1\"\n\n[policy.jwt]\nkind = \"jwt\"\n\
         jwks_url = \"https://localhost/jwks.json\"\njwks_ca = \"/nonexistent/ca.pem\"\n",
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(":8:") && stderr.contains("policy.jwt.jwks_ca") && stderr.contains("/nonexistent/ca.pem"),
        "{stderr}"
    );
}

#[test]
fn mtls_require_and_request_modes_with_curl_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "test-ca");
    let rogue = Pki::new(dir.path(), "rogue-ca");
    let alice = pki.client(dir.path(), "alice");
    let mallory = rogue.client(dir.path(), "mallory");
    let server = write_cert(dir.path(), "gw", "localhost", &["localhost"]);
    let backend = Backend::fixed("ok");
    let strict: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let lenient: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let tls = |mode: &str| {
        format!(
            "tls = {{ cert = \"{}\", key = \"{}\", client_auth = {{ ca = \"{}\", mode = \"{mode}\" }} }}",
            server.cert.display(),
            server.key.display(),
            pki.ca_path.display()
        )
    };
    let config = format!(
        "[[listener]]\nname = \"strict\"\nbind = \"{strict}\"\n{}\n\n\
         [[listener]]\nname = \"lenient\"\nbind = \"{lenient}\"\n{}\n\n\
         [[upstream]]\nname = \"echo\"\ntargets = [\"{}\"]\n\n\
         [[route]]\nname = \"secure\"\nmatch = {{ path_prefix = \"/secure\" }}\nupstream = \"echo\"\npolicies = [\"clients\", \"who\"]\n\n\
         [[route]]\nname = \"open\"\nmatch = {{ path_prefix = \"/open\" }}\nupstream = \"echo\"\n\n\
         [policy.clients]\nkind = \"mtls\"\nforward_subject = \"x-client-subject\"\nforward_sans = \"x-client-san\"\n\n{WHO}",
        tls("require"),
        tls("request"),
        backend.addr
    );
    let tollgate = Tollgate::start(&config, strict);
    let call = |addr: SocketAddr, flag: &str, path: &str, cert: Option<&(String, String)>| -> u16 {
        let url = format!("https://localhost:{}{path}", addr.port());
        let resolve = format!("localhost:{}:127.0.0.1", addr.port());
        let mut args = vec![flag, "-k", "--max-time", "5", "--resolve", &resolve, "-H", "x-client-subject: CN=forged"];
        if let Some((c, k)) = cert {
            args.extend(["--cert", c.as_str(), "--key", k.as_str()]);
        }
        args.push(&url);
        curl_full(&args).0
    };

    for flag in ["--http1.1", "--http2"] {
        // require: a certificate from our CA gets in, and is what the backend hears about.
        assert_eq!(call(strict, flag, "/secure", Some(&alice)), 200, "{}", tollgate.log());
        let seen = backend.requests().pop().unwrap();
        assert_eq!(seen.headers["x-client-subject"], "CN=alice,O=Acme", "the client's forged copy is replaced");
        assert_eq!(seen.headers["x-client-san"], "alice.example,spiffe://acme/alice");
        assert_eq!(seen.headers["x-principal"], "alice");
        // require: no certificate, or one from another CA, fails the handshake.
        assert_eq!(call(strict, flag, "/open", None), 0);
        assert_eq!(call(strict, flag, "/open", Some(&mallory)), 0);

        // request: anyone connects; the mtls policy guards its routes.
        assert_eq!(call(lenient, flag, "/open", None), 200);
        assert_eq!(call(lenient, flag, "/secure", None), 403);
        assert_eq!(call(lenient, flag, "/secure", Some(&alice)), 200);
        assert_eq!(backend.requests().pop().unwrap().headers["x-principal"], "alice");
        // A certificate that is sent is still verified.
        assert_eq!(call(lenient, flag, "/open", Some(&mallory)), 0);
    }
    let reached = backend.requests().iter().filter(|r| r.uri.starts_with("/secure")).count();
    assert_eq!(reached, 4, "only alice's requests to /secure reached the backend");

    // A missing CA file is a config error naming the line.
    let (out, _) = run_check(
        &format!(
            "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:1\"\ntls = {{ cert = \"{}\", key = \"{}\", client_auth = {{ ca = \"/nonexistent/ca.pem\" }} }}\n",
            server.cert.display(),
            server.key.display()
        ),
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains(":4:") && stderr.contains("client_auth.ca"), "{stderr}");
}
