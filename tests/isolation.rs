//! Cross-tenant visibility (P4): tenant A's usage, metrics and audit records are visible to
//! tenant B through no endpoint.
//!
//! Every route of `src/api/mod.rs` (public listener) and `src/api/admin.rs` (admin listener) is
//! called with tenant B's token carrying every non-admin scope, after tenant A has run
//! completions. A's id (`alpha-7f3e`, used by nothing else) must appear in no status line,
//! header or body B gets; admin routes and `/metrics` must refuse B on both listeners; and
//! `/v1/usage` must report B's own numbers whatever B adds to the request to name A. Positive
//! controls show the data exists: A's usage is non-zero, and an operator token sees A in
//! `/metrics` and `/admin/tenants`, as does the audit log on disk.
//! (`tests/tenancy.rs` covers the scope checks of `/v1/usage` and `/metrics` for one tenant.)

mod common;

use std::time::{Duration, Instant};

use cloister::auth::Scope;
use common::{client, figure, fixture, server, MODEL_ID};
use reqwest::Method;
use serde_json::{json, Value};

const A: &str = "alpha-7f3e";
const B: &str = "bravo-91c2";

/// Every scope a tenant (not an operator) can hold.
const TENANT_SCOPES: [Scope; 3] = [Scope::Inference, Scope::UsageRead, Scope::WatermarkDetect];

/// Public routes (src/api/mod.rs) with a valid body where they take one.
fn public_routes() -> Vec<(Method, &'static str, Option<Value>)> {
    vec![
        (
            Method::POST,
            "/v1/completions",
            Some(json!({"model": MODEL_ID, "prompt": "Hello", "max_tokens": 2})),
        ),
        (
            Method::POST,
            "/v1/chat/completions",
            Some(json!({"model": MODEL_ID, "max_tokens": 2,
                        "messages": [{"role": "user", "content": "Hello"}]})),
        ),
        (Method::GET, "/v1/models", None),
        (
            Method::POST,
            "/v1/watermark/detect",
            Some(json!({"text": "A short text that nobody watermarked at all."})),
        ),
        (Method::GET, "/v1/usage", None),
        (Method::GET, "/metrics", None),
        (Method::GET, "/healthz", None),
        (Method::GET, "/readyz", None),
        (Method::GET, "/v1/no-such-route", None),
    ]
}

/// Admin routes (src/api/admin.rs).
fn admin_routes() -> Vec<(Method, &'static str)> {
    vec![
        (Method::GET, "/admin/status"),
        (Method::POST, "/admin/reload"),
        (Method::GET, "/admin/audit/head"),
        (Method::POST, "/admin/audit/checkpoint"),
        (Method::GET, "/admin/tenants"),
        (Method::GET, "/metrics"),
    ]
}

struct Seen {
    status: u16,
    /// Status, headers and body as one text, for searching.
    all: String,
    body: String,
}

async fn call(base: &str, method: Method, path: &str, token: &str, body: Option<&Value>) -> Seen {
    let mut req = client()
        .request(method, format!("{base}{path}"))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(b);
    }
    let r = req.send().await.expect("send");
    let status = r.status().as_u16();
    let mut all = format!("{status}\n");
    for (k, v) in r.headers() {
        all.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("<binary>")));
    }
    let body = r.text().await.expect("body");
    all.push_str(&body);
    Seen { status, all, body }
}

/// Tenant A runs completions; returns once its usage is settled and non-zero.
async fn tenant_a_activity() -> Value {
    let a = fixture().token(A, &TENANT_SCOPES);
    for path in ["/v1/completions", "/v1/chat/completions"] {
        let (_, _, body) = public_routes()
            .into_iter()
            .find(|(_, p, _)| *p == path)
            .expect("route");
        let mut body = body.expect("body");
        body["max_tokens"] = json!(6);
        let seen = call(&server().url, Method::POST, path, &a, Some(&body)).await;
        assert_eq!(seen.status, 200, "{}", seen.body);
    }
    settled_usage(&a).await
}

async fn settled_usage(token: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = call(&server().url, Method::GET, "/v1/usage", token, None).await;
        assert_eq!(seen.status, 200, "{}", seen.body);
        let v: Value = serde_json::from_str(&seen.body).expect("json");
        if v["day"]["reserved_tokens"] == 0 || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Both tests make B spend tokens or read B's usage: one at a time, so B's numbers are stable.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn no_route_shows_tenant_b_anything_of_tenant_a() {
    let _serial = SERIAL.lock().await;
    let usage_a = tenant_a_activity().await;
    assert!(
        usage_a["day"]["used_tokens"].as_u64() > Some(0),
        "{usage_a}"
    );
    let b = fixture().token(B, &TENANT_SCOPES);
    let s = server();

    let mut leaks = Vec::new();
    let mut probed = 0;
    for (method, path, body) in public_routes() {
        let seen = call(&s.url, method.clone(), path, &b, body.as_ref()).await;
        probed += 1;
        if seen.all.contains(A) {
            leaks.push(format!("{method} {path}:\n{}", seen.all));
        }
        match path {
            "/metrics" => assert_eq!(seen.status, 403, "tenant token on /metrics"),
            "/v1/no-such-route" => assert_eq!(seen.status, 404),
            _ => assert_eq!(seen.status, 200, "{method} {path}: {}", seen.body),
        }
    }
    for (method, path) in admin_routes() {
        // On the admin listener: refused for lack of the admin scope.
        let seen = call(&s.admin_url, method.clone(), path, &b, None).await;
        probed += 1;
        assert_eq!(seen.status, 403, "{method} {path} (admin listener)");
        if seen.all.contains(A) {
            leaks.push(format!("admin {method} {path}:\n{}", seen.all));
        }
        // On the public listener the admin routes do not exist (metrics: see above).
        if path != "/metrics" {
            let seen = call(&s.url, method.clone(), path, &b, None).await;
            probed += 1;
            assert_eq!(seen.status, 404, "{method} {path} (public listener)");
            if seen.all.contains(A) {
                leaks.push(format!("public {method} {path}:\n{}", seen.all));
            }
        }
    }
    figure("isolation.calls", probed);
    figure("isolation.leaks", leaks.len());
    assert!(
        leaks.is_empty(),
        "tenant A visible to B:\n{}",
        leaks.join("\n")
    );

    // Controls: the data B was refused exists and names A.
    let admin = fixture().token(B, &[Scope::Admin]);
    for path in ["/metrics", "/admin/tenants"] {
        let seen = call(&s.admin_url, Method::GET, path, &admin, None).await;
        assert_eq!(seen.status, 200);
        assert!(
            seen.body.contains(A),
            "{path} does not mention A:\n{}",
            seen.body
        );
    }
    let audit = std::fs::read_to_string(&fixture().cfg.audit.path).expect("audit log");
    assert!(audit.contains(A), "the audit log does not mention A");
}

#[tokio::test]
async fn usage_is_the_callers_own_whatever_the_request_says() {
    let _serial = SERIAL.lock().await;
    let usage_a = tenant_a_activity().await;
    let used_a = usage_a["day"]["used_tokens"].as_u64().expect("used");
    let b = fixture().token(B, &TENANT_SCOPES);
    let own = settled_usage(&b).await;
    assert_eq!(own["tenant"], B);
    let used_b = own["day"]["used_tokens"].as_u64().expect("used");
    assert_ne!(
        used_a, used_b,
        "A and B must differ for this test to mean anything"
    );

    let queries = [
        format!("tenant={A}"),
        format!("tenant_id={A}"),
        format!("tenant={A}&tenant={A}"),
        format!("user={A}"),
        format!("org={A}"),
        format!("organization={A}"),
        format!("project={A}"),
        format!("sub={A}"),
        format!("id={A}"),
        format!("tenant[]={A}"),
        format!("filter[tenant]={A}"),
        "tenant=*".to_string(),
        "all=true".to_string(),
    ];
    let headers = [
        ("x-tenant", A),
        ("x-tenant-id", A),
        ("openai-organization", A),
        ("openai-project", A),
        ("x-forwarded-user", A),
    ];
    // B's token with A's name as its subject: the tenant claim decides, not the subject.
    let b_as_a_subject = {
        let f = fixture();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("time")
            .as_secs();
        f.issuer()
            .mint(cloister::auth::MintRequest {
                issuer: common::ISSUER.into(),
                audience: common::AUDIENCE.into(),
                subject: A.into(),
                tenant: cloister::auth::TenantId::new(B).expect("tenant"),
                scopes: TENANT_SCOPES.into_iter().collect(),
                ttl_secs: 300,
                now_unix: now,
            })
            .expect("mint")
    };

    let mut requests = Vec::new();
    for q in &queries {
        requests.push((
            format!("?{q}"),
            client()
                .get(format!("{}/v1/usage?{q}", server().url))
                .bearer_auth(&b),
        ));
    }
    for (name, value) in headers {
        requests.push((
            format!("header {name}"),
            client()
                .get(format!("{}/v1/usage", server().url))
                .bearer_auth(&b)
                .header(name, value),
        ));
    }
    requests.push((
        "subject = A".into(),
        client()
            .get(format!("{}/v1/usage", server().url))
            .bearer_auth(&b_as_a_subject),
    ));
    for (what, req) in requests {
        let r = req.send().await.expect("send");
        let status = r.status().as_u16();
        let body = r.text().await.expect("body");
        // Refusing the request outright would be as good as ignoring the parameter.
        if status != 200 {
            assert!(
                (400..500).contains(&status) && !body.contains(A),
                "{what}: {status} {body}"
            );
            continue;
        }
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["tenant"], B, "{what}: {body}");
        assert_eq!(
            v["day"]["used_tokens"].as_u64(),
            Some(used_b),
            "{what}: {body}"
        );
        assert_eq!(v["month"], own["month"], "{what}: {body}");
        assert!(!body.contains(A), "{what}: {body}");
    }
}
