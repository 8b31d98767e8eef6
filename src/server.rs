//! Process lifecycle: bind everything (so errors come before serving), serve,
//! and on SIGTERM/SIGINT stop accepting and drain in-flight requests for up
//! to `runtime.shutdown_grace`.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::watch;

use crate::admin::Admin;
use crate::config::Config;
use crate::listen::{ListenError, Listener};
use crate::pipeline::Gateway;

/// Runs the gateway until a shutdown signal, on the current tokio runtime.
pub async fn serve(config: Config) -> Result<(), ListenError> {
    let config = Arc::new(config);
    let gateway = Arc::new(ArcSwap::from_pointee(Gateway::new(&config)));

    let listeners = config.listeners.iter().map(Listener::bind).collect::<Result<Vec<_>, _>>()?;
    let admin_tcp = match &config.admin {
        Some(a) => Some(tokio::net::TcpListener::bind(a.bind).await.map_err(|source| ListenError::Bind {
            listener: "admin".into(),
            addr: a.bind,
            source,
        })?),
        None => None,
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let drain = Arc::new(GracefulShutdown::new());
    let mut accept_loops = Vec::new();
    for listener in listeners {
        accept_loops.push(tokio::spawn(listener.run(Arc::clone(&gateway), stop_rx.clone(), Arc::clone(&drain))));
    }
    if let Some(tcp) = admin_tcp {
        tracing::info!(bind = %tcp.local_addr().map(|a| a.to_string()).unwrap_or_default(), "admin listening");
        let admin =
            Arc::new(Admin { config: Arc::clone(&config), gateway: Arc::clone(&gateway), started: Instant::now() });
        tokio::spawn(admin.run(tcp, stop_rx.clone()));
    }

    let signal = wait_for_signal().await;
    tracing::info!(signal, grace = ?config.runtime.shutdown_grace, "shutting down: draining in-flight requests");
    let _ = stop_tx.send(true);
    for accept_loop in accept_loops {
        let _ = accept_loop.await;
    }
    let drain = Arc::try_unwrap(drain).expect("accept loops have ended and released the drain handle");
    match tokio::time::timeout(config.runtime.shutdown_grace, drain.shutdown()).await {
        Ok(()) => tracing::info!("all connections drained"),
        Err(_) => tracing::warn!("grace period over: closing remaining connections"),
    }
    Ok(())
}

async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
