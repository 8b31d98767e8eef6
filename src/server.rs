//! Process lifecycle: bind everything (so errors come before serving), serve,
//! reload the config snapshot on SIGHUP, and on SIGTERM/SIGINT stop accepting
//! and drain in-flight requests for up to `runtime.shutdown_grace`.

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

    // Handlers first: a SIGTERM that lands while we bind must still drain, not kill.
    let mut signals = Signals::install();
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
        let admin = Arc::new(Admin { gateway: Arc::clone(&gateway), started: Instant::now() });
        tokio::spawn(admin.run(tcp, stop_rx.clone()));
    }

    let signal = loop {
        match signals.next().await {
            Signal::Reload => reload(&gateway, &config),
            Signal::Stop(name) => break name,
        }
    };
    tracing::info!(signal, grace = ?config.runtime.shutdown_grace, "shutting down: draining in-flight requests");
    let _ = stop_tx.send(true);
    // Upgraded connections are out of hyper's reach: WebSocket sessions close themselves with 1001.
    crate::websocket::shutdown::begin();
    for accept_loop in accept_loops {
        let _ = accept_loop.await;
    }
    let drain = Arc::try_unwrap(drain).expect("accept loops have ended and released the drain handle");
    let stats = Arc::clone(&gateway.load().stats);
    let drained = async move {
        drain.shutdown().await;
        // HTTP/2 streams run in their own tasks and may still be finishing a
        // response (and its access-log line) after their connection closed.
        while stats.active.load(std::sync::atomic::Ordering::Relaxed) > 0
            || crate::gauge::WEBSOCKET_SESSIONS.get() > 0
            || crate::gauge::QUIC_CONNECTIONS.get() > 0
        {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    };
    match tokio::time::timeout(config.runtime.shutdown_grace, drained).await {
        Ok(()) => tracing::info!("all connections drained"),
        Err(_) => tracing::warn!("grace period over: closing remaining connections"),
    }
    Ok(())
}

enum Signal {
    Reload,
    Stop(&'static str),
}

/// The process signals we act on, registered once.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        Self {
            term: signal(SignalKind::terminate()).expect("SIGTERM handler"),
            int: signal(SignalKind::interrupt()).expect("SIGINT handler"),
            hup: signal(SignalKind::hangup()).expect("SIGHUP handler"),
        }
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop("SIGTERM"),
            _ = self.int.recv() => Signal::Stop("SIGINT"),
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}

/// Re-reads the config file and swaps in a new snapshot: requests already in
/// flight finish on the old one, new requests use the new one. A file that
/// fails validation is rejected and the running config stays.
fn reload(gateway: &ArcSwap<Gateway>, running: &Config) {
    let fresh = match crate::config::load(&running.source) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "config reload rejected; keeping the running config");
            return;
        }
    };
    let binds = |c: &Config| c.listeners.iter().map(|l| (l.name.clone(), l.bind, l.tls.is_some())).collect::<Vec<_>>();
    if binds(&fresh) != binds(running) || fresh.admin.as_ref().map(|a| a.bind) != running.admin.as_ref().map(|a| a.bind)
    {
        tracing::warn!("listener and admin changes take effect on restart; routes and upstreams are reloaded now");
    }
    let stats = Arc::clone(&gateway.load().stats);
    gateway.store(Arc::new(Gateway::with_stats(&fresh, stats)));
    tracing::info!(routes = fresh.routes.len(), upstreams = fresh.upstreams.len(), "config reloaded");
}
