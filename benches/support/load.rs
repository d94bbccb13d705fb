//! The load bench's pieces: state and config on disk, one HTTPS request with its outcome and
//! timings, the settled ledger, audit-log counts, and the tallies the report prints.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cloister::auth::{DevIssuer, MintRequest, Scope, TenantId};
use cloister::devstate::{self, StatePaths};
use cloister::model;
use serde_json::{json, Value};

pub const MODEL_ID: &str = "smollm2-135m-instruct";
const ISSUER: &str = "https://issuer.load";
const AUDIENCE: &str = "cloister-load";

/// Concurrent clients, spread round-robin over [`TENANTS`].
pub const CLIENTS: usize = 64;

/// `(tenant, plan)`. `throttled` is rate-limited on purpose: its 429s are part of the mix.
pub const TENANTS: [(&str, &str); 4] = [
    ("alpha", "roomy"),
    ("bravo", "roomy"),
    ("charlie", "roomy"),
    ("throttled", "throttled"),
];

/// Measures prompt lengths before the run, so its tokens are on no tenant of the tally.
const PROBE: &str = "probe";

pub const PROMPTS: [&str; 4] = [
    "The capital of France is",
    "Write one sentence about the sea.",
    "List three colours:",
    "Once upon a time",
];

/// A request's shape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Kind {
    pub chat: bool,
    pub stream: bool,
}

/// The payloads of the error variants are read through `Debug` in the failure report.
#[allow(dead_code)]
#[derive(Debug, Clone)]
pub enum Outcome {
    Ok {
        prompt: u64,
        completion: u64,
        total: u64,
        /// Streamed: first chunk with content; non-streamed: the whole response.
        ttft: Duration,
    },
    /// 429, or an in-band stream error with a 429-class code (a refusal, not a failure).
    TooMany(String),
    ClientError(u16, String),
    /// 5xx, an in-band stream error, or a malformed response.
    ServerError(u16, String),
    Transport(String),
    /// Transport error after the server was killed on purpose.
    Killed,
}

impl Outcome {
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            Outcome::ClientError(..) | Outcome::ServerError(..) | Outcome::Transport(_)
        )
    }
}

#[derive(Debug, Clone)]
pub struct Sample {
    pub tenant: usize,
    pub kind: Kind,
    pub prompt: usize,
    pub max_tokens: u64,
    pub latency: Duration,
    pub outcome: Outcome,
}

/// Temp state, config and tokens of one bench run.
pub struct Bench {
    pub config_path: PathBuf,
    pub audit_path: PathBuf,
    ca_pem: Vec<u8>,
    /// One token per tenant of [`TENANTS`], then the probe's.
    tokens: Vec<String>,
    /// Prompt tokens of `PROMPTS[i]`: `[completion, chat]` (the chat template adds tokens).
    prompt_lengths: OnceLock<Vec<[u64; 2]>>,
}

impl Bench {
    /// Dev keys, the sealed demo model and a config under `dir`; tokens valid for the run.
    pub fn setup(dir: &Path, secs: u64) -> Bench {
        let gguf = crate::support::demo_gguf();
        let state = StatePaths::new(dir.join("state"));
        let keys = crate::support::dev_keys(&dir.join("state"));
        let sealed = state.sealed_model(MODEL_ID);
        model::seal_gguf_file(
            &gguf,
            &sealed,
            MODEL_ID,
            &keys.keyring,
            &keys.publisher,
            &mut |_, _| {},
        )
        .expect("seal demo model");
        let audit_path = dir.join("audit.log");
        let mut tenants = String::new();
        for (id, plan) in TENANTS.iter().chain([&(PROBE, "roomy")]) {
            tenants.push_str(&format!("[[tenants]]\nid = \"{id}\"\nplan = \"{plan}\"\n"));
        }
        // Roomy: no limit refuses at this load (16 clients per tenant, well under max_queued).
        // Throttled: 2 requests/s with a burst of 4, far below what 16 clients ask for.
        let toml = format!(
            r#"
[server]
listen = "127.0.0.1:0"
queue_capacity = 256
[tls]
cert = "{cert}"
key = "{key}"
[model]
id = "{MODEL_ID}"
sealed = "{sealed}"
[keys]
keyring = "{keyring}"
trusted_publishers = [{{ id = "{pid}", public_key = "{pubkey}" }}]
[auth]
jwks = "{jwks}"
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
[ledger]
path = "{ledger}"
[audit]
path = "{audit}"
signing_key = "{audit_key}"
public_key = "{audit_pub}"
log_id = "cloister-load"
key_id = "{audit_kid}"
[watermark]
keys = "{wm_keys}"
[plans.roomy]
requests_per_second = 1000
tokens_per_minute = 100000000
quota_tokens_per_day = 1000000000
max_context_tokens = 2048
max_tokens = 64
max_queued = 32
[plans.throttled]
requests_per_second = 2
request_burst = 4
tokens_per_minute = 100000000
quota_tokens_per_day = 1000000000
max_context_tokens = 2048
max_tokens = 64
max_queued = 32
{tenants}"#,
            ledger = dir.join("ledger.sqlite").display(),
            audit = audit_path.display(),
            audit_key = state.audit_key().display(),
            audit_pub = state.audit_public().display(),
            audit_kid = devstate::DEV_AUDIT_KEY_ID,
            wm_keys = state.watermark_keys().display(),
            cert = state.tls_cert().display(),
            key = state.tls_key().display(),
            sealed = sealed.display(),
            keyring = state.keyring().display(),
            pid = devstate::DEV_PUBLISHER_ID,
            pubkey = state.publisher_public().display(),
            jwks = state.jwks().display(),
        );
        let config_path = dir.join("load.toml");
        std::fs::write(&config_path, toml).expect("write config");

        let pem = std::fs::read_to_string(state.issuer_key()).expect("issuer key");
        let issuer = DevIssuer::from_pkcs8_pem(devstate::DEV_JWT_KID, &pem).expect("issuer pem");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("time")
            .as_secs();
        let tokens = TENANTS
            .iter()
            .map(|(id, _)| *id)
            .chain([PROBE])
            .map(|id| {
                issuer
                    .mint(MintRequest {
                        issuer: ISSUER.into(),
                        audience: AUDIENCE.into(),
                        subject: "load".into(),
                        tenant: TenantId::new(id).expect("tenant id"),
                        scopes: [Scope::Inference, Scope::UsageRead].into_iter().collect(),
                        // Both phases, the restart and the drain fit easily.
                        ttl_secs: 3 * secs + 900,
                        now_unix: now,
                    })
                    .expect("mint")
            })
            .collect();
        Bench {
            config_path,
            audit_path,
            ca_pem: std::fs::read(state.tls_cert()).expect("tls cert"),
            tokens,
            prompt_lengths: OnceLock::new(),
        }
    }

    /// An HTTPS client that trusts only the run's dev certificate (one per simulated client:
    /// each has its own connections).
    pub fn client(&self) -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&self.ca_pem).expect("ca pem"))
            // Generous: a request queued behind 63 others on 2 cores takes a while, and a
            // client-side timeout would be reported as a transport error.
            .timeout(Duration::from_secs(300))
            .build()
            .expect("client")
    }

    /// Tokenized prompt lengths, measured once through the server itself (probe tenant).
    pub async fn learn_prompt_lengths(&self, url: &str) {
        let client = self.client();
        let mut lengths = Vec::new();
        for p in 0..PROMPTS.len() {
            let mut pair = [0; 2];
            for (i, chat) in [false, true].into_iter().enumerate() {
                let kind = Kind {
                    chat,
                    stream: false,
                };
                let s = self
                    .request(&client, url, TENANTS.len(), kind, p, 1, true)
                    .await;
                match s.outcome {
                    Outcome::Ok { prompt, .. } => pair[i] = prompt,
                    other => panic!("probe request failed: {other:?}"),
                }
            }
            lengths.push(pair);
        }
        self.prompt_lengths
            .set(lengths)
            .expect("prompt lengths measured once");
    }

    fn prompt_len(&self, s: &Sample) -> u64 {
        self.prompt_lengths.get().expect("prompt lengths measured")[s.prompt]
            [usize::from(s.kind.chat)]
    }

    /// What admission reserves for this request: prompt + `max_tokens`.
    pub fn worst_case(&self, s: &Sample) -> u64 {
        self.prompt_len(s) + s.max_tokens
    }

    /// A successful response's usage adds up, counts the prompt as tokenized, and stays
    /// within `max_tokens`.
    pub fn usage_consistent(&self, s: &Sample) -> bool {
        match s.outcome {
            Outcome::Ok {
                prompt,
                completion,
                total,
                ..
            } => {
                prompt == self.prompt_len(s)
                    && completion <= s.max_tokens
                    && total == prompt + completion
            }
            _ => true,
        }
    }

    /// One request; never panics on what the server does.
    #[allow(clippy::too_many_arguments)]
    pub async fn request(
        &self,
        client: &reqwest::Client,
        url: &str,
        tenant: usize,
        kind: Kind,
        prompt: usize,
        max_tokens: u64,
        greedy: bool,
    ) -> Sample {
        let text = PROMPTS[prompt];
        let (path, mut body) = if kind.chat {
            (
                "/v1/chat/completions",
                json!({"model": MODEL_ID, "messages": [{"role": "user", "content": text}]}),
            )
        } else {
            (
                "/v1/completions",
                json!({"model": MODEL_ID, "prompt": text}),
            )
        };
        body["max_tokens"] = json!(max_tokens);
        // Sampled completions are watermarked, greedy ones are not: both paths run.
        body["temperature"] = json!(if greedy { 0.0 } else { 0.8 });
        if kind.stream {
            body["stream"] = json!(true);
            body["stream_options"] = json!({"include_usage": true});
        }
        let started = Instant::now();
        let outcome = match client
            .post(format!("{url}{path}"))
            .bearer_auth(&self.tokens[tenant])
            .json(&body)
            .send()
            .await
        {
            Err(e) => Outcome::Transport(format!("{e:?}")),
            Ok(resp) => outcome(resp, kind, started).await,
        };
        Sample {
            tenant,
            kind,
            prompt,
            max_tokens,
            latency: started.elapsed(),
            outcome,
        }
    }

    pub fn token(&self, tenant: usize) -> &str {
        &self.tokens[tenant]
    }
}

fn error_code(v: &Value) -> String {
    v["error"]["code"]
        .as_str()
        .or(v["error"]["type"].as_str())
        .unwrap_or("?")
        .to_string()
}

/// Codes that mean "refused, retry later" (the 429 family), in a status or in-band.
fn is_refusal(code: &str) -> bool {
    matches!(
        code,
        "rate_limit_exceeded"
            | "insufficient_quota"
            | "server_busy"
            | "tenant_queue_full"
            | "kv_pool_exhausted"
    )
}

fn usage_of(v: &Value, ttft: Duration) -> Outcome {
    let u = &v["usage"];
    match (
        u["prompt_tokens"].as_u64(),
        u["completion_tokens"].as_u64(),
        u["total_tokens"].as_u64(),
    ) {
        (Some(prompt), Some(completion), Some(total)) => Outcome::Ok {
            prompt,
            completion,
            total,
            ttft,
        },
        _ => Outcome::ServerError(200, format!("no usage in {v}")),
    }
}

async fn outcome(mut resp: reqwest::Response, kind: Kind, started: Instant) -> Outcome {
    let status = resp.status().as_u16();
    if status != 200 || !kind.stream {
        let text = match resp.text().await {
            Ok(t) => t,
            Err(e) => return Outcome::Transport(format!("{e:?}")),
        };
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        return match status {
            200 => usage_of(&v, started.elapsed()),
            429 => Outcome::TooMany(error_code(&v)),
            400..=499 => Outcome::ClientError(status, text),
            _ => Outcome::ServerError(status, text),
        };
    }
    let mut buf: Vec<u8> = Vec::new();
    let (mut ttft, mut usage, mut done) = (None, None, false);
    loop {
        match resp.chunk().await {
            Ok(Some(bytes)) => buf.extend_from_slice(&bytes),
            Ok(None) => break,
            Err(e) => return Outcome::Transport(format!("{e:?}")),
        }
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            let event = String::from_utf8_lossy(&event);
            for data in event.lines().filter_map(|l| l.strip_prefix("data:")) {
                let data = data.trim();
                if data == "[DONE]" {
                    done = true;
                    continue;
                }
                let Ok(v) = serde_json::from_str::<Value>(data) else {
                    return Outcome::ServerError(200, format!("bad SSE data {data:?}"));
                };
                if v.get("error").is_some() {
                    let code = error_code(&v);
                    return if is_refusal(&code) {
                        Outcome::TooMany(code)
                    } else {
                        Outcome::ServerError(200, format!("in-band error {v}"))
                    };
                }
                if !v["usage"].is_null() {
                    usage = Some(v.clone());
                }
                let piece = if kind.chat {
                    &v["choices"][0]["delta"]["content"]
                } else {
                    &v["choices"][0]["text"]
                };
                if ttft.is_none() && piece.as_str().is_some_and(|s| !s.is_empty()) {
                    ttft = Some(started.elapsed());
                }
            }
        }
    }
    match (done, usage) {
        (false, _) => Outcome::Transport("stream ended without [DONE]".into()),
        (true, None) => Outcome::ServerError(200, "stream without a usage chunk".into()),
        // A completion with no text at all (immediate end of text): its first chunk is the end.
        (true, Some(v)) => usage_of(&v, ttft.unwrap_or_else(|| started.elapsed())),
    }
}

/// A tenant's ledger for the current month (the run's ledger is fresh, so that is all of it).
#[derive(Debug, Clone, Copy)]
pub struct Settled {
    pub used: u64,
    pub reserved: u64,
}

/// `GET /v1/usage` once no reservation is open (commits are asynchronous to the responses),
/// or as it stands after 30 s.
pub async fn settled_usage(bench: &Bench, url: &str, tenant: usize) -> Settled {
    let client = bench.client();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v: Value = client
            .get(format!("{url}/v1/usage"))
            .bearer_auth(bench.token(tenant))
            .send()
            .await
            .expect("GET /v1/usage")
            .json()
            .await
            .expect("usage json");
        let s = Settled {
            used: v["month"]["used_tokens"].as_u64().expect("month used"),
            reserved: v["month"]["reserved_tokens"]
                .as_u64()
                .expect("month reserved"),
        };
        if s.reserved == 0 || Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Per-tenant `RequestCompleted` / `LimitRejected` records of the audit log.
#[derive(Debug, Default)]
pub struct AuditCounts(HashMap<String, TenantAudit>);

#[derive(Debug, Default, Clone, Copy)]
pub struct TenantAudit {
    pub completed: u64,
    pub rejected: u64,
    pub tokens: u64,
}

impl TenantAudit {
    /// Requests that got an answer the audit log accounts for (served or refused).
    pub fn answered(&self) -> u64 {
        self.completed + self.rejected
    }
}

impl AuditCounts {
    pub fn tenant(&self, id: &str) -> TenantAudit {
        self.0.get(id).copied().unwrap_or_default()
    }
    pub fn total_tokens(&self) -> u64 {
        self.0.values().map(|a| a.tokens).sum()
    }
}

/// Reads the complete lines of the audit log (the server may be appending).
pub fn audit_counts(path: &Path) -> AuditCounts {
    let text = std::fs::read_to_string(path).expect("read audit log");
    let complete = text.rsplit_once('\n').map_or("", |(head, _)| head);
    let mut counts = AuditCounts::default();
    for line in complete.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let e = &v["event"];
        let Some(tenant) = e["tenant"].as_str() else {
            continue;
        };
        let a = counts.0.entry(tenant.to_string()).or_default();
        match e["type"].as_str() {
            Some("RequestCompleted") => {
                a.completed += 1;
                a.tokens += e["prompt_tokens"].as_u64().unwrap_or(0)
                    + e["completion_tokens"].as_u64().unwrap_or(0);
            }
            Some("LimitRejected") => a.rejected += 1,
            _ => {}
        }
    }
    counts
}

/// Outcome counts of a set of samples.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub ok: u64,
    pub too_many: u64,
    pub client_err: u64,
    pub server_err: u64,
    pub transport: u64,
    pub tokens: u64,
    pub completion_tokens: u64,
}

impl Tally {
    pub fn of<'a>(samples: impl Iterator<Item = &'a Sample>) -> Tally {
        let mut t = Tally::default();
        for s in samples {
            match &s.outcome {
                Outcome::Ok {
                    total, completion, ..
                } => {
                    t.ok += 1;
                    t.tokens += total;
                    t.completion_tokens += completion;
                }
                Outcome::TooMany(_) => t.too_many += 1,
                Outcome::ClientError(..) => t.client_err += 1,
                Outcome::ServerError(..) => t.server_err += 1,
                Outcome::Transport(_) => t.transport += 1,
                Outcome::Killed => {}
            }
        }
        t
    }

    pub fn add(&mut self, o: &Tally) {
        self.ok += o.ok;
        self.too_many += o.too_many;
        self.client_err += o.client_err;
        self.server_err += o.server_err;
        self.transport += o.transport;
        self.tokens += o.tokens;
        self.completion_tokens += o.completion_tokens;
    }
}

/// One pass/fail line of the final table.
#[derive(Debug)]
pub struct Check {
    pub what: String,
    pub pass: bool,
}

impl Check {
    pub fn new(what: String, pass: bool) -> Check {
        Check { what, pass }
    }
}

/// Nearest-rank percentile of sorted durations (zero when empty).
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
