//! Composition root: loads the sealed model, starts the engine, and serves the API over TLS
//! until shutdown (SIGINT/SIGTERM in the CLI; a future in tests).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use axum_server::tls_rustls::RustlsConfig;
use tokio::sync::Notify;

use crate::api::admission::Gate;
use crate::api::{self, AppState, Ops, ServedModel};
use crate::audit::{AuditEvent, AuditSink, ConfigPart, KeyId, Label, ModelId};
use crate::auth::VerifyPolicy;
use crate::config::Config;
use crate::keys::KekRef;
use crate::limits::RateLimits;
use crate::metrics::Metrics;
use crate::model::LoadError;
use crate::model_start::start_model;
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
    #[error("audit log: {0}")]
    Audit(#[from] crate::audit::SinkError),
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
    /// The admin listener, when the config has `[admin]`.
    pub admin_addr: Option<SocketAddr>,
    /// Fire to re-check every reloadable file now (SIGHUP, admin API).
    pub reload: Arc<Notify>,
    audit: Arc<AuditSink>,
    handle: axum_server::Handle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    /// Stops accepting, lets in-flight requests finish (bounded), and waits.
    pub async fn shutdown(self) -> std::io::Result<()> {
        self.handle.graceful_shutdown(Some(DRAIN));
        self.wait().await
    }

    /// Waits until the server stops (after a graceful shutdown, or on error), then seals the
    /// audit log with a final record and checkpoint.
    pub async fn wait(self) -> std::io::Result<()> {
        let result = self.task.await.map_err(std::io::Error::other)?;
        // Closing waits for queued records and fsyncs: not on an async worker.
        let audit = self.audit;
        tokio::task::spawn_blocking(move || audit.close(AuditEvent::ServerStop {}))
            .await
            .map_err(std::io::Error::other)?;
        result
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
    let admin_listener = match cfg.admin_listen {
        Some(addr) => Some(std::net::TcpListener::bind(addr)?),
        None => None,
    };
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
    let audit = Arc::new(AuditSink::open(&cfg.audit)?);
    audit.record(AuditEvent::ServerStart {
        version: Label::new(env!("CARGO_PKG_VERSION"))
            .map_err(|e| ServeError::Io(std::io::Error::other(e.to_string())))?,
    });
    let watermark = load_watermark_keys(&cfg)?.map(Arc::new);
    match &watermark {
        Some(ring) => tracing::info!(
            key_id = ring.active().id(),
            "watermarking sampled completions"
        ),
        None => tracing::warn!("no [watermark] keys configured: completions are not watermarked"),
    }
    let metrics = Arc::new(Metrics::new());
    let engine_cfg = crate::engine::EngineConfig {
        max_running: cfg.max_running,
        ..crate::engine::EngineConfig::new(cfg.queue_capacity)
    };
    let (load_cfg, load_metrics) = (cfg.clone(), metrics.clone());
    let started =
        tokio::task::spawn_blocking(move || start_model(&load_cfg, load_metrics, engine_cfg))
            .await
            .map_err(std::io::Error::other)??;
    if let (Ok(model), Ok(kek_id), Ok(publisher)) = (
        ModelId::new(cfg.model_id.clone()),
        KeyId::new(started.kek_ref.id.clone()),
        KeyId::new(started.publisher.clone()),
    ) {
        audit.record(AuditEvent::ModelUnsealed {
            model,
            kek_id,
            kek_version: started.kek_ref.version,
            publisher,
        });
    }
    tracing::info!(
        model = %cfg.model_id,
        kek = %started.kek_ref,
        publisher = %started.publisher,
        weights = started.placement,
        "sealed model loaded"
    );
    let engine = started.engine;
    let rates = Arc::new(RateLimits::new());
    for t in &cfg.tenants {
        rates.set_plan(&t.id, &t.plan);
    }
    let verifier = Arc::new(ArcSwap::from_pointee(verifier));
    let reload = Arc::new(Notify::new());
    let ops = Arc::new(Ops {
        config: cfg.clone(),
        reload: reload.clone(),
        loaded_kek: started.kek_ref.clone(),
    });
    crate::reload::watch_jwks(
        cfg.jwks.clone(),
        policy,
        verifier.clone(),
        reload.clone(),
        audit.clone(),
    );
    let state = AppState {
        engine,
        model: Arc::new(ServedModel {
            id: cfg.model_id.clone(),
            tokenizer: started.tokenizer,
            chat: started.chat,
            context_length: started.context_length,
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
        logprob_noise: Arc::new(crate::sampling::NoiseSecret::generate(
            &mut rand::rngs::OsRng,
        )),
        gate: Gate {
            rates,
            ledger,
            metrics,
            audit: audit.clone(),
            model_id: cfg.model_id.clone(),
        },
        ops,
    };
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let handle = axum_server::Handle::new();
    let rustls = RustlsConfig::from_config(tls);
    crate::reload::watch_tls(
        cfg.tls_cert.clone(),
        cfg.tls_key.clone(),
        rustls.clone(),
        reload.clone(),
        audit.clone(),
    );
    let tenants = state.tenants.clone();
    let rates = state.gate.rates.clone();
    if let Some(source) = cfg.source.clone() {
        watch_tenants(source, tenants, rates, reload.clone(), audit.clone());
    }
    watch_keys(&cfg, started.kek_ref, reload.clone(), audit.clone());
    let server = axum_server::from_tcp_rustls(listener, rustls.clone()).handle(handle.clone());
    let admin_addr = match admin_listener {
        Some(l) => {
            l.set_nonblocking(true)?;
            let addr = l.local_addr()?;
            let admin = axum_server::from_tcp_rustls(l, rustls.clone()).handle(handle.clone());
            let router = api::admin::router(state.clone());
            tokio::spawn(async move {
                if let Err(e) = admin.serve(router.into_make_service()).await {
                    tracing::error!(error = %e, "admin listener failed");
                }
            });
            Some(addr)
        }
        None => None,
    };
    let app = api::router(state);
    let task = tokio::spawn(async move { server.serve(app.into_make_service()).await });
    Ok(RunningServer {
        addr,
        admin_addr,
        reload,
        audit,
        handle,
        task,
    })
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

/// Re-reads tenants and plans from the config file when it changes. New plans apply to new
/// requests; quota limits of the ledger are read at start-up (a change needs a restart).
fn watch_tenants(
    source: std::path::PathBuf,
    tenants: Arc<ArcSwap<TenantRegistry>>,
    rates: Arc<RateLimits>,
    trigger: Arc<Notify>,
    audit: Arc<AuditSink>,
) {
    let path = source.clone();
    crate::reload::watch(
        ConfigPart::Tenants,
        vec![source],
        trigger,
        audit,
        move || {
            let cfg = Config::load(&path).map_err(|e| e.to_string())?;
            for t in &cfg.tenants {
                rates.set_plan(&t.id, &t.plan);
            }
            let current = tenants.load();
            for old in current.iter() {
                if !cfg.tenants.iter().any(|t| t.id == old.id) {
                    rates.remove_tenant(&old.id);
                }
            }
            tenants.store(Arc::new(TenantRegistry::from_config(&cfg.tenants)));
            Ok(format!("{} tenants", cfg.tenants.len()))
        },
    );
}

/// Notices KEK rotations and rewraps done offline (`cloister keys rotate`, `model rewrap`):
/// the rewrapped file is verified against the current keys and both events are audited. The
/// running weights stay as they are — they need no re-decryption.
fn watch_keys(cfg: &Config, loaded: KekRef, trigger: Arc<Notify>, audit: Arc<AuditSink>) {
    let mut paths = vec![cfg.sealed_model.clone()];
    if cfg.pkcs11.is_none() {
        paths.push(cfg.keyring.clone());
    }
    let active = crate::model::key_provider(cfg).map_or_else(|_| loaded.clone(), |k| k.active());
    let cfg = cfg.clone();
    let last = std::sync::Mutex::new((active, loaded));
    let audit_events = audit.clone();
    crate::reload::watch(ConfigPart::Keys, paths, trigger, audit, move || {
        let keys = crate::model::key_provider(&cfg).map_err(|e| e.to_string())?;
        let trusted = crate::model::load_trusted(&cfg).map_err(|e| e.to_string())?;
        let file = crate::model::sealed_kek(&cfg.sealed_model, keys.as_ref(), &trusted)
            .map_err(|e| e.to_string())?;
        let active = keys.active();
        let mut last = last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (prev_active, prev_file) = &*last;
        if active != *prev_active {
            if let Ok(kek_id) = KeyId::new(active.id.clone()) {
                audit_events.record(AuditEvent::KeyRotated {
                    kek_id,
                    new_version: active.version,
                });
            }
        }
        if file != *prev_file {
            if let (Ok(model), Ok(kek_id)) = (
                ModelId::new(cfg.model_id.clone()),
                KeyId::new(file.id.clone()),
            ) {
                audit_events.record(AuditEvent::ModelRewrapped {
                    model,
                    kek_id,
                    from_version: prev_file.version,
                    to_version: file.version,
                });
            }
        }
        *last = (active.clone(), file.clone());
        Ok(format!("active KEK {active}, model wrapped under {file}"))
    });
}

/// Runs until SIGINT or SIGTERM, then drains.
pub async fn serve_until_signal(cfg: Config) -> Result<(), ServeError> {
    // The handlers are registered before the server announces its address: a SIGTERM or SIGHUP
    // sent as soon as "listening" appears must reach them, not the default action, which ends
    // the process without draining (a test that stopped a fresh server found that window).
    #[cfg(unix)]
    let (mut term, mut int, mut hup) = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
            signal(SignalKind::hangup())?,
        )
    };
    let listener = std::net::TcpListener::bind(cfg.listen)?;
    let server = start(cfg, listener).await?;
    tracing::info!(addr = %server.addr, "listening (https)");
    if let Some(admin) = server.admin_addr {
        tracing::info!(admin = %admin, "admin API listening (https, scope admin)");
    }
    let handle = server.handle();
    #[cfg(unix)]
    {
        let reload = server.reload.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: re-checking JWKS, TLS certificate and tenants");
                reload.notify_waiters();
            }
        });
    }
    tokio::spawn(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown signal: draining in-flight requests");
        handle.graceful_shutdown(Some(DRAIN));
    });
    server.wait().await?;
    Ok(())
}
