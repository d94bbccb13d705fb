//! `/v1/completions` and `/v1/chat/completions`: both validate, submit to the engine, and
//! answer as one JSON body or as an SSE stream ending in `data: [DONE]`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::histogram::Histogram;

use axum::extract::State;
use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::api::dto::{ChatRequest, CommonParams, CompletionRequest};
use crate::api::error::{rate_headers, ApiError};
use crate::api::extract::{ApiJson, Caller};
use crate::api::validate::{self, Endpoint, ModelBounds, RequestLimits, ValidGeneration};
use crate::api::AppState;
use crate::audit::{self, AuditEvent, GuardAction as AuditGuardAction};
use crate::auth::Scope;
use crate::engine::{GenEvent, GenRequest};
use crate::guard::injection::check_input;
use crate::guard::pii::{check_output, PiiMatch};
use crate::guard::policy::{GuardAction, OutputAction, POLICY_VERSION};
use crate::guard::stream::StreamRedactor;
use crate::limits::Signal;
use crate::metrics::{ExtractionLabels, Metrics, RequestLabels};
use crate::sampling::{TokenLogprob, WatermarkSpec};
use crate::tenant::Tenant;
use crate::tokenizer::ModelTokenizer;
use crate::watermark::WatermarkParams;

/// Events buffered between the engine and a slow client before the engine waits.
const EVENT_BUFFER: usize = 64;

#[utoipa::path(
    post,
    path = "/v1/completions",
    tag = "inference",
    request_body = CompletionRequest,
    responses(
        (status = 200, description = "The completion: one JSON object, or with `stream: true` server-sent \
            events (`data: <chunk JSON>` lines ending in `data: [DONE]`).",
            content(
                (crate::api::openapi::Completion = "application/json"),
                (String = "text/event-stream"),
            ),
            headers(("x-cloister-watermark" = String,
                description = "Id of the watermark key the sampled output carries."))),
        crate::api::openapi::GenerationErrors,
    ),
)]
pub async fn completions(
    State(app): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let result = async {
        caller.principal.require(Scope::Inference)?;
        let (model, prompt, params) = req.into_parts();
        app.check_model(&caller.tenant, &model)?;
        let prompt = validate::completion_prompt(prompt, &app.limits)?;
        let ids =
            app.model.tokenizer.encode_text(&prompt).map_err(|_| {
                ApiError::invalid("the prompt could not be tokenized", Some("prompt"))
            })?;
        generate(&app, &caller, params, ids, &prompt, Kind::Completion).await
    }
    .await;
    count(&app, &caller.tenant, "completions", &result);
    result
}

#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "inference",
    request_body = ChatRequest,
    responses(
        (status = 200, description = "The chat completion: one JSON object, or with `stream: true` server-sent \
            events (`data: <chunk JSON>` lines ending in `data: [DONE]`).",
            content(
                (crate::api::openapi::ChatCompletion = "application/json"),
                (String = "text/event-stream"),
            ),
            headers(("x-cloister-watermark" = String,
                description = "Id of the watermark key the sampled output carries."))),
        crate::api::openapi::GenerationErrors,
    ),
)]
pub async fn chat_completions(
    State(app): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    let result = async {
        caller.principal.require(Scope::Inference)?;
        let (model, messages, params) = req.into_parts();
        app.check_model(&caller.tenant, &model)?;
        let messages = validate::chat_messages(messages, &app.limits)?;
        let text = messages
            .iter()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        let ids = app
            .model
            .chat
            .render_ids(&app.model.tokenizer, &messages, true)
            .map_err(|_| {
                ApiError::invalid("the messages could not be rendered", Some("messages"))
            })?;
        generate(&app, &caller, params, ids, &text, Kind::Chat).await
    }
    .await;
    count(&app, &caller.tenant, "chat_completions", &result);
    result
}

/// What both endpoints do once the prompt is tokenized: validate against the tenant's plan,
/// run the input guard and extraction watch on the user text, then generate.
async fn generate(
    app: &AppState,
    caller: &Caller,
    params: CommonParams,
    ids: Vec<u32>,
    user_text: &str,
    kind: Kind,
) -> Result<Response, ApiError> {
    let (ctx, limits) = effective_limits(app, &caller.tenant);
    let endpoint = match kind {
        Kind::Completion => Endpoint::Completions,
        Kind::Chat => Endpoint::Chat,
    };
    let valid = validate::generation(
        params,
        ids,
        ModelBounds {
            context_length: ctx,
            vocab_size: app.model.tokenizer.vocab_size(),
        },
        &limits,
        endpoint,
        &caller.tenant.plan.confidence,
        rand::thread_rng().gen(),
    )?;
    // After the schema and context checks, so those errors keep their precedence.
    let param = match kind {
        Kind::Completion => "prompt",
        Kind::Chat => "messages",
    };
    input_guard(app, &caller.tenant, user_text, param)?;
    watch_extraction(app, &caller.tenant, user_text, &valid)?;
    respond(app, &caller.tenant, valid, kind).await
}

/// The context window and request bounds for `tenant`: the server's, narrowed by the plan.
fn effective_limits(app: &AppState, tenant: &Tenant) -> (usize, RequestLimits) {
    let plan = &tenant.plan;
    let ctx = app
        .model
        .context_length
        .min(plan.max_context_tokens as usize);
    let cap = app.limits.max_tokens_cap.min(plan.max_tokens as usize);
    let limits = RequestLimits {
        max_tokens_cap: cap,
        chat_default_max_tokens: app.limits.chat_default_max_tokens.min(cap),
        ..app.limits.clone()
    };
    (ctx, limits)
}

fn count(
    app: &AppState,
    tenant: &Tenant,
    endpoint: &'static str,
    result: &Result<Response, ApiError>,
) {
    let status = match result {
        Ok(r) => r.status().as_u16(),
        Err(e) => e.status().as_u16(),
    };
    app.gate
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            tenant: tenant.id.clone(),
            endpoint,
            status,
        })
        .inc();
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Completion,
    Chat,
}

impl Kind {
    fn id_prefix(self) -> &'static str {
        match self {
            Kind::Completion => "cmpl-",
            Kind::Chat => "chatcmpl-",
        }
    }
}

/// Identity of one response, repeated in every stream chunk.
#[derive(Clone)]
struct Meta {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    /// Whether the client asked for logprobs (otherwise `"logprobs": null`).
    logprobs: bool,
    tokenizer: Arc<ModelTokenizer>,
    tenant: String,
    output: crate::guard::policy::OutputPolicy,
    metrics: Arc<Metrics>,
}

impl Meta {
    /// A response object with one choice.
    fn object(&self, choice: Value, usage: Option<Value>, chunk: bool) -> Value {
        let object = match (self.kind, chunk) {
            (Kind::Completion, _) => "text_completion",
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
        };
        let mut v = json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [choice],
        });
        if let Some(u) = usage {
            v["usage"] = u;
        }
        v
    }

    /// A stream chunk carrying `text` (and a finish reason on the last one) and the logprobs
    /// of the tokens that arrived since the previous chunk.
    fn delta(
        &self,
        text: Option<&str>,
        finish: Option<&str>,
        lps: &mut Vec<TokenLogprob>,
        offset: &mut usize,
    ) -> Value {
        let logprobs = self.logprobs_json(lps, offset);
        lps.clear();
        let choice = match self.kind {
            Kind::Completion => json!({
                "index": 0, "text": text.unwrap_or(""), "logprobs": logprobs,
                "finish_reason": finish,
            }),
            Kind::Chat => {
                let delta = text.map_or(json!({}), |t| json!({ "content": t }));
                json!({ "index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish })
            }
        };
        self.object(choice, None, true)
    }

    /// OpenAI's logprobs object for `lps` (`null` when not requested). `offset` is the text
    /// offset of the first token (completions' `text_offset`), advanced past them.
    fn logprobs_json(&self, lps: &[TokenLogprob], offset: &mut usize) -> Value {
        if !self.logprobs {
            return Value::Null;
        }
        let tok = &self.tokenizer;
        let text = |id: u32| tok.token_text(id).unwrap_or_default();
        let bytes = |id: u32| tok.token_bytes(id).map(<[u8]>::to_vec).unwrap_or_default();
        match self.kind {
            Kind::Chat => {
                let content: Vec<Value> = lps
                    .iter()
                    .map(|lp| {
                        let top: Vec<Value> = lp
                            .top
                            .iter()
                            .map(|&(id, l)| {
                                json!({"token": text(id), "logprob": l, "bytes": bytes(id)})
                            })
                            .collect();
                        json!({
                            "token": text(lp.token),
                            "logprob": lp.logprob,
                            "bytes": bytes(lp.token),
                            "top_logprobs": top,
                        })
                    })
                    .collect();
                json!({ "content": content, "refusal": null })
            }
            Kind::Completion => {
                let mut tokens = Vec::new();
                let mut token_logprobs = Vec::new();
                let mut top = Vec::new();
                let mut offsets = Vec::new();
                for lp in lps {
                    let t = text(lp.token);
                    offsets.push(*offset);
                    *offset += t.len();
                    tokens.push(t);
                    token_logprobs.push(lp.logprob);
                    let alts: serde_json::Map<String, Value> =
                        lp.top.iter().map(|&(id, l)| (text(id), json!(l))).collect();
                    top.push(Value::Object(alts));
                }
                json!({
                    "tokens": tokens,
                    "token_logprobs": token_logprobs,
                    "top_logprobs": top,
                    "text_offset": offsets,
                })
            }
        }
    }
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

async fn respond(
    app: &AppState,
    tenant: &Arc<Tenant>,
    mut valid: ValidGeneration,
    kind: Kind,
) -> Result<Response, ApiError> {
    // Every sampled completion is watermarked unless the plan opts out; greedy output cannot
    // carry a soft watermark (README).
    let watermark_id = match &app.watermark {
        Some(ring) if tenant.plan.watermark && !valid.sampling.is_greedy() => {
            let key = ring.active();
            valid.pipeline.watermark = Some(WatermarkSpec {
                key: Arc::new(key.clone()),
                params: WatermarkParams::default(),
            });
            Some(key.id().to_owned())
        }
        _ => None,
    };
    if valid.pipeline.logprobs.is_some() {
        take_logprob_budget(app, tenant)?;
        valid.pipeline.noise_key = Some(app.logprob_noise.key_for(&tenant.id, &valid.prompt_ids));
    }
    let admitted = app
        .gate
        .admit(tenant, valid.prompt_ids.len() + valid.max_tokens)
        .await?
        .with_watermark(watermark_id.clone());
    let rate = admitted.rate;
    let (tx, rx) = mpsc::channel(EVENT_BUFFER);
    let meta = Meta {
        kind,
        id: format!(
            "{}{}",
            kind.id_prefix(),
            hex::encode(rand::random::<[u8; 12]>())
        ),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model: app.model.id.clone(),
        logprobs: valid.pipeline.logprobs.is_some(),
        tokenizer: app.model.tokenizer.clone(),
        tenant: tenant.id.clone(),
        output: tenant.plan.guard.output.clone(),
        metrics: app.gate.metrics.clone(),
    };
    let (stream, include_usage) = (valid.stream, valid.include_usage);
    let timing = Timing::new(app, &tenant.id);
    app.engine.try_submit(GenRequest {
        tenant: Arc::from(tenant.id.as_str()),
        prompt: valid.prompt_ids,
        max_tokens: valid.max_tokens,
        sampling: valid.sampling,
        pipeline: valid.pipeline,
        stop: valid.stop,
        kv_pool_bytes: tenant.plan.kv_pool_bytes,
        events: tx,
        on_finish: admitted.into_finish_hook(),
    })?;
    let mut resp = if stream {
        sse(meta, rx, include_usage, timing).into_response()
    } else {
        Json(collect(meta, rx, timing).await?).into_response()
    };
    rate_headers(resp.headers_mut(), &[rate.requests, rate.tokens]);
    if let Some(id) = watermark_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        resp.headers_mut().insert("x-cloister-watermark", id);
    }
    Ok(resp)
}

/// The input guard: length/control-character limits, then the prompt-injection score, acted
/// on per the tenant's policy. Decisions are logged with the policy version and the pattern
/// ids, never the prompt.
/// `param` names the field the text came from (`prompt` or `messages`).
fn input_guard(
    app: &AppState,
    tenant: &Tenant,
    text: &str,
    param: &'static str,
) -> Result<(), ApiError> {
    let decision =
        check_input(&tenant.plan.guard.input, text).map_err(|e| ApiError::InvalidRequest {
            message: format!("the prompt was refused by the input policy ({POLICY_VERSION}): {e}"),
            param: Some(param),
            code: Some("invalid_prompt"),
        })?;
    let ids: Vec<&str> = decision.signals.iter().map(|s| s.id).collect();
    match decision.action {
        GuardAction::Allow => Ok(()),
        GuardAction::Flag => {
            audit_guard(
                app,
                &tenant.id,
                "input",
                AuditGuardAction::Flag,
                decision.score,
            );
            app.gate.metrics.guard(&tenant.id, "prompt_flagged");
            tracing::warn!(tenant = %tenant.id, policy = decision.policy_version,
                score = decision.score, signals = ?ids, "prompt flagged by the input guard");
            Ok(())
        }
        GuardAction::Block => {
            audit_guard(
                app,
                &tenant.id,
                "input",
                AuditGuardAction::Block,
                decision.score,
            );
            app.gate.metrics.guard(&tenant.id, "prompt_blocked");
            tracing::warn!(tenant = %tenant.id, policy = decision.policy_version,
                score = decision.score, signals = ?ids, "prompt blocked by the input guard");
            Err(ApiError::InvalidRequest {
                message: format!(
                    "the prompt was rejected by the prompt-injection policy ({})",
                    decision.policy_version
                ),
                param: Some(param),
                code: Some("prompt_rejected"),
            })
        }
    }
}

/// Audits a guard decision: which guard, what it did, the policy version and the score —
/// never the text it looked at.
fn audit_guard(app: &AppState, tenant: &str, guard: &str, action: AuditGuardAction, score: f32) {
    let ids = (
        audit::RequestId::new(hex::encode(rand::random::<[u8; 12]>())),
        audit::TenantId::new(tenant),
        audit::Label::new(guard),
        audit::Label::new(POLICY_VERSION),
    );
    if let (Ok(request_id), Ok(tenant), Ok(guard), Ok(policy_version)) = ids {
        // Any tenant can trigger guard decisions in bulk: append off the async workers.
        app.gate
            .audit
            .record_in_background(AuditEvent::GuardDecision {
                request_id,
                tenant,
                guard,
                action,
                policy_version,
                score_milli: (score.clamp(0.0, 1.0) * 1000.0) as u32,
            });
    }
}

/// Records an output-guard decision (kinds only, never the matched text).
fn note_pii(metrics: &Metrics, tenant: &str, action: OutputAction, matches: &[PiiMatch]) {
    if matches.is_empty() {
        return;
    }
    let event = match action {
        OutputAction::Redact => "pii_redacted",
        _ => "pii_flagged",
    };
    metrics.guard(tenant, event);
    let kinds: Vec<&str> = matches.iter().map(|m| m.kind.label()).collect();
    tracing::warn!(tenant, policy = POLICY_VERSION, event, kinds = ?kinds, "PII in a completion");
}

/// Feeds the tenant's extraction-detection window; an alarm is counted in
/// `cloister_extraction_alarms_total` and logged (without the prompt), and starts a cool-down
/// during which the tenant's logprob requests are refused.
fn watch_extraction(
    app: &AppState,
    tenant: &Tenant,
    prompt: &str,
    valid: &ValidGeneration,
) -> Result<(), ApiError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let logprobs = valid.pipeline.logprobs.is_some();
    let policy = &tenant.plan.extraction;
    let (throttled, alarms) = {
        let Ok(mut monitor) = app.extraction.lock() else {
            return Err(ApiError::Internal);
        };
        if logprobs && monitor.throttled(&tenant.id, now) {
            (true, Vec::new())
        } else {
            let o = monitor.observe(&tenant.id, now, prompt, logprobs, policy);
            (false, o.alarms)
        }
    };
    for signal in alarms {
        // The alarm fires when the window's count first exceeds the threshold.
        let (value, threshold) = match signal {
            Signal::LogprobVolume => (policy.max_logprob_requests + 1, policy.max_logprob_requests),
            Signal::NearDuplicates => (policy.max_near_duplicates + 1, policy.max_near_duplicates),
        };
        if let (Ok(t), Ok(sig)) = (
            audit::TenantId::new(tenant.id.clone()),
            audit::Label::new(signal.as_str()),
        ) {
            app.gate
                .audit
                .record_in_background(AuditEvent::ExtractionAlarm {
                    tenant: t,
                    signal: sig,
                    value: u64::from(value),
                    threshold: u64::from(threshold),
                });
        }
        app.gate
            .metrics
            .extraction_alarms
            .get_or_create(&ExtractionLabels {
                tenant: tenant.id.clone(),
                signal: signal.as_str(),
            })
            .inc();
        tracing::warn!(
            tenant = %tenant.id,
            signal = signal.as_str(),
            cooldown_secs = policy.cooldown_secs,
            "extraction alarm: logprob requests paused"
        );
    }
    if throttled {
        app.gate.metrics.reject(&tenant.id, "extraction_throttled");
        return Err(ApiError::ExtractionThrottled);
    }
    Ok(())
}

/// Counts one logprob-bearing request against the tenant's daily budget, or refuses it.
fn take_logprob_budget(app: &AppState, tenant: &Tenant) -> Result<(), ApiError> {
    let day = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400);
    let limit = tenant.plan.confidence.logprob_requests_per_day;
    let ok = app
        .logprob_budget
        .lock()
        .is_ok_and(|mut b| b.try_take(&tenant.id, day, limit));
    if ok {
        Ok(())
    } else {
        Err(ApiError::InvalidRequest {
            message: "the daily budget of logprob requests of this plan's confidence policy is \
                      spent; retry without `logprobs` or tomorrow (UTC)"
                .into(),
            param: Some("logprobs"),
            code: Some("logprob_budget_exhausted"),
        })
    }
}

/// Time to first token and between pieces of text, per tenant.
struct Timing {
    started: Instant,
    last: Option<Instant>,
    ttft: Histogram,
    inter: Histogram,
}

impl Timing {
    fn new(app: &AppState, tenant: &str) -> Self {
        let label = Metrics::tenant(tenant);
        Timing {
            started: Instant::now(),
            last: None,
            ttft: app.gate.metrics.ttft.get_or_create(&label).clone(),
            inter: app.gate.metrics.inter_token.get_or_create(&label).clone(),
        }
    }

    fn text(&mut self) {
        let now = Instant::now();
        match self.last {
            None => self.ttft.observe((now - self.started).as_secs_f64()),
            Some(prev) => self.inter.observe((now - prev).as_secs_f64()),
        }
        self.last = Some(now);
    }
}

async fn collect(
    meta: Meta,
    mut rx: mpsc::Receiver<GenEvent>,
    mut timing: Timing,
) -> Result<Value, ApiError> {
    let mut text = String::new();
    let mut lps = Vec::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            GenEvent::Text(t) => {
                timing.text();
                text.push_str(&t);
            }
            GenEvent::Logprob(lp) => lps.push(lp),
            GenEvent::Done {
                reason,
                prompt_tokens,
                completion_tokens,
            } => {
                let decision = check_output(&meta.output, &text);
                note_pii(
                    &meta.metrics,
                    &meta.tenant,
                    decision.action,
                    &decision.matches,
                );
                let text = decision.text.into_owned();
                let logprobs = meta.logprobs_json(&lps, &mut 0);
                let choice = match meta.kind {
                    Kind::Completion => json!({
                        "index": 0, "text": text, "logprobs": logprobs,
                        "finish_reason": reason.as_str(),
                    }),
                    Kind::Chat => json!({
                        "index": 0,
                        "message": { "role": "assistant", "content": text, "refusal": null },
                        "logprobs": logprobs,
                        "finish_reason": reason.as_str(),
                    }),
                };
                return Ok(meta.object(
                    choice,
                    Some(usage(prompt_tokens, completion_tokens)),
                    false,
                ));
            }
            GenEvent::Failed(e) => return Err(ApiError::Engine(e)),
        }
    }
    Err(ApiError::Internal)
}

struct StreamState {
    meta: Meta,
    rx: mpsc::Receiver<GenEvent>,
    timing: Timing,
    /// Logprobs of tokens whose text has not been sent yet.
    lps: Vec<TokenLogprob>,
    /// Completions' `text_offset` of the next token.
    offset: usize,
    /// The output guard over the streamed text.
    redactor: StreamRedactor,
}

/// Turns engine events into SSE events. Dropping the response (client gone) drops `rx`, which
/// the engine notices at its next token.
fn sse(
    meta: Meta,
    rx: mpsc::Receiver<GenEvent>,
    include_usage: bool,
    timing: Timing,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let first = (meta.kind == Kind::Chat).then(|| {
        let mut v = meta.delta(None, None, &mut Vec::new(), &mut 0);
        v["choices"][0]["logprobs"] = Value::Null;
        v["choices"][0]["delta"] = json!({ "role": "assistant", "content": "" });
        v
    });
    let state = StreamState {
        redactor: StreamRedactor::new(&meta.output),
        meta,
        rx,
        timing,
        lps: Vec::new(),
        offset: 0,
    };
    let body = stream::unfold(Some(state), move |state| async move {
        let StreamState {
            meta,
            mut rx,
            mut timing,
            mut lps,
            mut offset,
            mut redactor,
        } = state?;
        let ev = rx.recv().await;
        let (events, next) = match ev {
            Some(GenEvent::Text(t)) => {
                // The output guard may hold back a possible PII value until it is decided.
                let t = redactor.push(&t);
                if t.is_empty() {
                    (Vec::new(), true)
                } else {
                    timing.text();
                    (
                        vec![meta.delta(Some(&t), None, &mut lps, &mut offset)],
                        true,
                    )
                }
            }
            Some(GenEvent::Logprob(lp)) => {
                // Sent with the text it belongs to (or with the final chunk).
                lps.push(lp);
                (Vec::new(), true)
            }
            Some(GenEvent::Done {
                reason,
                prompt_tokens,
                completion_tokens,
            }) => {
                let mut out = Vec::new();
                let rest = redactor.finish();
                note_pii(
                    &meta.metrics,
                    &meta.tenant,
                    meta.output.action,
                    redactor.matches(),
                );
                if !rest.is_empty() {
                    out.push(meta.delta(Some(&rest), None, &mut lps, &mut offset));
                }
                out.push(meta.delta(None, Some(reason.as_str()), &mut lps, &mut offset));
                if include_usage {
                    let mut u = meta.object(
                        json!(null),
                        Some(usage(prompt_tokens, completion_tokens)),
                        true,
                    );
                    u["choices"] = json!([]);
                    out.push(u);
                }
                (out, false)
            }
            Some(GenEvent::Failed(e)) => (vec![ApiError::Engine(e).body()], false),
            None => (vec![ApiError::Internal.body()], false),
        };
        let mut items: Vec<Event> = events
            .into_iter()
            .map(|v| Event::default().data(v.to_string()))
            .collect();
        if !next {
            items.push(Event::default().data("[DONE]"));
        }
        let state = StreamState {
            meta,
            rx,
            timing,
            lps,
            offset,
            redactor,
        };
        Some((stream::iter(items), next.then_some(state)))
    })
    .flatten();
    let head = stream::iter(first.map(|v| Event::default().data(v.to_string())));
    Sse::new(head.chain(body).map(Ok)).keep_alive(KeepAlive::default())
}

/// `GET /v1/models`.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "inference",
    responses((status = 200, description = "The models this tenant may use.",
        body = crate::api::openapi::ModelList)),
)]
pub async fn models(State(app): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.principal.require(Scope::Inference)?;
    let data: Vec<Value> = [&app.model.id]
        .into_iter()
        .filter(|id| caller.tenant.plan.allows_model(id))
        .map(|id| json!({ "id": id, "object": "model", "created": app.model.created, "owned_by": "cloister" }))
        .collect();
    Ok(Json(json!({ "object": "list", "data": data })))
}
