//! HTTP/JSON ⇄ gRPC transcoding (`grpc_json` routes): curl over HTTP/1.1
//! and h2c against a real grpcio backend serving
//! `fixtures/grpc/catalog.proto`, whose messages the backend builds from
//! the same descriptor set Tollgate loads.

mod common;
mod grpc_support;

use common::core_kit::*;
use common::*;
use grpc_support::*;
use serde_json::json;

fn transcoding_gateway(backend: std::net::SocketAddr) -> Tollgate {
    transcoding_gateway_with(backend, "", "")
}

/// The catalog behind a `grpc_json` route with `route_extra` lines, then `rest` (policies).
fn transcoding_gateway_with(backend: std::net::SocketAddr, route_extra: &str, rest: &str) -> Tollgate {
    let descriptors = catalog_descriptors();
    Tollgate::start_with(&format!(
        "[[upstream]]\nname = \"catalog\"\nprotocol = \"grpc\"\ntargets = [\"{backend}\"]\nconnect_timeout = \"1s\"\n\n\
         [[route]]\nname = \"rest\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"catalog\"\n\
         grpc_json = {{ descriptors = \"{}\", services = [\"shop.v1.Catalog\"] }}\n{route_extra}\n\n{rest}",
        descriptors.display()
    ))
}

/// (HTTP status, headers, body as JSON) of one curl request.
fn call(proto: Proto, args: &[&str]) -> (u16, String, serde_json::Value) {
    let (code, headers, body) = curl_proto(proto, args);
    (code, headers, json(&body))
}

#[test]
fn json_requests_call_the_bound_methods_and_get_json_answers() {
    let backend = GrpcBackend::start_catalog();
    let tollgate = transcoding_gateway(backend.addr);
    for proto in Proto::ALL {
        // A path variable and a query parameter; the client's fields reach the backend as metadata and back.
        let (code, headers, item) = call(proto, &["-H", "x-client: abc", &tollgate.url("/v1/items/7?with_tags=true")]);
        assert_eq!(code, 200, "{proto:?}: {item}");
        assert_eq!(header_value(&headers, "content-type").as_deref(), Some("application/json"), "{proto:?}");
        assert_eq!(header_value(&headers, "x-seen-client").as_deref(), Some("abc"), "{proto:?}");
        assert_eq!(
            item,
            json!({"itemId": "7", "name": "item-7", "price": {"currency": "USD", "cents": "700"}, "tags": ["new"], "kind": "BOOK"})
        );

        // The body fills one field, the path another.
        let (code, _, created) = call(
            proto,
            &[
                "-H",
                "content-type: application/json",
                "-d",
                r#"{"name": "hammer", "kind": "TOOL"}"#,
                &tollgate.url("/v1/shelves/tools/items"),
            ],
        );
        assert_eq!(code, 200, "{proto:?}: {created}");
        assert_eq!(created, json!({"itemId": "100", "name": "hammer", "shelf": "tools", "kind": "TOOL"}));

        // The whole body is the message; an additional binding with a multi-segment variable.
        let (code, _, updated) =
            call(proto, &["-X", "PUT", "-d", r#"{"tags": ["x", "y"]}"#, &tollgate.url("/v1/shelves/s1/items/i2")]);
        assert_eq!(code, 200, "{proto:?}: {updated}");
        assert_eq!(updated, json!({"name": "shelves/s1/items/i2", "tags": ["x", "y"]}));

        // A verb, and only the `response_body` field of the answer.
        let (code, _, price) = call(proto, &[&tollgate.url("/v1/items/3:price")]);
        assert_eq!((code, price), (200, json!({"currency": "EUR", "cents": "30"})), "{proto:?}");

        // The gRPC method path itself takes the whole message as JSON.
        let (code, _, item) = call(proto, &["-d", r#"{"itemId": 5}"#, &tollgate.url("/shop.v1.Catalog/GetItem")]);
        assert_eq!((code, &item["name"]), (200, &json!("item-5")), "{proto:?}: {item}");
    }
}

#[test]
fn a_server_stream_arrives_as_a_json_array() {
    let backend = GrpcBackend::start_catalog();
    let tollgate = transcoding_gateway(backend.addr);
    for proto in Proto::ALL {
        let (code, _, items) = call(proto, &[&tollgate.url("/v1/shelves/garden/items?limit=2&tags=green&tags=wet")]);
        assert_eq!(code, 200, "{proto:?}: {items}");
        assert_eq!(
            items,
            json!([
                {"itemId": "1", "name": "garden-1", "shelf": "garden", "tags": ["green", "wet"]},
                {"itemId": "2", "name": "garden-2", "shelf": "garden", "tags": ["green", "wet"]}
            ])
        );
        let (code, _, empty) = call(proto, &[&tollgate.url("/v1/shelves/garden/items?limit=-1")]);
        assert_eq!((code, empty), (200, json!([])), "{proto:?}");
    }
}

#[test]
fn failed_calls_get_the_http_status_of_their_grpc_status() {
    let backend = GrpcBackend::start_catalog();
    let tollgate = transcoding_gateway(backend.addr);
    for proto in Proto::ALL {
        let (code, _, error) = call(proto, &[&tollgate.url("/v1/items/404")]);
        assert_eq!(code, 404, "{proto:?}: {error}");
        assert_eq!(error, json!({"code": 5, "message": "no item 404 (gone %)"}));

        // A backend answer that is no message of the method's type is the gateway's error.
        let (code, _, error) = call(proto, &[&tollgate.url("/v1/items/500")]);
        assert_eq!((code, &error["error"]), (502, &json!("transcode_bad_response")), "{proto:?}: {error}");

        // A stream that fails before its first message: still a proper status.
        let (code, _, error) = call(proto, &[&tollgate.url("/v1/shelves/g/items?limit=-1&fail_with=14")]);
        assert_eq!(code, 503, "{proto:?}: {error}");
        assert_eq!(error["code"], 14);

        // After messages went out the status is sent: the body is cut off, not closed as if complete.
        let out = curl(&[proto.curl_flag(), &tollgate.url("/v1/shelves/g/items?limit=2&fail_with=14")]);
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{proto:?}: curl took a broken stream as complete: {body}");
        assert!(!body.ends_with(']'), "{proto:?}: {body}");
        if proto == Proto::Http1 {
            // HTTP/2 resets the stream, which may drop frames still queued; HTTP/1.1 has them on the wire.
            assert!(body.starts_with("[{\"itemId\":\"1\""), "{body}");
        }
    }
}

#[test]
fn requests_that_fit_no_rule_or_no_message_are_refused_without_calling_the_backend() {
    let backend = GrpcBackend::start_catalog();
    let tollgate = transcoding_gateway(backend.addr);
    for proto in Proto::ALL {
        let (code, _, error) = call(proto, &[&tollgate.url("/v1/nothing")]);
        assert_eq!((code, &error["error"]), (404, &json!("no_transcoding_rule")), "{proto:?}: {error}");
        let (code, _, error) = call(proto, &["-X", "DELETE", &tollgate.url("/v1/items/7")]);
        assert_eq!(code, 404, "{proto:?}: {error}");

        let (code, _, error) = call(proto, &["-d", r#"{"name": "#, &tollgate.url("/v1/shelves/tools/items")]);
        assert_eq!((code, &error["error"]), (400, &json!("transcode_bad_request")), "{proto:?}: {error}");
        assert!(error["message"].as_str().unwrap().contains("not JSON"), "{error}");
        let (code, _, error) = call(proto, &["-d", r#"{"nmae": "typo"}"#, &tollgate.url("/v1/shelves/tools/items")]);
        assert_eq!(code, 400, "{proto:?}: {error}");
        assert!(error["message"].as_str().unwrap().contains("nmae"), "{error}");
        let (code, _, error) = call(proto, &[&tollgate.url("/v1/items/seven")]);
        assert_eq!(code, 400, "{proto:?}: {error}");
        // A request id names every refusal.
        assert_eq!(error["request_id"].as_str().map(str::len), Some(32), "{error}");
    }
}

#[test]
fn grpc_clients_of_a_transcoding_route_still_pass_through() {
    let backend = GrpcBackend::start_catalog();
    let tollgate = transcoding_gateway(backend.addr);
    // GetItemRequest { item_id: 7 }: field 1, varint 7.
    let (headers, body) = raw_grpc(&tollgate, &[0x08, 0x07], "/shop.v1.Catalog/GetItem", &[]);
    assert_eq!(header_value(&headers, "content-type").as_deref(), Some("application/grpc"), "{headers}");
    assert_eq!(header_value(&headers, "grpc-status").as_deref(), Some("0"), "{headers}");
    // A protobuf Item, framed: item_id 7 first, then the name "item-7".
    assert_eq!(&body[5..7], &[0x08, 0x07], "{body:?}");
    assert!(body.windows(6).any(|w| w == b"item-7"), "{body:?}");
}

#[test]
fn an_unreachable_backend_is_a_json_error() {
    let tollgate = transcoding_gateway(common::transport::free_addr());
    for proto in Proto::ALL {
        let (code, _, error) = call(proto, &[&tollgate.url("/v1/items/1")]);
        assert_eq!((code, &error["error"]), (502, &json!("upstream_unreachable")), "{proto:?}: {error}");
    }
}

#[test]
fn route_policies_apply_to_transcoded_requests_as_to_any_other() {
    let backend = GrpcBackend::start_catalog();
    let tollgate = transcoding_gateway_with(
        backend.addr,
        "policies = [\"keys\"]",
        "[policy.keys]\nkind = \"api_key\"\nheader = \"x-api-key\"\nkeys = { alice = \"alice-key-0123456789\" }\n",
    );
    for proto in Proto::ALL {
        let (code, _, error) = call(proto, &[&tollgate.url("/v1/items/7")]);
        assert_eq!(code, 401, "{proto:?}: {error}");
        let (code, _, item) = call(proto, &["-H", "x-api-key: alice-key-0123456789", &tollgate.url("/v1/items/7")]);
        assert_eq!((code, &item["name"]), (200, &json!("item-7")), "{proto:?}: {item}");
    }
}
