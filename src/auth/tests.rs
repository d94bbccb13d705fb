//! The JWT attack suite. Each test builds a token that is *otherwise valid* and breaks exactly
//! one thing, so it fails if that one protection is removed.
//!
//! Ed25519 keys are generated in-test. The ES256 and RSA fixtures below are test-only keys,
//! generated once for this file with Python `cryptography` 48 (no crate in our dependency set
//! generates P-256/RSA keys); they protect nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use rand::rngs::OsRng;
use serde_json::{json, Value};

use crate::auth::*;

const ES256_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgQrmxzfKOnLpPz6QW
ma4l+nquHW7DbRJNTa0Ggl99YqehRANCAASOKZLqiY73sBtmJX1M9vumkkvanYRS
yAcj1EaF/wpC6EuSyTGHJ5A6UPJZpGgPWIT0MsVeW204dxAtq9czOWqp
-----END PRIVATE KEY-----
";
const ES256_X: &str = "jimS6omO97AbZiV9TPb7ppJL2p2EUsgHI9RGhf8KQug";
const ES256_Y: &str = "S5LJMYcnkDpQ8lmkaA9YhPQyxV5bbTh3EC2r1zM5aqk";

const RSA2048_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC1qiw3ePn+6GBl
vqO2KWW5q3TO0x0vYB+f1S4mrAlvSmeRoMQvZIGXYJvmusm3fhvfbkT21hMDAQsm
uThG6naU/qPj3gBIilG2HDA5LukdUJ0jwBdoT86CI3G6JwGwHB4YnCH8GJAv5Nj+
OYv9lUEQ+tbOWPFDfcXHedKHd+NWG9twFor7HzBbBroeFnlErWuvueQCdg+82KTX
CSUmRIhTHNhmn++vBXBWcynVez1kBKfUi0XkqsqUoYnUuz5htO5+UPP9Ub83aU6N
TNP1u6m6AnPBQADEFfwSBKxDUqO5SIa+Sa6zXEee9jTNSo0LcgjKcV1MWwmgAhlx
GEURooOhAgMBAAECggEAA3qRxDIt32LFzcz7x5Y9W3PcFcXXLjwR/vaPHrB2scnj
99bzStEK5kI0WhPDnx7sG7g529w3mvwfIYu0dy8wPCQwMUHkEX+MlwctKTsrvaL4
j2GzUQ0OMFHLcLwkfSHcta3vvKsfv7sLKLsjYiTEjTWwfV0Yqakz62D61htGoDR6
EOe/PSEI+npklQbvgwfZiBIxWliwxt066hF0MVficDSNOGn9202KMK8FYqR7JL4N
USJnjxrzbZ2pRjSYiZ5GPkleMwVyjPiS76ShEf6ACjyN3/BYvBaJC1kA9TbwMtA/
Bw6lsX9j7VfRHQzPwydI9Ez5qcqo7l0meQ0dcBkyjQKBgQDsc3tcAvtfS0YRrQH7
vDmQs0mQsjuzHnofEJIo/ewhhAtJ4q20da0TajPBN6AUDMldNpDdq5kRf862hkZS
EKYwmFVPqMVk87Hckh70HmJW1jwuv5urkMdhgjcHrcMy5ucpsP8TZV1CdPzARxGs
eq6c8+ALKnPoPiyJEJtPqKjoewKBgQDEryFgJ5zB3K5JgOKbusNLZcAzYcMBh1FP
C/LABg9re2/qHHupULjzauDzMMB7tGmVcPRZotU8IKLpXSuKkIj03BEqRLWlCpNb
6BfnDrdafalH9zGObmhHXC9+MNA5L05s5pnNqMCDsD+IVoFUb4EavK0R7M0Ttdvr
uH1ETvB/kwKBgHx1TLlh2G6QcJFdP24B5UsFE/PV3RarNByl3Ek3XtNFbau2ZThX
uII/pH5PiTMEh/lIf3gumqNbYrMwelM38EIj7MPBUiWRIE25nBFi7OBIY+U3dfkY
e9oXcF/aVqS0ZXjMcXcEI9KXQXLz9ZmT+dUjiQpXjirwjwCWfSmw3TeBAoGBAJQC
TpVzec2Raj66FM2oP+rvSTHhccQmtpNLpIPIi7YQj+mXQZ/qtSPI3DtmBpOQ8puZ
AuipVtoGnVIL4QZHOik5qlkql575VGcnQ0WHl4crZUZYyRwsDaEVyE+oICnIZbYh
2sAfK7Bt44GPx4do2bjrHzqL/s/EXRkIHoxW8zitAoGAW1oBGLTeMF0uD/JzM22C
SVGgHV9J2rVhGXVSOayp/jHGZgvrgz8nUcNW0ykLOL66YZlGTswsSugq0CNq9dXT
va95SZ66NjSZhPJobWS65CvHSWp83vrzEggtMot+58nwtCUlvIJGQrJak+yLNtpp
QmGUqoLjnGM2OZy54LQLERw=
-----END PRIVATE KEY-----
";
const RSA2048_N: &str = "taosN3j5_uhgZb6jtilluat0ztMdL2Afn9UuJqwJb0pnkaDEL2SBl2Cb5rrJt34b325E9tYTAwELJrk4Rup2lP6j494ASIpRthwwOS7pHVCdI8AXaE_OgiNxuicBsBweGJwh_BiQL-TY_jmL_ZVBEPrWzljxQ33Fx3nSh3fjVhvbcBaK-x8wWwa6HhZ5RK1rr7nkAnYPvNik1wklJkSIUxzYZp_vrwVwVnMp1Xs9ZASn1ItF5KrKlKGJ1Ls-YbTuflDz_VG_N2lOjUzT9bupugJzwUAAxBX8EgSsQ1KjuUiGvkmus1xHnvY0zUqNC3IIynFdTFsJoAIZcRhFEaKDoQ";
/// Public modulus of a throwaway 1024-bit key: must be refused.
const RSA1024_N: &str = "vex3CV2dYBdLa7iEkkRxTleWJ7BUZLgFOvVU5wa4DBgYGviK5cbOU1Njeg6-f2Wn2INTi_Poa_J84dTXCMuyrvl8IkkptyM1q3BbuHYrEuaADWHsPysD7TN2o4OUqN2KpgVjbRQ3zWTzmE9APN_MzGCREjNahBmbzWi3ulqw_nE";

const ISS: &str = "https://idp.example";
const AUD: &str = "cloister";
const NOW: u64 = 1_700_000_000;
const ED_KID: &str = "ed-1";
const ES_KID: &str = "es-1";
const RS_KID: &str = "rs-1";

// ---------- helpers ----------

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn dev(kid: &str) -> DevIssuer {
    DevIssuer::generate(&mut OsRng, kid).unwrap()
}

fn es_jwk(kid: &str) -> Value {
    json!({"kty":"EC","crv":"P-256","x":ES256_X,"y":ES256_Y,"kid":kid,"alg":"ES256","use":"sig"})
}

fn rs_jwk(kid: &str) -> Value {
    json!({"kty":"RSA","n":RSA2048_N,"e":"AQAB","kid":kid,"alg":"RS256"})
}

fn jwks_of(keys: Vec<Value>) -> Jwks {
    Jwks::from_json(json!({ "keys": keys }).to_string().as_bytes()).unwrap()
}

fn verifier_of(keys: Vec<Value>) -> JwtVerifier {
    JwtVerifier::new(jwks_of(keys), VerifyPolicy::new(ISS, AUD))
}

/// A dev issuer and a verifier that trusts it (plus the ES256 and RS256 fixtures).
fn setup() -> (DevIssuer, JwtVerifier) {
    let d = dev(ED_KID);
    let v = verifier_of(vec![d.public_jwk(), es_jwk(ES_KID), rs_jwk(RS_KID)]);
    (d, v)
}

fn good_claims() -> Value {
    json!({
        "iss": ISS, "aud": AUD, "sub": "alice", "tenant": "acme",
        "scope": "inference usage:read", "iat": NOW, "nbf": NOW, "exp": NOW + 600,
        "jti": "id-1"
    })
}

fn request() -> MintRequest {
    MintRequest {
        issuer: ISS.into(),
        audience: AUD.into(),
        subject: "alice".into(),
        tenant: TenantId::new("acme").unwrap(),
        scopes: [Scope::Inference, Scope::UsageRead].into_iter().collect(),
        ttl_secs: 600,
        now_unix: NOW,
    }
}

fn ed_key(d: &DevIssuer) -> EncodingKey {
    EncodingKey::from_ed_pem(d.to_pkcs8_pem().unwrap().as_bytes()).unwrap()
}

fn es_key() -> EncodingKey {
    EncodingKey::from_ec_pem(ES256_PEM.as_bytes()).unwrap()
}

/// Signs an arbitrary header and payload (raw bytes) with `key`/`alg` through jsonwebtoken,
/// independent of the code under test.
fn sign_raw(header: &[u8], payload: &[u8], key: &EncodingKey, alg: Algorithm) -> String {
    let input = format!("{}.{}", b64(header), b64(payload));
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).unwrap();
    format!("{input}.{sig}")
}

fn sign_json(header: Value, claims: Value, key: &EncodingKey, alg: Algorithm) -> String {
    sign_raw(
        header.to_string().as_bytes(),
        claims.to_string().as_bytes(),
        key,
        alg,
    )
}

/// An EdDSA token from `d` with the given claims.
fn ed_token(d: &DevIssuer, claims: Value) -> String {
    sign_json(
        json!({"alg":"EdDSA","typ":"JWT","kid":d.kid()}),
        claims,
        &ed_key(d),
        Algorithm::EdDSA,
    )
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().unwrap().remove(key);
    claims
}

// ---------- valid tokens ----------

#[test]
fn minted_token_verifies_to_principal() {
    let (d, v) = setup();
    let token = d.mint(request()).unwrap();
    let p = v.verify(&token, NOW + 1).unwrap();
    assert_eq!(p.tenant.as_str(), "acme");
    assert_eq!(p.subject, "alice");
    assert!(p.scopes.contains(Scope::Inference));
    assert!(p.scopes.contains(Scope::UsageRead));
    assert!(!p.scopes.contains(Scope::Admin));
    assert_eq!(p.expires_at, NOW + 600);
    assert_eq!(p.token_id.as_deref().map(str::len), Some(22));
    assert!(p.require(Scope::Inference).is_ok());
    // Two mints get different jti.
    let p2 = v.verify(&d.mint(request()).unwrap(), NOW).unwrap();
    assert_ne!(p.token_id, p2.token_id);
}

#[test]
fn hand_signed_eddsa_es256_rs256_verify() {
    let (d, v) = setup();
    let p = v.verify(&ed_token(&d, good_claims()), NOW).unwrap();
    assert_eq!(p.token_id.as_deref(), Some("id-1"));

    let es = sign_json(
        json!({"alg":"ES256","kid":ES_KID}),
        good_claims(),
        &es_key(),
        Algorithm::ES256,
    );
    assert_eq!(v.verify(&es, NOW).unwrap().tenant.as_str(), "acme");

    let rs_key = EncodingKey::from_rsa_pem(RSA2048_PEM.as_bytes()).unwrap();
    let rs = sign_json(
        json!({"alg":"RS256","kid":RS_KID}),
        good_claims(),
        &rs_key,
        Algorithm::RS256,
    );
    assert_eq!(v.verify(&rs, NOW).unwrap().subject, "alice");
}

#[test]
fn scope_as_array_and_audience_as_array() {
    let (d, v) = setup();
    let claims = with(good_claims(), "scope", json!(["admin", "unknown:x"]));
    let claims = with(claims, "aud", json!(["other", AUD]));
    let p = v.verify(&ed_token(&d, claims), NOW).unwrap();
    assert!(p.scopes.contains(Scope::Admin));
    assert!(!p.scopes.contains(Scope::Inference));
    // No scope claim at all: authenticated, but can do nothing.
    let p = v
        .verify(&ed_token(&d, without(good_claims(), "scope")), NOW)
        .unwrap();
    assert!(p.scopes.is_empty());
}

#[test]
fn missing_scope_is_403() {
    let (d, v) = setup();
    let p = v.verify(&d.mint(request()).unwrap(), NOW).unwrap();
    let err = p.require(Scope::Admin).unwrap_err();
    assert_eq!(err, AuthError::InsufficientScope(Scope::Admin));
    assert_eq!(err.http_status(), 403);
    assert_eq!(
        p.require(Scope::WatermarkDetect),
        Err(AuthError::InsufficientScope(Scope::WatermarkDetect))
    );
}

// ---------- header / structure ----------

#[test]
fn bearer_header_parsing() {
    assert_eq!(bearer_from_header(""), Err(AuthError::Missing));
    assert_eq!(bearer_from_header("Bearer "), Err(AuthError::Missing));
    assert_eq!(bearer_from_header("Bearer abc.def.ghi"), Ok("abc.def.ghi"));
    assert_eq!(bearer_from_header("bEARER abc"), Ok("abc"));
    assert_eq!(bearer_from_header("Basic abc"), Err(AuthError::Malformed));
    assert_eq!(bearer_from_header("Bearer  abc"), Err(AuthError::Malformed));
    assert_eq!(bearer_from_header("Bearer abc "), Err(AuthError::Malformed));
    assert_eq!(bearer_from_header("Bearer\tabc"), Err(AuthError::Malformed));
    assert_eq!(bearer_from_header("Bearerabc"), Err(AuthError::Malformed));
    let huge = format!("Bearer {}", "a".repeat(9000));
    assert_eq!(bearer_from_header(&huge), Err(AuthError::Malformed));
}

#[test]
fn empty_token_is_missing() {
    let (_, v) = setup();
    assert_eq!(v.verify("", NOW), Err(AuthError::Missing));
    assert_eq!(AuthError::Missing.http_status(), 401);
}

#[test]
fn malformed_tokens() {
    let (d, v) = setup();
    let good = d.mint(request()).unwrap();
    let parts: Vec<&str> = good.split('.').collect();
    let cases = [
        "abc".to_string(),
        format!("{}.{}", parts[0], parts[1]),
        format!("{good}.extra"),
        format!(".{}.{}", parts[1], parts[2]),
        format!("{}..{}", parts[0], parts[2]),
        // Characters outside base64url.
        format!("{}.{}+/.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}=.{}", parts[0], parts[1], parts[2]),
        // Base64url of a length that cannot occur (1 mod 4).
        format!("{}.A.{}", parts[0], parts[2]),
        // Header that is not JSON, and a JSON array header.
        format!("{}.{}.{}", b64("not json"), parts[1], parts[2]),
        format!("{}.{}.{}", b64("[\"EdDSA\"]"), parts[1], parts[2]),
        // Header without alg.
        format!(
            "{}.{}.{}",
            b64(json!({"kid":ED_KID}).to_string()),
            parts[1],
            parts[2]
        ),
        // Whitespace inside.
        format!("{} ", good),
    ];
    for t in &cases {
        assert_eq!(v.verify(t, NOW), Err(AuthError::Malformed), "{t}");
    }
}

#[test]
fn validly_signed_non_json_payload_is_malformed() {
    let (d, v) = setup();
    let header = json!({"alg":"EdDSA","kid":ED_KID}).to_string();
    for payload in [&b"not json"[..], b"[1,2,3]", b"{\"exp\":\"soon\"}"] {
        let t = sign_raw(header.as_bytes(), payload, &ed_key(&d), Algorithm::EdDSA);
        assert_eq!(v.verify(&t, NOW), Err(AuthError::Malformed));
    }
    // Duplicate claim names are refused, not resolved one way or another.
    let dup = br#"{"iss":"https://idp.example","aud":"cloister","sub":"a","tenant":"acme","tenant":"evil","exp":1700000600}"#;
    let t = sign_raw(header.as_bytes(), dup, &ed_key(&d), Algorithm::EdDSA);
    assert_eq!(v.verify(&t, NOW), Err(AuthError::Malformed));
}

#[test]
fn oversized_token_refused_even_if_valid() {
    let (d, v) = setup();
    let big = with(good_claims(), "pad", json!("x".repeat(9000)));
    let t = ed_token(&d, big);
    assert!(t.len() > DEFAULT_MAX);
    assert_eq!(v.verify(&t, NOW), Err(AuthError::Malformed));
    // The same token passes with a larger limit: the refusal above is the limit, nothing else.
    let mut policy = VerifyPolicy::new(ISS, AUD);
    policy.max_token_len = 64 * 1024;
    let roomy = JwtVerifier::new(v.jwks().clone(), policy);
    assert!(roomy.verify(&t, NOW).is_ok());
}
const DEFAULT_MAX: usize = verifier::DEFAULT_MAX_TOKEN_LEN;

// ---------- algorithm attacks ----------

#[test]
fn alg_none_refused() {
    let (d, v) = setup();
    let payload = b64(good_claims().to_string());
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = b64(json!({"alg":alg,"typ":"JWT","kid":d.kid()}).to_string());
        let unsigned = format!("{header}.{payload}.");
        assert_eq!(v.verify(&unsigned, NOW), Err(AuthError::Invalid), "{alg}");
        // With the real signature of a different header attached.
        let real_sig = d.mint(request()).unwrap();
        let sig = real_sig.rsplit('.').next().unwrap();
        let t = format!("{header}.{payload}.{sig}");
        assert_eq!(v.verify(&t, NOW), Err(AuthError::Invalid));
    }
}

#[test]
fn hs256_with_public_key_as_secret_refused() {
    let (d, v) = setup();
    let jwk = d.public_jwk();
    let x = jwk["x"].as_str().unwrap().to_owned();
    let raw_pub = URL_SAFE_NO_PAD.decode(&x).unwrap();
    let spki_pem = {
        // What an attacker would download: the public key in any of its encodings.
        use ed25519_dalek::pkcs8::{spki::der::pem::LineEnding, EncodePublicKey};
        let vk = ed25519_dalek::VerifyingKey::from_bytes(raw_pub.as_slice().try_into().unwrap())
            .unwrap();
        vk.to_public_key_pem(LineEnding::LF).unwrap()
    };
    let secrets: Vec<Vec<u8>> = vec![
        raw_pub,
        x.into_bytes(),
        jwk.to_string().into_bytes(),
        d.jwks_json().into_bytes(),
        spki_pem.into_bytes(),
    ];
    for (kid, alg_family) in [(ED_KID, "ed"), (ES_KID, "es"), (RS_KID, "rs")] {
        for secret in &secrets {
            for (alg, name) in [
                (Algorithm::HS256, "HS256"),
                (Algorithm::HS384, "HS384"),
                (Algorithm::HS512, "HS512"),
            ] {
                let t = sign_json(
                    json!({"alg":name,"kid":kid}),
                    good_claims(),
                    &EncodingKey::from_secret(secret),
                    alg,
                );
                assert_eq!(v.verify(&t, NOW), Err(AuthError::Invalid), "{alg_family}");
            }
        }
    }
}

#[test]
fn header_alg_differing_from_pinned_alg_refused() {
    let (d, v) = setup();
    // A genuine ES256 signature, presented under the Ed25519 key's kid (alg ES256 ≠ EdDSA).
    let t = sign_json(
        json!({"alg":"ES256","kid":ED_KID}),
        good_claims(),
        &es_key(),
        Algorithm::ES256,
    );
    assert_eq!(v.verify(&t, NOW), Err(AuthError::Invalid));
    // A genuine EdDSA signature claiming a different alg under its own kid.
    for alg in ["ES256", "RS256", "eddsa", "Ed25519", "PS256"] {
        let t = sign_json(
            json!({"alg":alg,"kid":ED_KID}),
            good_claims(),
            &ed_key(&d),
            Algorithm::EdDSA,
        );
        assert_eq!(v.verify(&t, NOW), Err(AuthError::Invalid), "{alg}");
    }
    // ES256 signature, header says ES256, kid of the RSA key.
    let t = sign_json(
        json!({"alg":"ES256","kid":RS_KID}),
        good_claims(),
        &es_key(),
        Algorithm::ES256,
    );
    assert_eq!(v.verify(&t, NOW), Err(AuthError::Invalid));
}

#[test]
fn crit_header_refused() {
    let (d, v) = setup();
    let t = sign_json(
        json!({"alg":"EdDSA","kid":ED_KID,"crit":["exp"]}),
        good_claims(),
        &ed_key(&d),
        Algorithm::EdDSA,
    );
    assert_eq!(v.verify(&t, NOW), Err(AuthError::Invalid));
}

// ---------- kid ----------

#[test]
fn unknown_and_missing_kid_refused() {
    let (d, v) = setup();
    let key = ed_key(&d);
    let unknown = sign_json(
        json!({"alg":"EdDSA","kid":"ed-2"}),
        good_claims(),
        &key,
        Algorithm::EdDSA,
    );
    assert_eq!(v.verify(&unknown, NOW), Err(AuthError::Invalid));
    let missing = sign_json(
        json!({"alg":"EdDSA"}),
        good_claims(),
        &key,
        Algorithm::EdDSA,
    );
    assert_eq!(v.verify(&missing, NOW), Err(AuthError::Invalid));
}

#[test]
fn signature_from_another_key_with_same_kid_refused() {
    let (_, v) = setup();
    let impostor = dev(ED_KID);
    let t = impostor.mint(request()).unwrap();
    assert_eq!(v.verify(&t, NOW), Err(AuthError::Invalid));
    // Also for ES256: a fresh Ed-free check that a valid-shape ES256 signature by a different
    // key fails (flip one bit of the ES256 signature).
    let es = sign_json(
        json!({"alg":"ES256","kid":ES_KID}),
        good_claims(),
        &es_key(),
        Algorithm::ES256,
    );
    let (input, sig) = es.rsplit_once('.').unwrap();
    let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    sig[10] ^= 1;
    let forged = format!("{input}.{}", b64(sig));
    assert_eq!(v.verify(&forged, NOW), Err(AuthError::Invalid));
}

#[test]
fn tampered_payload_refused() {
    let (d, v) = setup();
    let t = d.mint(request()).unwrap();
    let parts: Vec<&str> = t.split('.').collect();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims["tenant"] = json!("victim");
    let forged = format!("{}.{}.{}", parts[0], b64(claims.to_string()), parts[2]);
    assert_eq!(v.verify(&forged, NOW), Err(AuthError::Invalid));
    // Scope escalation, same story.
    claims["tenant"] = json!("acme");
    claims["scope"] = json!("inference admin");
    let forged = format!("{}.{}.{}", parts[0], b64(claims.to_string()), parts[2]);
    assert_eq!(v.verify(&forged, NOW), Err(AuthError::Invalid));
    // Tampered header (kid swapped to another trusted key) also fails.
    let header = b64(json!({"alg":"EdDSA","typ":"JWT","kid":ED_KID, "x":1}).to_string());
    let forged = format!("{header}.{}.{}", parts[1], parts[2]);
    assert_eq!(v.verify(&forged, NOW), Err(AuthError::Invalid));
}

// ---------- time ----------

#[test]
fn expiry_with_leeway() {
    let (d, v) = setup();
    let t = ed_token(&d, good_claims()); // exp = NOW + 600, leeway 30
    assert!(v.verify(&t, NOW + 600).is_ok(), "within leeway");
    assert!(v.verify(&t, NOW + 629).is_ok(), "last second of leeway");
    assert_eq!(v.verify(&t, NOW + 630), Err(AuthError::Expired));
    assert_eq!(v.verify(&t, NOW + 100_000), Err(AuthError::Expired));
    assert_eq!(AuthError::Expired.to_string(), "token expired");
    // Missing exp is not "never expires".
    let t = ed_token(&d, without(good_claims(), "exp"));
    assert_eq!(v.verify(&t, NOW), Err(AuthError::Invalid));
    // Fractional NumericDate is accepted (floored).
    let t = ed_token(
        &d,
        with(good_claims(), "exp", json!((NOW + 10) as f64 + 0.9)),
    );
    assert_eq!(v.verify(&t, NOW).unwrap().expires_at, NOW + 10);
    // Negative exp is malformed.
    let t = ed_token(&d, with(good_claims(), "exp", json!(-1)));
    assert_eq!(v.verify(&t, NOW), Err(AuthError::Malformed));
}

#[test]
fn nbf_and_iat_in_future_refused() {
    let (d, v) = setup();
    let future = with(good_claims(), "nbf", json!(NOW + 31));
    assert_eq!(
        v.verify(&ed_token(&d, future.clone()), NOW),
        Err(AuthError::NotYetValid)
    );
    assert!(v.verify(&ed_token(&d, future), NOW + 1).is_ok(), "leeway");
    let iat = with(good_claims(), "iat", json!(NOW + 3600));
    assert_eq!(
        v.verify(&ed_token(&d, iat), NOW),
        Err(AuthError::NotYetValid)
    );
}

// ---------- claims ----------

#[test]
fn wrong_or_missing_issuer() {
    let (d, v) = setup();
    for c in [
        with(good_claims(), "iss", json!("https://evil.example")),
        with(good_claims(), "iss", json!("https://idp.example/")),
        without(good_claims(), "iss"),
    ] {
        assert_eq!(v.verify(&ed_token(&d, c), NOW), Err(AuthError::WrongIssuer));
    }
}

#[test]
fn wrong_or_missing_audience() {
    let (d, v) = setup();
    for c in [
        with(good_claims(), "aud", json!("other")),
        with(good_claims(), "aud", json!(["other", "Cloister"])),
        with(good_claims(), "aud", json!([])),
        without(good_claims(), "aud"),
    ] {
        assert_eq!(
            v.verify(&ed_token(&d, c), NOW),
            Err(AuthError::WrongAudience)
        );
    }
}

#[test]
fn empty_policy_matches_nothing() {
    let d = dev(ED_KID);
    let v = JwtVerifier::new(jwks_of(vec![d.public_jwk()]), VerifyPolicy::new("", AUD));
    let c = with(good_claims(), "iss", json!(""));
    assert_eq!(v.verify(&ed_token(&d, c), NOW), Err(AuthError::WrongIssuer));
}

#[test]
fn missing_or_invalid_tenant_and_subject() {
    let (d, v) = setup();
    for c in [
        without(good_claims(), "tenant"),
        with(good_claims(), "tenant", json!("")),
        with(good_claims(), "tenant", json!("ACME")),
        with(good_claims(), "tenant", json!("a/../b")),
        without(good_claims(), "sub"),
        with(good_claims(), "sub", json!("")),
    ] {
        assert_eq!(v.verify(&ed_token(&d, c), NOW), Err(AuthError::Invalid));
    }
    // Wrong type is malformed.
    let c = with(good_claims(), "tenant", json!(42));
    assert_eq!(v.verify(&ed_token(&d, c), NOW), Err(AuthError::Malformed));
}

// ---------- JWKS ----------

#[test]
fn two_kids_at_once_and_removal() {
    let a = dev("key-a");
    let b = dev("key-b");
    let both = verifier_of(vec![a.public_jwk(), b.public_jwk(), es_jwk(ES_KID)]);
    let ta = a.mint(request()).unwrap();
    let tb = b.mint(request()).unwrap();
    let tes = sign_json(
        json!({"alg":"ES256","kid":ES_KID}),
        good_claims(),
        &es_key(),
        Algorithm::ES256,
    );
    assert!(both.verify(&ta, NOW).is_ok());
    assert!(both.verify(&tb, NOW).is_ok());
    assert!(both.verify(&tes, NOW).is_ok());
    assert_eq!(both.jwks().len(), 3);

    // Rotation: key-a is removed; its tokens stop working, the others keep working.
    let rotated = verifier_of(vec![b.public_jwk(), es_jwk(ES_KID)]);
    assert_eq!(rotated.verify(&ta, NOW), Err(AuthError::Invalid));
    assert!(rotated.verify(&tb, NOW).is_ok());
    assert!(rotated.verify(&tes, NOW).is_ok());
    let only_ed = verifier_of(vec![a.public_jwk()]);
    assert_eq!(only_ed.verify(&tes, NOW), Err(AuthError::Invalid));
}

fn jwks_err(keys: Vec<Value>) -> String {
    match Jwks::from_json(json!({ "keys": keys }).to_string().as_bytes()) {
        Err(AuthError::BadJwks(why)) => why,
        other => panic!("expected BadJwks, got {other:?}"),
    }
}

#[test]
fn jwks_refuses_symmetric_and_unpinned_keys() {
    let d = dev(ED_KID);
    let ed = d.public_jwk();
    let why = jwks_err(vec![
        json!({"kty":"oct","k":"c2VjcmV0","kid":"h","alg":"HS256"}),
    ]);
    assert!(why.contains("private/secret"), "{why}");
    let why = jwks_err(vec![json!({"kty":"oct","kid":"h","alg":"HS256"})]);
    assert!(why.contains("symmetric"), "{why}");
    for alg in ["HS256", "none", "RS384", "ES384", "PS256"] {
        let why = jwks_err(vec![with(ed.clone(), "alg", json!(alg))]);
        assert!(why.contains("refused"), "{alg}: {why}");
    }
    let why = jwks_err(vec![without(ed.clone(), "alg")]);
    assert!(why.contains("missing alg"), "{why}");
    let why = jwks_err(vec![without(ed.clone(), "kid")]);
    assert!(why.contains("missing kid"), "{why}");
    let why = jwks_err(vec![with(ed.clone(), "kid", json!(""))]);
    assert!(why.contains("kid"), "{why}");
    let why = jwks_err(vec![ed.clone(), with(es_jwk("x"), "kid", json!(ED_KID))]);
    assert!(why.contains("duplicate kid"), "{why}");
}

#[test]
fn jwks_refuses_bad_key_material() {
    let d = dev(ED_KID);
    let ed = d.public_jwk();
    let cases: Vec<(Value, &str)> = vec![
        // alg / kty / crv mismatches
        (with(ed.clone(), "alg", json!("ES256")), "kty"),
        (with(es_jwk("e"), "alg", json!("EdDSA")), "kty"),
        (with(ed.clone(), "crv", json!("X25519")), "crv"),
        (with(es_jwk("e"), "crv", json!("P-384")), "crv"),
        // wrong use / key_ops
        (with(ed.clone(), "use", json!("enc")), "use"),
        (with(ed.clone(), "key_ops", json!(["sign"])), "key_ops"),
        // bad lengths / encodings (31-byte x would panic inside jsonwebtoken's verifier)
        (with(ed.clone(), "x", json!(b64([1u8; 31]))), "x"),
        (with(ed.clone(), "x", json!(b64([1u8; 33]))), "x"),
        (with(ed.clone(), "x", json!("not base64!")), "x"),
        // small-order Ed25519 point (identity)
        (
            with(
                ed.clone(),
                "x",
                json!(b64({
                    let mut p = [0u8; 32];
                    p[0] = 1;
                    p
                })),
            ),
            "weak",
        ),
        // P-256 point not on the curve
        (
            with(es_jwk("e"), "y", json!(b64([7u8; 32]))),
            "crypto backend",
        ),
        // RSA too small, bad exponent
        (
            json!({"kty":"RSA","n":RSA1024_N,"e":"AQAB","kid":"r","alg":"RS256"}),
            "1024 bits",
        ),
        (with(rs_jwk("r"), "e", json!("Ag")), "e must be"),
        // private key material published
        (with(ed.clone(), "d", json!(b64([1u8; 32]))), "private"),
        // not an object
        (json!("key"), "object"),
    ];
    for (key, expect) in cases {
        let why = jwks_err(vec![key.clone()]);
        assert!(why.contains(expect), "{key}: {why}");
    }
}

#[test]
fn jwks_reports_every_problem_and_refuses_documents() {
    let why = jwks_err(vec![
        json!({"kty":"oct","kid":"a","alg":"HS256"}),
        json!({"kty":"OKP","crv":"Ed25519","alg":"EdDSA"}),
    ]);
    assert!(why.contains("key 0") && why.contains("key 1"), "{why}");
    for doc in [&b"not json"[..], b"{}", b"{\"keys\":[]}", b"[]"] {
        assert!(matches!(Jwks::from_json(doc), Err(AuthError::BadJwks(_))));
    }
    assert_eq!(AuthError::BadJwks(String::new()).http_status(), 500);
}

#[test]
fn jwks_debug_lists_kids_only() {
    let v = verifier_of(vec![es_jwk(ES_KID)]);
    let dbg = format!("{:?}", v.jwks());
    assert!(dbg.contains(ES_KID) && dbg.contains("ES256"));
    assert!(!dbg.contains(ES256_X));
    assert_eq!(v.jwks().alg_of(ES_KID), Some(SigningAlg::ES256));
    assert_eq!(v.jwks().kids().collect::<Vec<_>>(), vec![ES_KID]);
}

// ---------- dev issuer ----------

#[test]
fn dev_issuer_debug_hides_private_key() {
    let d = dev(ED_KID);
    let pem = d.to_pkcs8_pem().unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(body.len() > 40);
    let dbg = format!("{d:?}");
    assert!(!dbg.contains(&body), "{dbg}");
    for line in pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!dbg.contains(line));
    }
    assert!(dbg.contains("redacted"));
    // The raw 32-byte seed in any common encoding is absent too.
    let der_b64 = body.clone();
    let seed = &base64::engine::general_purpose::STANDARD
        .decode(der_b64)
        .unwrap()[16..48];
    assert!(!dbg.contains(&b64(seed)));
    assert!(!dbg.contains(&format!("{:?}", seed)));
    // Nor is it in the JWKS.
    assert!(!d.jwks_json().contains(&b64(seed)));
}

#[test]
fn dev_issuer_pem_roundtrip() {
    let d = dev(ED_KID);
    let pem = d.to_pkcs8_pem().unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    let back = DevIssuer::from_pkcs8_pem(ED_KID, &pem).unwrap();
    assert_eq!(back.jwks_json(), d.jwks_json());
    // A token from the reloaded key verifies against the original JWKS.
    let v = verifier_of(vec![d.public_jwk()]);
    assert!(v.verify(&back.mint(request()).unwrap(), NOW).is_ok());
    assert!(DevIssuer::from_pkcs8_pem(ED_KID, ES256_PEM).is_err());
    assert!(DevIssuer::from_pkcs8_pem(ED_KID, "garbage").is_err());
    // jwks_json parses as a JWKS with the right shape.
    let doc: Value = serde_json::from_str(&d.jwks_json()).unwrap();
    let k = &doc["keys"][0];
    assert_eq!(
        (
            k["kty"].as_str(),
            k["crv"].as_str(),
            k["alg"].as_str(),
            k["use"].as_str()
        ),
        (Some("OKP"), Some("Ed25519"), Some("EdDSA"), Some("sig"))
    );
}

#[test]
fn mint_validates_request() {
    let d = dev(ED_KID);
    let mut r = request();
    r.ttl_secs = 0;
    assert!(matches!(d.mint(r), Err(AuthError::SigningFailed(_))));
    let mut r = request();
    r.now_unix = u64::MAX;
    assert!(d.mint(r).is_err());
    let mut r = request();
    r.issuer.clear();
    assert!(d.mint(r).is_err());
    assert!(DevIssuer::generate(&mut OsRng, "").is_err());
    assert!(DevIssuer::generate(&mut OsRng, "has space").is_err());
}

#[test]
fn error_text_never_echoes_input() {
    let (d, v) = setup();
    let t = d.mint(request()).unwrap();
    let tampered = format!("{t}x");
    for token in [t.as_str(), tampered.as_str(), "a.b.c"] {
        for now in [0, NOW, u64::MAX] {
            if let Err(e) = v.verify(token, now) {
                let s = e.to_string();
                assert!(s.len() < 40 && !s.contains('.'), "{s}");
            }
        }
    }
}
