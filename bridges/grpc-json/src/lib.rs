//! HTTP/JSON ⇄ gRPC transcoding, as Envoy's `grpc_json_transcoder` does it:
//! given a descriptor set (`protoc --include_imports --descriptor_set_out`),
//! a JSON request to a path bound by a method's `google.api.http` rule (or
//! `POST /package.Service/Method`) becomes one protobuf message for that
//! method, and the method's answer becomes JSON again: one object for a
//! unary call, a JSON array for a server stream. Protobuf's JSON mapping
//! (field names in lowerCamelCase, or as declared, on the way in) comes from
//! `prost-reflect`.
//!
//! Pure translation, no I/O: the core reads the body, calls the backend and
//! feeds the answer's frames through [`MessageReader`].

mod error;
mod frame;
mod rule;
mod status;
mod template;

use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, SerializeOptions,
};
use serde_json::{Map, Value as Json};

pub use error::{LoadError, TranscodeError};
pub use frame::{MessageReader, frame_message};
pub use status::{decode_grpc_message, error_body, http_status};

use rule::{BodyMapping, Rule};
use template::{Bound, percent_decode};

/// The rules of one descriptor set, built once at config load and shared by
/// every request of the routes that use it.
#[derive(Debug, Clone)]
pub struct Transcoder {
    rules: Arc<[Rule]>,
}

/// A request matched to its gRPC method, with the values its path bound.
/// Owns what it needs, so a streamed answer can keep it.
#[derive(Debug, Clone)]
pub struct Call {
    rules: Arc<[Rule]>,
    index: usize,
    bound: Vec<Bound>,
}

impl Transcoder {
    /// Reads an encoded `FileDescriptorSet` and the rules of `services`
    /// (every service in the set when empty).
    pub fn from_descriptor_set(bytes: &[u8], services: &[String]) -> Result<Self, LoadError> {
        let pool = DescriptorPool::decode(bytes).map_err(|e| LoadError::Descriptors(e.to_string()))?;
        if pool.services().next().is_none() {
            return Err(LoadError::Descriptors("it defines no service".into()));
        }
        Ok(Self { rules: rule::rules(&pool, services)?.into() })
    }

    /// The method `method` + `path` (without the query) calls, if any rule binds them.
    pub fn find(&self, method: &http::Method, path: &str) -> Option<Call> {
        self.rules.iter().enumerate().filter(|(_, r)| r.http_method == method).find_map(|(index, rule)| {
            let bound = rule.template.matches(path)?;
            Some(Call { rules: Arc::clone(&self.rules), index, bound })
        })
    }

    /// How many bindings the set has, every method's gRPC path included.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether the set bound nothing (never true for a loaded set: every method has its gRPC path).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

impl Call {
    fn rule(&self) -> &Rule {
        &self.rules[self.index]
    }

    /// `/package.Service/Method`.
    pub fn grpc_path(&self) -> &str {
        &self.rule().grpc_path
    }

    /// The answer is a stream of messages, sent on as a JSON array.
    pub fn server_streaming(&self) -> bool {
        self.rule().method.is_server_streaming()
    }

    /// The method's input message, framed for gRPC, made from the JSON
    /// `body`, then the query's `field.path=value` pairs (those naming no
    /// field are ignored), then the path's values, each overriding the last.
    pub fn request_message(&self, body: &[u8], query: Option<&str>) -> Result<Bytes, TranscodeError> {
        let bad = |why: String| TranscodeError::BadRequest(why);
        let input = self.rule().method.input();
        let body_json = || -> Result<Json, TranscodeError> {
            serde_json::from_slice(body).map_err(|e| bad(format!("body is not JSON: {e}")))
        };
        let mut root = match &self.rule().body {
            BodyMapping::None if !body.iter().all(u8::is_ascii_whitespace) => {
                return Err(bad("this method takes no request body".into()));
            }
            BodyMapping::None => Map::new(),
            BodyMapping::Whole if body.iter().all(u8::is_ascii_whitespace) => Map::new(),
            BodyMapping::Whole => match body_json()? {
                Json::Object(map) => map,
                _ => return Err(bad("body must be a JSON object".into())),
            },
            BodyMapping::Field(field) => Map::from_iter([(field.clone(), body_json()?)]),
        };
        for (name, value) in query_pairs(query.unwrap_or(""))? {
            // A parameter naming no field is ignored, as are those the body or the path set.
            let Some(field) = FieldPath::resolve(&input, &name) else { continue };
            let path = field.proto_path();
            let in_body = match &self.rule().body {
                BodyMapping::Whole => true,
                BodyMapping::Field(f) => {
                    path.strip_prefix(f.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
                }
                BodyMapping::None => false,
            };
            if !in_body && !self.bound.iter().any(|b| b.field == path) {
                field.set(&mut root, value, true);
            }
        }
        for bound in &self.bound {
            let field =
                FieldPath::resolve(&input, &bound.field).ok_or_else(|| bad(format!("no field `{}`", bound.field)))?;
            field.set(&mut root, bound.value.clone(), false);
        }
        let message = DynamicMessage::deserialize(input, Json::Object(root)).map_err(|e| bad(e.to_string()))?;
        Ok(frame_message(&message.encode_to_vec()))
    }

    /// One backend message as JSON (only `response_body`'s field when the rule names one).
    pub fn response_json(&self, message: &[u8]) -> Result<Vec<u8>, TranscodeError> {
        let output = self.rule().method.output();
        let decoded =
            DynamicMessage::decode(output, message).map_err(|e| TranscodeError::BadResponse(e.to_string()))?;
        let bad = |e: serde_json::Error| TranscodeError::BadResponse(e.to_string());
        match &self.rule().response_body {
            None => serde_json::to_vec(&decoded).map_err(bad),
            Some(field) => {
                // Defaults included, so that the chosen field is there even when empty.
                let options = SerializeOptions::new().skip_default_fields(false);
                let whole = decoded.serialize_with_options(serde_json::value::Serializer, &options).map_err(bad)?;
                let json_name = decoded.descriptor().get_field_by_name(field).map(|f| f.json_name().to_owned());
                let value = json_name.and_then(|n| whole.get(&n).cloned()).unwrap_or(Json::Null);
                serde_json::to_vec(&value).map_err(bad)
            }
        }
    }
}

/// `a=1&b.c=x%20y`: decoded pairs (`+` is a space, as in HTML forms).
fn query_pairs(query: &str) -> Result<Vec<(String, String)>, TranscodeError> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |text: &str| {
                percent_decode(&text.replace('+', " "), true)
                    .ok_or_else(|| TranscodeError::BadRequest(format!("query `{pair}` is not percent-encoded UTF-8")))
            };
            Ok((decode(name)?, decode(value)?))
        })
        .collect()
}

/// A field reached through nested messages (`a.b.c`), resolved against the
/// message's descriptor.
struct FieldPath(Vec<FieldDescriptor>);

impl FieldPath {
    /// `path`'s fields, each step named by its proto or its JSON name;
    /// `None` if a step is no field, or a step before the last no message.
    fn resolve(message: &MessageDescriptor, path: &str) -> Option<Self> {
        let mut current = message.clone();
        let mut fields = Vec::new();
        let mut steps = path.split('.').peekable();
        while let Some(step) = steps.next() {
            let field = current.get_field_by_name(step).or_else(|| current.get_field_by_json_name(step))?;
            if steps.peek().is_some() {
                current = field.kind().as_message()?.clone();
            }
            fields.push(field);
        }
        Some(Self(fields))
    }

    /// The path in proto names, as templates and `body` name fields.
    fn proto_path(&self) -> String {
        self.0.iter().map(FieldDescriptor::name).collect::<Vec<_>>().join(".")
    }

    /// Sets the field in `root`, the JSON of the message, to `text` as the
    /// JSON its type expects, under proto names: a value the JSON had
    /// under the JSON name of the same field is replaced (or, for a message
    /// on the way, kept and moved). A repeated field collects values when
    /// `append`, else is replaced.
    fn set(&self, root: &mut Map<String, Json>, text: String, append: bool) {
        let mut current = root;
        for (i, field) in self.0.iter().enumerate() {
            let key = field.name();
            if field.json_name() != key
                && let Some(aliased) = current.remove(field.json_name())
            {
                current.entry(key.to_owned()).or_insert(aliased);
            }
            if i + 1 == self.0.len() {
                let value = text_to_json(&field.kind(), text);
                match current.get_mut(key) {
                    Some(Json::Array(items)) if field.is_list() && append => items.push(value),
                    _ if field.is_list() => {
                        current.insert(key.to_owned(), Json::Array(vec![value]));
                    }
                    _ => {
                        current.insert(key.to_owned(), value);
                    }
                }
                return;
            }
            let next = current.entry(key.to_owned()).or_insert_with(|| Json::Object(Map::new()));
            if !next.is_object() {
                *next = Json::Object(Map::new());
            }
            current = match next {
                Json::Object(next) => next,
                _ => return, // made an object just above
            };
        }
    }
}

/// A path or query value as the JSON the field's type expects: booleans
/// and 32-bit numbers as JSON literals when they parse, everything else as
/// a string, which protobuf's JSON mapping accepts for 64-bit numbers,
/// enums, bytes (base64) and the well-known types; the deserializer then
/// says what does not fit.
fn text_to_json(kind: &Kind, text: String) -> Json {
    match kind {
        Kind::Bool => match text.as_str() {
            "true" => Json::Bool(true),
            "false" => Json::Bool(false),
            _ => Json::String(text),
        },
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 | Kind::Uint32 | Kind::Fixed32 | Kind::Double | Kind::Float => {
            match serde_json::from_str::<serde_json::Number>(&text) {
                Ok(number) => Json::Number(number),
                Err(_) => Json::String(text),
            }
        }
        Kind::Enum(_) => match text.parse::<i32>() {
            Ok(number) => Json::from(number),
            Err(_) => Json::String(text),
        },
        _ => Json::String(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;
    use prost_reflect::Value;

    /// `fixtures/grpc/catalog.proto`'s descriptor set (see that file for how it is made).
    const CATALOG: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/grpc/catalog.pb"));

    fn catalog() -> Transcoder {
        Transcoder::from_descriptor_set(CATALOG, &["shop.v1.Catalog".to_owned()]).unwrap()
    }

    fn pool() -> DescriptorPool {
        DescriptorPool::decode(CATALOG).unwrap()
    }

    /// The message `call` makes, decoded back, as JSON with proto field names.
    fn sent(call: &Call, body: &str, query: Option<&str>) -> Result<Json, TranscodeError> {
        let framed = call.request_message(body.as_bytes(), query)?;
        assert_eq!(framed[0], 0, "not compressed");
        assert_eq!(u32::from_be_bytes(framed[1..5].try_into().unwrap()) as usize, framed.len() - 5);
        let message = DynamicMessage::decode(call.rule().method.input(), &framed[5..]).unwrap();
        let options = SerializeOptions::new().use_proto_field_name(true);
        Ok(message.serialize_with_options(serde_json::value::Serializer, &options).unwrap())
    }

    fn find(method: Method, path: &str) -> Call {
        catalog().find(&method, path).unwrap_or_else(|| panic!("no rule for {method} {path}"))
    }

    #[test]
    fn annotated_bindings_and_grpc_paths_find_their_methods() {
        let t = catalog();
        let cases = [
            (Method::GET, "/v1/items/7", "/shop.v1.Catalog/GetItem"),
            (Method::GET, "/v1/shelves/s1/items", "/shop.v1.Catalog/ListItems"),
            (Method::POST, "/v1/shelves/s1/items", "/shop.v1.Catalog/CreateItem"),
            (Method::PATCH, "/v1/items/9", "/shop.v1.Catalog/UpdateItem"),
            (Method::PUT, "/v1/shelves/s1/items/i2", "/shop.v1.Catalog/UpdateItem"),
            (Method::GET, "/v1/items/7:price", "/shop.v1.Catalog/GetPrice"),
            (Method::POST, "/shop.v1.Catalog/GetItem", "/shop.v1.Catalog/GetItem"),
        ];
        for (method, path, grpc) in cases {
            let call = t.find(&method, path).unwrap_or_else(|| panic!("{method} {path}"));
            assert_eq!(call.grpc_path(), grpc, "{method} {path}");
        }
        assert!(t.find(&Method::DELETE, "/v1/items/7").is_none());
        assert!(t.find(&Method::GET, "/v1/nothing").is_none());
        // Client streaming takes more than one JSON body: not offered.
        assert!(t.find(&Method::POST, "/shop.v1.Catalog/Upload").is_none());
        assert!(t.find(&Method::GET, "/v1/shelves/s1/items").unwrap().server_streaming());
    }

    #[test]
    fn path_values_and_query_parameters_fill_the_message_by_field_type() {
        let call = find(Method::GET, "/v1/items/7");
        assert_eq!(
            sent(&call, "", Some("with_tags=true")).unwrap(),
            serde_json::json!({"item_id": "7", "with_tags": true})
        );
        // JSON names work too; a parameter naming no field is ignored.
        assert_eq!(sent(&call, "", Some("withTags=false&utm=x")).unwrap(), serde_json::json!({"item_id": "7"}));
        let err = sent(&call, "", Some("with_tags=maybe")).unwrap_err();
        assert!(matches!(err, TranscodeError::BadRequest(_)), "{err}");

        let list = find(Method::GET, "/v1/shelves/tools%20and%20more/items");
        assert_eq!(
            sent(&list, "", Some("limit=2&tags=a&tags=b%26c&tags=d+e")).unwrap(),
            serde_json::json!({"shelf": "tools and more", "limit": 2, "tags": ["a", "b&c", "d e"]})
        );
        assert!(sent(&list, "", Some("limit=lots")).is_err());
        // The path wins over the query for a field both set, by either of its names.
        assert_eq!(sent(&list, "", Some("shelf=other")).unwrap(), serde_json::json!({"shelf": "tools and more"}));
        assert_eq!(sent(&call, "", Some("itemId=3&item_id=4")).unwrap(), serde_json::json!({"item_id": "7"}));
        // An int64 out of range is refused, not wrapped.
        assert!(sent(&find(Method::GET, "/v1/items/99999999999999999999"), "", None).is_err());
    }

    #[test]
    fn a_body_fills_its_field_or_the_whole_message_and_the_path_wins() {
        let create = find(Method::POST, "/v1/shelves/tools/items");
        assert_eq!(
            sent(&create, r#"{"name": "hammer", "kind": "TOOL", "price": {"currency": "EUR", "cents": 1250}}"#, None)
                .unwrap(),
            serde_json::json!({"shelf": "tools", "item": {"name": "hammer", "kind": "TOOL", "price": {"currency": "EUR", "cents": "1250"}}})
        );
        let update = find(Method::PUT, "/v1/shelves/s1/items/i2");
        assert_eq!(
            sent(&update, r#"{"name": "ignored", "itemId": "5", "tags": ["x"]}"#, None).unwrap(),
            serde_json::json!({"item_id": "5", "name": "shelves/s1/items/i2", "tags": ["x"]})
        );
        // The path wins over the body also when the body names the field by its JSON name.
        let patch = find(Method::PATCH, "/v1/items/9");
        assert_eq!(
            sent(&patch, r#"{"itemId": "5", "name": "x"}"#, Some("itemId=3&name=q")).unwrap(),
            serde_json::json!({"item_id": "9", "name": "x"})
        );
        // A query parameter for a field the body carries is ignored.
        assert_eq!(
            sent(&create, r#"{"name": "saw"}"#, Some("item.name=x&itemId=1")).unwrap(),
            serde_json::json!({"shelf": "tools", "item": {"name": "saw"}})
        );
        // An empty body is an empty message.
        assert_eq!(sent(&find(Method::POST, "/shop.v1.Catalog/GetItem"), "", None).unwrap(), serde_json::json!({}));
    }

    #[test]
    fn bodies_that_do_not_fit_are_bad_requests() {
        let create = find(Method::POST, "/v1/shelves/tools/items");
        for body in [r#"{"name": "#, r#"{"nmae": "typo"}"#, r#"{"kind": "SPOON"}"#, r#"{"name": 5}"#, "[]"] {
            let err = sent(&create, body, None).unwrap_err();
            assert!(matches!(err, TranscodeError::BadRequest(_)), "{body}: {err}");
        }
        let whole = find(Method::PATCH, "/v1/items/1");
        assert!(sent(&whole, "[1]", None).unwrap_err().to_string().contains("JSON object"));
        let get = find(Method::GET, "/v1/items/7");
        assert!(sent(&get, r#"{"itemId": 1}"#, None).unwrap_err().to_string().contains("no request body"));
    }

    #[test]
    fn answers_become_json_or_just_the_response_body_field() {
        let pool = pool();
        let item = pool.get_message_by_name("shop.v1.Item").unwrap();
        let money = pool.get_message_by_name("shop.v1.Money").unwrap();
        let mut price = DynamicMessage::new(money);
        price.set_field_by_name("currency", Value::String("EUR".into()));
        price.set_field_by_name("cents", Value::I64(70));
        let mut answer = DynamicMessage::new(item);
        answer.set_field_by_name("item_id", Value::I64(7));
        answer.set_field_by_name("kind", Value::EnumNumber(1));
        answer.set_field_by_name("price", Value::Message(price));
        let bytes = answer.encode_to_vec();

        let json: Json =
            serde_json::from_slice(&find(Method::GET, "/v1/items/7").response_json(&bytes).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"itemId": "7", "kind": "BOOK", "price": {"currency": "EUR", "cents": "70"}})
        );
        let price: Json =
            serde_json::from_slice(&find(Method::GET, "/v1/items/7:price").response_json(&bytes).unwrap()).unwrap();
        assert_eq!(price, serde_json::json!({"currency": "EUR", "cents": "70"}));
        let err = find(Method::GET, "/v1/items/7").response_json(b"\xff\xff\xff").unwrap_err();
        assert!(matches!(err, TranscodeError::BadResponse(_)), "{err}");
    }

    #[test]
    fn unusable_descriptor_sets_and_services_are_load_errors() {
        assert!(matches!(Transcoder::from_descriptor_set(b"not protobuf \xff", &[]), Err(LoadError::Descriptors(_))));
        let err = Transcoder::from_descriptor_set(CATALOG, &["shop.v1.Nope".into()]).unwrap_err();
        assert_eq!(err, LoadError::NoSuchService("shop.v1.Nope".into()));
        // No list: every service in the set.
        assert!(Transcoder::from_descriptor_set(CATALOG, &[]).unwrap().len() >= 7);
    }
}
