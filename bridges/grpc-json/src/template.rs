//! URL path templates of `google.api.http` rules (`google/api/http.proto`):
//! `/v1/{name=shelves/*}/books/{book_id}:publish`, matched against request
//! paths segment by segment, with the variables' values bound to fields.

use crate::error::LoadError;

/// A parsed template: literal and wildcard segments, the variables that
/// cover some of them, and an optional trailing `:verb`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    segments: Vec<Segment>,
    variables: Vec<Variable>,
    verb: Option<String>,
}

/// One `/`-separated part of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// Matches exactly this text.
    Literal(String),
    /// `*`: any one segment.
    One,
    /// `**`: zero or more segments; only last (before the verb).
    Rest,
}

/// `{field.path=segments}`: the request's text over `segments[start..end]`
/// is the value of `field`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Variable {
    field: String,
    start: usize,
    end: usize,
}

/// One variable's value, bound to its field path (`a.b.c`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    pub field: String,
    pub value: String,
}

impl PathTemplate {
    /// Parses `text` per the grammar in `google/api/http.proto`.
    pub fn parse(text: &str) -> Result<Self, LoadError> {
        let bad = |why: &str| LoadError::Template { template: text.to_owned(), why: why.to_owned() };
        let Some(rest) = text.strip_prefix('/') else { return Err(bad("must start with `/`")) };
        let mut template = PathTemplate { segments: Vec::new(), variables: Vec::new(), verb: None };
        let mut chars = rest;
        loop {
            if let Some(inner) = chars.strip_prefix('{') {
                let close = inner.find('}').ok_or_else(|| bad("`{` without `}`"))?;
                let (field, pattern) = match inner[..close].split_once('=') {
                    Some((field, pattern)) => (field, pattern),
                    None => (&inner[..close], "*"),
                };
                if field.is_empty() || !field.split('.').all(is_identifier) {
                    return Err(bad("a variable names a field path such as `a.b`"));
                }
                if template.variables.iter().any(|v| v.field == field) {
                    return Err(bad("a field is bound twice"));
                }
                let start = template.segments.len();
                for part in pattern.split('/') {
                    template.segments.push(segment(part).ok_or_else(|| bad("a variable holds `*`, `**` or literals"))?);
                }
                template.variables.push(Variable { field: field.to_owned(), start, end: template.segments.len() });
                chars = &inner[close + 1..];
            } else {
                let end = chars.find(['/', ':']).unwrap_or(chars.len());
                let part = &chars[..end];
                if part.contains(['{', '}']) {
                    return Err(bad("a variable must be a whole segment"));
                }
                template.segments.push(segment(part).ok_or_else(|| bad("empty segment"))?);
                chars = &chars[end..];
            }
            if let Some(next) = chars.strip_prefix('/') {
                chars = next;
            } else if let Some(verb) = chars.strip_prefix(':') {
                if verb.is_empty() || verb.contains(['/', '{', '}', '*']) {
                    return Err(bad("the verb is one literal"));
                }
                template.verb = Some(verb.to_owned());
                break;
            } else if chars.is_empty() {
                break;
            } else {
                return Err(bad("a variable must be a whole segment"));
            }
        }
        let rest_at = template.segments.iter().position(|s| *s == Segment::Rest);
        if rest_at.is_some_and(|at| at + 1 != template.segments.len()) {
            return Err(bad("`**` may only be the last segment"));
        }
        Ok(template)
    }

    /// The variables' values if `path` (without its query) matches, else `None`.
    pub fn matches(&self, path: &str) -> Option<Vec<Bound>> {
        let mut path = path.strip_prefix('/')?;
        if let Some(verb) = &self.verb {
            path = path.strip_suffix(verb.as_str())?.strip_suffix(':')?;
        }
        let parts: Vec<&str> = if path.is_empty() { Vec::new() } else { path.split('/').collect() };
        let fixed = self.segments.iter().take_while(|s| **s != Segment::Rest).count();
        let open_ended = fixed < self.segments.len();
        if parts.len() < fixed || (!open_ended && parts.len() != fixed) {
            return None;
        }
        for (segment, part) in self.segments.iter().zip(&parts) {
            match segment {
                Segment::Literal(text) if text != part => return None,
                Segment::One if part.is_empty() => return None,
                _ => {}
            }
        }
        let bound = self
            .variables
            .iter()
            .map(|v| {
                let end = if v.end == self.segments.len() && open_ended { parts.len() } else { v.end };
                let text = parts[v.start..end].join("/");
                let value = if end - v.start == 1 { percent_decode(&text, true) } else { percent_decode(&text, false) };
                value.map(|value| Bound { field: v.field.clone(), value })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(bound)
    }

    /// Whether the template ends in a `:verb`.
    pub fn has_verb(&self) -> bool {
        self.verb.is_some()
    }

    /// The field paths this template binds.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.variables.iter().map(|v| v.field.as_str())
    }
}

fn segment(part: &str) -> Option<Segment> {
    match part {
        "" => None,
        "*" => Some(Segment::One),
        "**" => Some(Segment::Rest),
        literal if literal.contains(['*', '{', '}', '=']) => None,
        literal => Some(Segment::Literal(literal.to_owned())),
    }
}

fn is_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Percent-decodes `text` as UTF-8. A value spanning several segments keeps
/// `%2F` encoded, so that its slashes stay told apart from the separators
/// (`google/api/http.proto`, "reserved expansion"). `None` if not UTF-8 or
/// a `%` is not followed by two hex digits.
pub(crate) fn percent_decode(text: &str, decode_slash: bool) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let value = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            if value == b'/' && !decode_slash {
                out.extend_from_slice(&bytes[i..i + 3]);
            } else {
                out.push(value);
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(template: &str, path: &str) -> Option<Vec<(String, String)>> {
        let t = PathTemplate::parse(template).unwrap();
        t.matches(path).map(|b| b.into_iter().map(|b| (b.field, b.value)).collect())
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items.iter().map(|(f, v)| (f.to_string(), v.to_string())).collect()
    }

    #[test]
    fn literals_and_single_segment_variables_match_and_bind() {
        assert_eq!(bound("/v1/messages/{message_id}", "/v1/messages/123"), Some(pairs(&[("message_id", "123")])));
        assert_eq!(bound("/v1/messages/{message_id}", "/v1/messages"), None);
        assert_eq!(bound("/v1/messages/{message_id}", "/v1/messages/1/2"), None);
        assert_eq!(bound("/v1/messages/{message_id}", "/v1/messages/"), None);
        assert_eq!(bound("/v1/messages/{message_id}", "/v2/messages/1"), None);
        assert_eq!(bound("/v1/echo", "/v1/echo"), Some(vec![]));
    }

    #[test]
    fn nested_field_paths_and_segment_patterns_bind_the_covered_text() {
        assert_eq!(
            bound("/v1/{name=shelves/*/books/*}", "/v1/shelves/s1/books/b2"),
            Some(pairs(&[("name", "shelves/s1/books/b2")]))
        );
        assert_eq!(bound("/v1/{name=shelves/*/books/*}", "/v1/shelves/s1/tomes/b2"), None);
        assert_eq!(
            bound("/v1/users/{user.id}/notes/{note.sub.id}", "/v1/users/u/notes/n"),
            Some(pairs(&[("user.id", "u"), ("note.sub.id", "n")]))
        );
    }

    #[test]
    fn double_star_takes_the_rest_including_nothing() {
        assert_eq!(bound("/files/{path=**}", "/files/a/b/c.txt"), Some(pairs(&[("path", "a/b/c.txt")])));
        assert_eq!(bound("/files/{path=**}", "/files"), Some(pairs(&[("path", "")])));
        assert_eq!(bound("/static/**", "/static/x/y"), Some(vec![]));
    }

    #[test]
    fn a_verb_must_be_present_and_is_not_part_of_the_last_variable() {
        assert_eq!(bound("/v1/{name=books/*}:publish", "/v1/books/7:publish"), Some(pairs(&[("name", "books/7")])));
        assert_eq!(bound("/v1/{name=books/*}:publish", "/v1/books/7"), None);
        assert_eq!(bound("/v1/{name=books/*}:publish", "/v1/books/7:unpublish"), None);
    }

    #[test]
    fn values_are_percent_decoded_but_multi_segment_values_keep_encoded_slashes() {
        assert_eq!(bound("/v1/m/{id}", "/v1/m/a%20b%2Fc"), Some(pairs(&[("id", "a b/c")])));
        assert_eq!(bound("/v1/{name=m/*}", "/v1/m/a%2Fb"), Some(pairs(&[("name", "m/a%2Fb")])));
        assert_eq!(bound("/v1/m/{id}", "/v1/m/%zz"), None);
        assert_eq!(bound("/v1/m/{id}", "/v1/m/%ff"), None, "not UTF-8");
    }

    #[test]
    fn malformed_templates_are_refused_with_a_reason() {
        for bad in
            ["v1/x", "/v1/{id", "/v1/{}", "/v1/{a-b}", "/v1/**/x", "/v1/x{id}", "/v1//x", "/v1/{id}:", "/v1/{a}/{a}"]
        {
            let err = PathTemplate::parse(bad).unwrap_err();
            assert!(err.to_string().contains(bad), "{bad}: {err}");
        }
    }
}
