//! Bearer tokens that verified recently, with their claims: a client that
//! sends the same token on every request pays for the signature check once
//! a minute instead of on each request (Envoy's `jwt_cache` does the same).
//!
//! Only tokens that passed verification are stored, so entries cannot be
//! forged; an entry lives until the token expires (plus the policy's
//! leeway) or for [`TTL_SECS`], whichever comes first, which also bounds how
//! long a key removed from a JWKS keeps its tokens accepted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;

/// Longest an entry is trusted.
pub const TTL_SECS: u64 = 60;
/// Entries kept; when full, the cache starts over (simple and bounded).
const CAPACITY: usize = 4096;
/// Longer tokens are not cached (they would make the bound large).
const MAX_TOKEN_BYTES: usize = 4096;

/// Verified tokens and their claims.
#[derive(Debug, Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<Box<str>, Cached>>,
}

#[derive(Debug)]
struct Cached {
    claims: Arc<Value>,
    /// Unix seconds after which the entry is stale.
    until: u64,
}

impl TokenCache {
    /// The claims of `token` if it verified recently and is still valid at `now`.
    pub fn get(&self, token: &str, now: u64) -> Option<Arc<Value>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(token).filter(|c| now <= c.until).map(|c| Arc::clone(&c.claims))
    }

    /// Remembers a token that just verified at `now`.
    pub fn put(&self, token: &str, claims: Arc<Value>, now: u64, leeway: u64) {
        if token.len() > MAX_TOKEN_BYTES {
            return;
        }
        let expires = claims.get("exp").and_then(Value::as_u64).map_or(u64::MAX, |exp| exp.saturating_add(leeway));
        let until = expires.min(now + TTL_SECS);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CAPACITY {
            entries.clear();
        }
        entries.insert(token.into(), Cached { claims, until });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_lasts_until_the_token_expires_plus_leeway_or_the_ttl() {
        let cache = TokenCache::default();
        cache.put("short", Arc::new(serde_json::json!({"exp": 1_000})), 990, 5);
        assert!(cache.get("short", 1_005).is_some());
        assert!(cache.get("short", 1_006).is_none(), "expired tokens are never served from the cache");
        cache.put("long", Arc::new(serde_json::json!({"exp": 100_000})), 1_000, 0);
        assert!(cache.get("long", 1_000 + TTL_SECS).is_some());
        assert!(cache.get("long", 1_001 + TTL_SECS).is_none(), "re-verified after the TTL");
        assert!(cache.get("unknown", 1_000).is_none());
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache = TokenCache::default();
        for i in 0..(CAPACITY + 10) {
            cache.put(&format!("t{i}"), Arc::new(Value::Null), 0, 0);
        }
        assert!(cache.entries.lock().unwrap().len() <= CAPACITY);
        cache.put(&"x".repeat(MAX_TOKEN_BYTES + 1), Arc::new(Value::Null), 0, 0);
        assert!(cache.get(&"x".repeat(MAX_TOKEN_BYTES + 1), 0).is_none());
    }
}
