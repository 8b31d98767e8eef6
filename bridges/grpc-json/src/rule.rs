//! Which HTTP requests call which gRPC method: the `google.api.http` rules
//! in a descriptor set (`google/api/http.proto`), plus `POST
//! /package.Service/Method` for every method, as gRPC's own path.

use http::Method;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, MethodDescriptor, Value};

use crate::error::LoadError;
use crate::template::PathTemplate;

/// The extension on `google.protobuf.MethodOptions` that carries the rule.
const HTTP_RULE_EXTENSION: &str = "google.api.http";

/// How the request body maps onto the method's input message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyMapping {
    /// No body: the message comes from the path and the query.
    None,
    /// `body: "*"`: the body is the whole message (path values win).
    Whole,
    /// `body: "field"`: the body is that field's value.
    Field(String),
}

/// One HTTP method + path template bound to one gRPC method.
#[derive(Debug, Clone)]
pub struct Rule {
    pub http_method: Method,
    pub template: PathTemplate,
    pub method: MethodDescriptor,
    /// `/package.Service/Method`, the gRPC request path.
    pub grpc_path: String,
    pub body: BodyMapping,
    /// `response_body: "field"`: only that field of the output is returned.
    pub response_body: Option<String>,
}

/// Every rule of `services` (all services in the pool when empty), in
/// declaration order: annotated bindings first (those ending in a verb
/// before the others), then the gRPC paths.
pub fn rules(pool: &DescriptorPool, services: &[String]) -> Result<Vec<Rule>, LoadError> {
    let selected = if services.is_empty() {
        pool.services().collect::<Vec<_>>()
    } else {
        services
            .iter()
            .map(|name| pool.get_service_by_name(name).ok_or_else(|| LoadError::NoSuchService(name.clone())))
            .collect::<Result<Vec<_>, _>>()?
    };
    let extension = pool.get_extension_by_name(HTTP_RULE_EXTENSION);
    let mut annotated = Vec::new();
    let mut grpc_paths = Vec::new();
    for service in selected {
        for method in service.methods() {
            let grpc_path = format!("/{}/{}", service.full_name(), method.name());
            let http_rule = extension.as_ref().and_then(|ext| {
                let options = method.options();
                options.has_extension(ext).then(|| options.get_extension(ext).as_message().cloned()).flatten()
            });
            if method.is_client_streaming() {
                if http_rule.is_some() {
                    return Err(LoadError::ClientStreaming(method.full_name().to_owned()));
                }
                continue;
            }
            if let Some(http_rule) = http_rule {
                add_bindings(&http_rule, &method, &grpc_path, &mut annotated)?;
            }
            grpc_paths.push(Rule {
                http_method: Method::POST,
                template: PathTemplate::parse(&grpc_path)?,
                method,
                grpc_path,
                body: BodyMapping::Whole,
                response_body: None,
            });
        }
    }
    // `/v1/items/7:price` would also match `/v1/items/{item_id}` (a colon
    // may be part of a value): templates with a verb are tried first.
    annotated.sort_by_key(|rule| !rule.template.has_verb());
    annotated.extend(grpc_paths);
    Ok(annotated)
}

/// The rule in `http_rule` and its `additional_bindings` (one level deep, as the spec allows).
fn add_bindings(
    http_rule: &DynamicMessage,
    method: &MethodDescriptor,
    grpc_path: &str,
    out: &mut Vec<Rule>,
) -> Result<(), LoadError> {
    out.push(binding(http_rule, method, grpc_path)?);
    if let Some(extra) = http_rule.get_field_by_name("additional_bindings").as_deref().and_then(Value::as_list) {
        for rule in extra.iter().filter_map(Value::as_message) {
            out.push(binding(rule, method, grpc_path)?);
        }
    }
    Ok(())
}

fn binding(http_rule: &DynamicMessage, method: &MethodDescriptor, grpc_path: &str) -> Result<Rule, LoadError> {
    let text = |name: &str| -> String {
        http_rule.get_field_by_name(name).as_deref().and_then(Value::as_str).unwrap_or_default().to_owned()
    };
    let mut pattern = None;
    for (name, verb) in [
        ("get", Method::GET),
        ("put", Method::PUT),
        ("post", Method::POST),
        ("delete", Method::DELETE),
        ("patch", Method::PATCH),
    ] {
        if http_rule.has_field_by_name(name) {
            pattern = Some((verb, text(name)));
        }
    }
    if http_rule.has_field_by_name("custom")
        && let Some(custom) = http_rule.get_field_by_name("custom").as_deref().and_then(Value::as_message)
    {
        let field = |name: &str| custom.get_field_by_name(name).as_deref().and_then(Value::as_str).map(str::to_owned);
        let kind = field("kind").unwrap_or_default();
        let verb = Method::from_bytes(kind.as_bytes()).map_err(|_| LoadError::Template {
            template: field("path").unwrap_or_default(),
            why: format!("custom method `{kind}` is not an HTTP method"),
        })?;
        pattern = Some((verb, field("path").unwrap_or_default()));
    }
    let Some((http_method, path)) = pattern else {
        return Err(LoadError::Template {
            template: String::new(),
            why: format!("{}: the rule sets no get, put, post, delete, patch or custom pattern", method.full_name()),
        });
    };
    let template = PathTemplate::parse(&path)?;
    let input = method.input();
    for field in template.fields() {
        check_field_path(&input, field, method)?;
    }
    let body = match text("body").as_str() {
        "" => BodyMapping::None,
        "*" => BodyMapping::Whole,
        field => {
            check_field_path(&input, field, method)?;
            BodyMapping::Field(field.to_owned())
        }
    };
    let response_body = match text("response_body") {
        field if field.is_empty() => None,
        field => {
            check_field_path(&method.output(), &field, method)?;
            Some(field)
        }
    };
    Ok(Rule { http_method, template, method: method.clone(), grpc_path: grpc_path.to_owned(), body, response_body })
}

/// `a.b.c` names a field of `message`, each step but the last a message field.
fn check_field_path(message: &MessageDescriptor, path: &str, method: &MethodDescriptor) -> Result<(), LoadError> {
    let missing = || LoadError::NoSuchField { method: method.full_name().to_owned(), field: path.to_owned() };
    let mut current = message.clone();
    let mut steps = path.split('.').peekable();
    while let Some(step) = steps.next() {
        let field = current.get_field_by_name(step).ok_or_else(missing)?;
        if steps.peek().is_some() {
            current = field.kind().as_message().cloned().ok_or_else(missing)?;
        }
    }
    Ok(())
}
