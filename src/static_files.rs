//! Static content for `static_dir` routes, served by tower-http's `ServeDir`
//! (range requests, conditional GETs, content types, index.html).

use std::convert::Infallible;
use std::path::Path;

use http::{Request, Response};
use tower::ServiceExt;
use tower_http::services::ServeDir;

use crate::body::{self, Body};

/// A directory served under a route.
#[derive(Clone, Debug)]
pub struct StaticFiles {
    dir: ServeDir,
}

impl StaticFiles {
    pub fn new(dir: &Path) -> Self {
        Self { dir: ServeDir::new(dir).append_index_html_on_directories(true) }
    }

    /// Serves the file the (already rewritten) request path names.
    pub fn serve(&self, req: Request<Body>) -> impl Future<Output = Response<Body>> + Send + 'static {
        let dir = self.dir.clone();
        async move {
            // ServeDir's future trips rustc's higher-ranked `Send` check
            // (rust-lang/rust#110338) unless its type is erased.
            let serving: std::pin::Pin<Box<dyn Future<Output = Result<_, Infallible>> + Send>> =
                Box::pin(dir.oneshot(req));
            let result = serving.await;
            match result {
                Ok(response) => response.map(body::boxed),
                Err(never) => match never {},
            }
        }
    }
}
