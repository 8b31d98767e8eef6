//! What can go wrong: loading a descriptor set (config time) and
//! transcoding one request or response (request time).

use std::fmt;

/// A descriptor set or one of its `google.api.http` rules that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError {
    /// The bytes are not a `FileDescriptorSet`, or its files do not link.
    Descriptors(String),
    /// A listed service is not in the set.
    NoSuchService(String),
    /// A path template that does not follow `google/api/http.proto`'s grammar.
    Template { template: String, why: String },
    /// A rule names a field the method's message does not have.
    NoSuchField { method: String, field: String },
    /// A rule on a client- or bidi-streaming method: one JSON body is one message.
    ClientStreaming(String),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Descriptors(why) => write!(f, "not a usable descriptor set: {why}"),
            Self::NoSuchService(name) => write!(f, "no service `{name}` in the descriptor set"),
            Self::Template { template, why } => write!(f, "path template `{template}`: {why}"),
            Self::NoSuchField { method, field } => write!(f, "{method}: its message has no field `{field}`"),
            Self::ClientStreaming(method) => {
                write!(f, "{method}: client-streaming methods cannot be called with one JSON body")
            }
        }
    }
}

impl std::error::Error for LoadError {}

/// Why a request or a response could not be transcoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TranscodeError {
    /// The client's JSON (body, path or query value) does not fit the message.
    BadRequest(String),
    /// The backend's message does not decode as the method's output type.
    BadResponse(String),
}

impl fmt::Display for TranscodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadRequest(why) => write!(f, "request does not fit the method's message: {why}"),
            Self::BadResponse(why) => write!(f, "backend message does not decode: {why}"),
        }
    }
}

impl std::error::Error for TranscodeError {}
