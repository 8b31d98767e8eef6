//! Config errors that name the file, the line and the key.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One thing wrong with a config file, located as precisely as we can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the error is in.
    pub file: PathBuf,
    /// 1-based line, when the error has a location.
    pub line: Option<usize>,
    /// Dotted key path, e.g. `route.api.upstream`.
    pub key: String,
    /// What is wrong, in words a user can act on.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}: {}", self.file.display(), line, self.key, self.message),
            None => write!(f, "{}: {}: {}", self.file.display(), self.key, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Turns byte spans into line numbers for one source text.
pub struct SourceMap<'a> {
    pub file: &'a Path,
    pub text: &'a str,
}

impl SourceMap<'_> {
    /// 1-based line of a byte offset.
    pub fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
    }

    /// An error at `span` about `key`.
    pub fn error(&self, span: Range<usize>, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            line: Some(self.line_of(span.start)),
            key: key.into(),
            message: message.into(),
        }
    }

    /// An error with no useful location (e.g. a missing section).
    pub fn error_at_file(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError { file: self.file.to_path_buf(), line: None, key: key.into(), message: message.into() }
    }

    /// Converts a TOML syntax or shape error, naming the key the span covers.
    pub fn toml_error(&self, err: &toml::de::Error) -> ConfigError {
        let message = err.message().trim().to_string();
        match err.span() {
            Some(span) => {
                let snippet = self.text.get(span.clone()).unwrap_or("").trim();
                let line_start = self.text[..span.start.min(self.text.len())].rfind('\n').map_or(0, |i| i + 1);
                let prefix = self.text.get(line_start..span.start).unwrap_or("").trim_end();
                // A span followed by `=` is a key (an unknown field); one after
                // an `=` on its line is (part of) a value: a wrong type or bad syntax.
                let is_key = self.text.get(span.end..).is_some_and(|rest| rest.trim_start().starts_with('='));
                let key = if let Some((assigned, _)) = prefix.rsplit_once('=').filter(|_| !is_key) {
                    // Name the key the value is assigned to.
                    let mut names = assigned.trim_end().rsplit(|c: char| c.is_whitespace() || c == '{' || c == ',');
                    names.next().unwrap_or("").trim_matches('"').to_string()
                } else if !snippet.is_empty() && snippet.len() <= 64 && !snippet.contains('\n') {
                    snippet.trim_matches(|c| c == '"' || c == '[' || c == ']').to_string()
                } else {
                    self.key_before(span.start)
                };
                let key = match self.inline_table_before(span.start) {
                    Some(inline) if inline != key => format!("{inline}.{key}"),
                    _ => key,
                };
                let key = match self.table_before(span.start) {
                    Some(table) if !key.starts_with(&table) => format!("{table}.{key}"),
                    _ => key,
                };
                self.error(span, key, message)
            }
            None => self.error_at_file("config", message),
        }
    }

    /// The `[table]` or `[[array]]` header a byte offset sits under, so an
    /// unknown key is reported as `listener.bnid` rather than `bnid`.
    fn table_before(&self, offset: usize) -> Option<String> {
        let before = &self.text[..offset.min(self.text.len())];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        if self.text[line_start..].trim_start().starts_with('[') {
            return None; // the span is the header itself
        }
        before.lines().rev().find_map(|line| {
            let line = line.trim();
            let inner = line.strip_prefix("[[").and_then(|l| l.split_once("]]")).map(|(t, _)| t);
            let inner = inner.or_else(|| line.strip_prefix('[').and_then(|l| l.split_once(']')).map(|(t, _)| t));
            inner.map(|t| t.trim().to_string())
        })
    }

    /// For a span inside `name = { ... }` on one line, that `name`.
    fn inline_table_before(&self, offset: usize) -> Option<String> {
        let before = &self.text[..offset.min(self.text.len())];
        let line = &before[before.rfind('\n').map_or(0, |i| i + 1)..];
        let (key, rest) = line.split_once('=')?;
        rest.contains('{').then(|| key.trim().to_string())
    }

    /// Best-effort key name for a span that covers a whole value: the text
    /// before `=` on the line where the span starts.
    fn key_before(&self, offset: usize) -> String {
        let start = self.text[..offset.min(self.text.len())].rfind('\n').map_or(0, |i| i + 1);
        let line = self.text[start..].lines().next().unwrap_or("");
        match line.split_once('=') {
            Some((k, _)) => k.trim().to_string(),
            None => line.trim().trim_matches(|c| c == '[' || c == ']').to_string(),
        }
    }
}
