//! Composition root: loads the sealed model, starts the engine, and serves the API over TLS
//! until shutdown (SIGINT/SIGTERM in the CLI; a future in tests).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use axum_server::tls_rustls::RustlsConfig;

use crate::api::admission::Gate;
use crate::api::{self, AppState, ServedModel};
use crate::auth::VerifyPolicy;
use crate::config::Config;
use crate::engine::EngineHandle;
use crate::limits::RateLimits;
use crate::metrics::Metrics;
use crate::model::{load_sealed_model, LoadError};
use crate::store::{Ledger, Quotas, SqliteLedger};
use crate::tenant::TenantRegistry;

/// How long in-flight requests get to finish after a shutdown signal.
const DRAIN: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("configuration problems:\n  - {}", .0.join("\n  - "))]
    Missing(Vec<String>),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("JWKS {path}: {reason}")]
    Jwks { path: String, reason: String },
    #[error("quota ledger {path}: {reason}")]
    Ledger { path: String, reason: String },
    #[error("watermark keyring {path}: {reason}")]
    Watermark { path: String, reason: String },
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the watermark keyring named by the config (`None` when none is configured).
pub fn load_watermark_keys(
    cfg: &Config,
) -> Result<Option<crate::watermark::WatermarkKeyring>, ServeError> {
    let Some(path) = &cfg.watermark_keys else {
        return Ok(None);
    };
    let err = |reason: String| ServeError::Watermark {
        path: path.display().to_string(),
        reason,
    };
    let text =
        zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?);
    crate::watermark::WatermarkKeyring::from_json(&text)
        .map(Some)
        .map_err(|e| err(e.to_string()))
}

/// A server that is accepting connections.
#[derive(Debug)]
pub struct RunningServer {
    pub addr: SocketAddr,
    handle: axum_server::Handle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    /// Stops accepting, lets in-flight requests finish (bounded), and waits.
    pub async fn shutdown(self) -> std::io::Result<()> {
        self.handle.graceful_shutdown(Some(DRAIN));
        self.task.await.map_err(std::io::Error::other)?
    }

    /// Waits until the server stops by itself (it only does on error).
    pub async fn wait(self) -> std::io::Result<()> {
        self.task.await.map_err(std::io::Error::other)?
    }

    pub fn handle(&self) -> axum_server::Handle {
        self.handle.clone()
    }
}

/// Loads everything `cfg` names and starts serving on `listener`.
pub async fn start(
    cfg: Config,
    listener: std::net::TcpListener,
) -> Result<RunningServer, ServeError> {
    let missing = cfg.missing_files();
    if !missing.is_empty() {
        return Err(ServeError::Missing(missing));
    }
    let tls = crate::tls::server_config(&cfg.tls_cert, &cfg.tls_key)?;
    let policy = VerifyPolicy {
        leeway_secs: cfg.leeway_secs,
        ..VerifyPolicy::new(cfg.issuer.clone(), cfg.audience.clone())
    };
    let verifier =
        crate::reload::load_verifier(&cfg.jwks, &policy).map_err(|reason| ServeError::Jwks {
            path: cfg.jwks.display().to_string(),
            reason,
        })?;
    let ledger = open_ledger(&cfg)?;
    let watermark = load_watermark_keys(&cfg)?.map(Arc::new);
    match &watermark {
        Some(ring) => tracing::info!(
            key_id = ring.active().id(),
            "watermarking sampled completions"
        ),
        None => tracing::warn!("no [watermark] keys configured: completions are not watermarked"),
    }
    let load_cfg = cfg.clone();
    let loaded = tokio::task::spawn_blocking(move || load_sealed_model(&load_cfg))
        .await
        .map_err(std::io::Error::other)??;
    tracing::info!(
        model = %cfg.model_id,
        kek = %loaded.kek,
        publisher = %loaded.publisher,
        locked = loaded.weights_locked,
        "sealed model loaded"
    );
    let metrics = Arc::new(Metrics::new());
    let engine = EngineHandle::start(
        loaded.model.clone(),
        loaded.tokenizer.clone(),
        metrics.clone(),
        cfg.queue_capacity,
    )?;
    let rates = Arc::new(RateLimits::new());
    for t in &cfg.tenants {
        rates.set_plan(&t.id, &t.plan);
    }
    let verifier = Arc::new(ArcSwap::from_pointee(verifier));
    crate::reload::watch_jwks(cfg.jwks.clone(), policy, verifier.clone());
    let state = AppState {
        engine,
        model: Arc::new(ServedModel {
            id: cfg.model_id.clone(),
            tokenizer: loaded.tokenizer,
            chat: loaded.chat,
            context_length: loaded.model.config().context_length,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }),
        verifier,
        tenants: Arc::new(ArcSwap::from_pointee(TenantRegistry::from_config(
            &cfg.tenants,
        ))),
        limits: cfg.limits.clone(),
        logprob_budget: Arc::default(),
        extraction: Arc::default(),
        watermark,
        gate: Gate {
            rates,
            ledger,
            metrics,
        },
    };
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let handle = axum_server::Handle::new();
    let server = axum_server::from_tcp_rustls(listener, RustlsConfig::from_config(tls))
        .handle(handle.clone());
    let app = api::router(state);
    let task = tokio::spawn(async move { server.serve(app.into_make_service()).await });
    Ok(RunningServer { addr, handle, task })
}

/// Opens the quota ledger; reservations left open by a crashed process are charged at their
/// reserved amount (see `store::sqlite`).
fn open_ledger(cfg: &Config) -> Result<Arc<dyn Ledger>, ServeError> {
    if let Some(dir) = cfg.ledger.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let quotas: HashMap<String, Quotas> = cfg
        .tenants
        .iter()
        .map(|t| {
            (
                t.id.clone(),
                (t.plan.quota_tokens_per_day, t.plan.quota_tokens_per_month),
            )
        })
        .collect();
    let ledger = SqliteLedger::open(&cfg.ledger, quotas).map_err(|e| ServeError::Ledger {
        path: cfg.ledger.display().to_string(),
        reason: e.to_string(),
    })?;
    let dangling = ledger.reconciled_at_open();
    if dangling > 0 {
        tracing::warn!(
            dangling,
            "charged reservations left open by a previous crash"
        );
    }
    Ok(Arc::new(ledger))
}

/// Runs until SIGINT or SIGTERM, then drains.
pub async fn serve_until_signal(cfg: Config) -> Result<(), ServeError> {
    let listener = std::net::TcpListener::bind(cfg.listen)?;
    let server = start(cfg, listener).await?;
    tracing::info!(addr = %server.addr, "listening (https)");
    let handle = server.handle();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown signal: draining in-flight requests");
        handle.graceful_shutdown(Some(DRAIN));
    });
    server.wait().await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
