//! The model's own chat template (Jinja, rendered with minijinja), tokenized
//! so that message content can never become control tokens.
//!
//! Rendering works on placeholders: every message content is replaced by a
//! random sentinel, the template is rendered, and the output is split at the
//! sentinels. Template text is scanned for control-token markup (trusted);
//! message content is only ever tokenized with
//! [`ModelTokenizer::encode_text`], which cannot emit control ids. Adjacent
//! plain-text runs (template text between control tokens plus content) are
//! tokenized together, so for benign content the ids equal
//! `encode_with_special(render_text(..))` exactly — byte-level BPE merges across
//! the template/content boundary stay as the model saw them in training.

use std::collections::hash_map::RandomState;
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};

use minijinja::value::{from_args, Value, ValueKind};
use minijinja::{context, Environment, Error, ErrorKind, State};
use serde::{Deserialize, Serialize};

use crate::tokenizer::bpe::{ModelTokenizer, TrustedSegment};
use crate::tokenizer::error::{Result, TokenizerError};
use crate::tokenizer::spec::TokenizerSpec;

const TEMPLATE_NAME: &str = "chat";

/// Who wrote a message. An enum so that no free text reaches the template's
/// role position (a free-form role would be an injection vector).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    /// The role name as chat templates expect it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One chat message. `content` is untrusted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    /// Convenience constructor.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// What the template sees for one message.
#[derive(Serialize)]
struct TemplateMessage<'a> {
    role: &'static str,
    content: &'a str,
}

/// A piece of rendered output: template text or a message's content.
enum Piece<'a> {
    Template(&'a str),
    Content(usize),
}

/// The compiled chat template. `Send + Sync`; compile once, share.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `spec.chat_template` with HF-compatible settings
    /// (`trim_blocks`, `lstrip_blocks`, `raise_exception`, common Python
    /// string/dict methods).
    pub fn from_spec(spec: &TokenizerSpec) -> Result<Self> {
        let source = spec
            .chat_template
            .as_ref()
            .ok_or(TokenizerError::NoChatTemplate)?;
        Self::from_source(source.clone(), spec)
    }

    /// Compiles an explicit template source (e.g. an operator override),
    /// taking BOS/EOS texts from `spec`.
    pub fn from_source(source: String, spec: &TokenizerSpec) -> Result<Self> {
        let token = |id: Option<u32>| {
            id.and_then(|id| spec.tokens.get(id as usize))
                .cloned()
                .unwrap_or_default()
        };
        let mut env = Environment::new();
        // transformers renders with trim_blocks/lstrip_blocks enabled.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_function("raise_exception", raise_exception);
        env.set_unknown_method_callback(python_method);
        env.add_template_owned(TEMPLATE_NAME, source)
            .map_err(|e| TokenizerError::TemplateCompile(describe(&e)))?;
        Ok(Self {
            env,
            bos_token: token(spec.bos_id),
            eos_token: token(spec.eos_id),
        })
    }

    /// Renders the prompt as text (for debugging and tests). Content is
    /// inserted verbatim; use [`render_ids`](Self::render_ids) for the model.
    pub fn render_text(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let (rendered, open) = self.render_with_sentinels(messages, add_generation_prompt)?;
        let mut out = String::with_capacity(rendered.len());
        for piece in split_sentinels(&rendered, &open, messages.len())? {
            match piece {
                Piece::Template(t) => out.push_str(t),
                Piece::Content(i) => out.push_str(&messages[i].content),
            }
        }
        Ok(out)
    }

    /// Renders and tokenizes the prompt. Control ids only ever come from the
    /// template text; message content goes through `encode_text`. BOS is
    /// prepended when the model asks for it and the template did not add it.
    pub fn render_ids(
        &self,
        tok: &ModelTokenizer,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        let (rendered, open) = self.render_with_sentinels(messages, add_generation_prompt)?;
        let mut ids = Vec::new();
        let mut plain = String::new();
        let flush = |plain: &mut String, ids: &mut Vec<u32>| -> Result<()> {
            if !plain.is_empty() {
                ids.extend(tok.encode_text(plain)?);
                plain.clear();
            }
            Ok(())
        };
        for piece in split_sentinels(&rendered, &open, messages.len())? {
            match piece {
                Piece::Content(i) => plain.push_str(&messages[i].content),
                Piece::Template(t) => {
                    for seg in tok.split_trusted(t) {
                        match seg {
                            TrustedSegment::Text(s) => plain.push_str(s),
                            TrustedSegment::Control(id) => {
                                flush(&mut plain, &mut ids)?;
                                ids.push(id);
                            }
                        }
                    }
                }
            }
        }
        flush(&mut plain, &mut ids)?;
        if let (true, Some(bos)) = (tok.add_bos(), tok.bos_id()) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    }

    /// Renders with each content replaced by `{open}{index}]]`; returns the
    /// output and `open`. The nonce is random per call and checked not to
    /// occur in any content, so content cannot forge a placeholder.
    fn render_with_sentinels(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<(String, String)> {
        let open = (0..8)
            .map(|_| format!("[[cloister-{}-", random_nonce()))
            .find(|open| !messages.iter().any(|m| m.content.contains(open.as_str())))
            .ok_or_else(|| {
                TokenizerError::TemplateRender("could not pick a unique content placeholder".into())
            })?;
        let sentinels: Vec<String> = (0..messages.len())
            .map(|i| format!("{open}{i}]]"))
            .collect();
        let tpl_messages: Vec<TemplateMessage<'_>> = messages
            .iter()
            .zip(&sentinels)
            .map(|(m, s)| TemplateMessage {
                role: m.role.as_str(),
                content: s,
            })
            .collect();
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| TokenizerError::TemplateRender(describe(&e)))?;
        let rendered = template
            .render(context! {
                messages => tpl_messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token.as_str(),
                eos_token => self.eos_token.as_str(),
            })
            .map_err(|e| TokenizerError::TemplateRender(describe(&e)))?;
        Ok((rendered, open))
    }
}

/// Splits rendered output at placeholders. Every message must appear at least
/// once, unmodified; a template that transforms or drops content is refused
/// rather than silently producing a different prompt.
fn split_sentinels<'a>(rendered: &'a str, open: &str, n: usize) -> Result<Vec<Piece<'a>>> {
    let bad = |what: &str| TokenizerError::TemplateRender(format!("chat template {what}"));
    let mut pieces = Vec::new();
    let mut seen = vec![false; n];
    let mut rest = rendered;
    while let Some(at) = rest.find(open) {
        if at > 0 {
            pieces.push(Piece::Template(&rest[..at]));
        }
        let after = &rest[at + open.len()..];
        let end = after
            .find("]]")
            .ok_or_else(|| bad("mangled a content placeholder"))?;
        let index: usize = after[..end]
            .parse()
            .map_err(|_| bad("mangled a content placeholder"))?;
        let slot = seen
            .get_mut(index)
            .ok_or_else(|| bad("mangled a content placeholder"))?;
        *slot = true;
        pieces.push(Piece::Content(index));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Template(rest));
    }
    if let Some(missing) = seen.iter().position(|s| !s) {
        return Err(bad(&format!(
            "dropped or transformed the content of message {missing}"
        )));
    }
    Ok(pieces)
}

/// 128 unpredictable bits from std's randomly keyed SipHash (no extra deps).
fn random_nonce() -> String {
    let mut out = String::with_capacity(32);
    for i in 0u64..2 {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(i);
        let _ = write!(out, "{:016x}", h.finish());
    }
    out
}

/// Full error text including minijinja's detail and source chain.
fn describe(e: &Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let _ = write!(msg, ": {s}");
        source = s.source();
    }
    msg
}

/// HF templates call `raise_exception("...")` to reject bad conversations.
fn raise_exception(msg: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

/// Python `str`/`dict` methods HF templates commonly use; minijinja only
/// calls this for methods it does not know itself.
fn python_method(
    _state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> std::result::Result<Value, Error> {
    if let Some(s) = value.as_str() {
        return string_method(s, method, args);
    }
    if value.kind() == ValueKind::Map {
        return map_method(value, method, args);
    }
    Err(Error::from(ErrorKind::UnknownMethod))
}

fn string_method(s: &str, method: &str, args: &[Value]) -> std::result::Result<Value, Error> {
    let strip_set = |args: &[Value]| -> std::result::Result<Option<Vec<char>>, Error> {
        let (chars,): (Option<String>,) = from_args(args)?;
        Ok(chars.map(|c| c.chars().collect()))
    };
    let v = match method {
        "strip" => match strip_set(args)? {
            Some(set) => Value::from(s.trim_matches(set.as_slice())),
            None => Value::from(s.trim()),
        },
        "lstrip" => match strip_set(args)? {
            Some(set) => Value::from(s.trim_start_matches(set.as_slice())),
            None => Value::from(s.trim_start()),
        },
        "rstrip" => match strip_set(args)? {
            Some(set) => Value::from(s.trim_end_matches(set.as_slice())),
            None => Value::from(s.trim_end()),
        },
        "startswith" => {
            let (p,): (String,) = from_args(args)?;
            Value::from(s.starts_with(p.as_str()))
        }
        "endswith" => {
            let (p,): (String,) = from_args(args)?;
            Value::from(s.ends_with(p.as_str()))
        }
        "upper" => {
            let () = from_args(args)?;
            Value::from(s.to_uppercase())
        }
        "lower" => {
            let () = from_args(args)?;
            Value::from(s.to_lowercase())
        }
        "replace" => {
            let (old, new): (String, String) = from_args(args)?;
            Value::from(s.replace(old.as_str(), new.as_str()))
        }
        "split" => {
            let (sep,): (Option<String>,) = from_args(args)?;
            let parts: Vec<Value> = match sep {
                Some(sep) if !sep.is_empty() => s.split(sep.as_str()).map(Value::from).collect(),
                Some(_) => return Err(Error::new(ErrorKind::InvalidOperation, "empty separator")),
                None => s.split_whitespace().map(Value::from).collect(),
            };
            Value::from(parts)
        }
        _ => return Err(Error::from(ErrorKind::UnknownMethod)),
    };
    Ok(v)
}

fn map_method(map: &Value, method: &str, args: &[Value]) -> std::result::Result<Value, Error> {
    match method {
        "items" => {
            let () = from_args(args)?;
            let items = map
                .try_iter()?
                .map(|k| {
                    let v = map.get_item(&k)?;
                    Ok(Value::from(vec![k, v]))
                })
                .collect::<std::result::Result<Vec<_>, Error>>()?;
            Ok(Value::from(items))
        }
        "keys" => {
            let () = from_args(args)?;
            Ok(Value::from(map.try_iter()?.collect::<Vec<_>>()))
        }
        "values" => {
            let () = from_args(args)?;
            let values = map
                .try_iter()?
                .map(|k| map.get_item(&k))
                .collect::<std::result::Result<Vec<_>, Error>>()?;
            Ok(Value::from(values))
        }
        "get" => {
            let (key, default): (Value, Option<Value>) = from_args(args)?;
            let v = map.get_item(&key)?;
            Ok(if v.is_undefined() {
                default.unwrap_or(Value::from(()))
            } else {
                v
            })
        }
        _ => Err(Error::from(ErrorKind::UnknownMethod)),
    }
}
