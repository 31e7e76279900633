//! Reading what a GGUF file says about itself: hyper-parameters, tokenizer, chat template.
//!
//! The tokenizer is rebuilt from `tokenizer.ggml.*` as a Hugging Face `tokenizers` BPE: byte
//! level with the pre-tokenizer llama.cpp uses for the file's `tokenizer.ggml.pre` (`gpt2`
//! model), or SentencePiece's score-ranked BPE with byte fallback (`llama` model), so ids match
//! llama.cpp's.
//! A `tokenizer.json` beside the GGUF file takes precedence when present.

use crate::error::{Error, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use std::collections::HashMap;
use std::path::Path;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{
    NormalizerWrapper, Prepend, Replace, Sequence as NormalizerSequence,
};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// Opens a GGUF file and reads its header (metadata and tensor index); the file is returned
/// positioned for reading tensors.
pub(crate) fn read_gguf(path: &Path) -> Result<(Content, std::fs::File)> {
    let mut file =
        std::fs::File::open(path).map_err(Error::io(format!("opening {}", path.display())))?;
    let content = Content::read(&mut file).map_err(|e| Error::ModelInvalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok((content, file))
}

/// Typed access to GGUF metadata with errors that name the missing key.
#[derive(Debug)]
pub(crate) struct Meta<'a> {
    pub(crate) md: &'a HashMap<String, Value>,
    pub(crate) path: &'a Path,
}

impl<'a> Meta<'a> {
    pub(crate) fn new(content: &'a Content, path: &'a Path) -> Self {
        Self {
            md: &content.metadata,
            path,
        }
    }

    fn invalid(&self, reason: String) -> Error {
        Error::ModelInvalid {
            path: self.path.to_path_buf(),
            reason,
        }
    }

    pub(crate) fn get(&self, key: &str) -> Result<&'a Value> {
        self.md
            .get(key)
            .ok_or_else(|| self.invalid(format!("GGUF metadata has no `{key}`")))
    }

    pub(crate) fn str(&self, key: &str) -> Result<&'a str> {
        self.get(key)?
            .to_string()
            .map(String::as_str)
            .map_err(|e| self.invalid(format!("`{key}`: {e}")))
    }

    pub(crate) fn usize(&self, key: &str) -> Result<usize> {
        let v = self.get(key)?;
        let n = match v {
            Value::U8(x) => *x as u64,
            Value::U16(x) => *x as u64,
            Value::U32(x) => *x as u64,
            Value::U64(x) => *x,
            Value::I8(x) => *x as u64,
            Value::I16(x) => *x as u64,
            Value::I32(x) => *x as u64,
            Value::I64(x) => *x as u64,
            other => return Err(self.invalid(format!("`{key}` is not an integer: {other:?}"))),
        };
        Ok(n as usize)
    }

    pub(crate) fn f32(&self, key: &str) -> Result<f32> {
        self.get(key)?
            .to_f32()
            .map_err(|e| self.invalid(format!("`{key}`: {e}")))
    }

    fn strings(&self, key: &str) -> Result<Vec<String>> {
        let arr = self
            .get(key)?
            .to_vec()
            .map_err(|e| self.invalid(format!("`{key}`: {e}")))?;
        arr.iter()
            .map(|v| {
                v.to_string()
                    .cloned()
                    .map_err(|e| self.invalid(format!("`{key}`: {e}")))
            })
            .collect()
    }
}

/// The decoder's tokenizer plus the ids generation needs to know about.
#[derive(Debug, Clone)]
pub struct DecoderVocab {
    pub tokenizer: Tokenizer,
    pub bos: Option<(u32, String)>,
    pub eos: Option<(u32, String)>,
    /// Whether llama.cpp would prepend BOS to a raw prompt.
    pub add_bos: bool,
    /// Tokens that end generation: EOS, plus end-of-turn control tokens the template emits.
    pub stop_ids: Vec<u32>,
}

/// llama.cpp's `smollm`/`gpt2` style pre-tokenizer regex.
const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// llama.cpp's `llama3`/`llama-bpe` pre-tokenizer regex.
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// llama.cpp's `qwen2` pre-tokenizer regex.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn regex_then_bytes(regex: &str) -> Result<Sequence> {
    let split = Split::new(
        SplitPattern::Regex(regex.into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )?;
    Ok(Sequence::new(vec![
        split.into(),
        ByteLevel::new(false, true, false).into(),
    ]))
}

/// Builds the decoder vocabulary from GGUF metadata, or from `tokenizer.json` next to `gguf`.
pub(crate) fn decoder_vocab(meta: &Meta<'_>, gguf: &Path) -> Result<DecoderVocab> {
    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let sidecar = gguf.with_file_name("tokenizer.json");
    let mut tokenizer = if sidecar.is_file() {
        Tokenizer::from_file(&sidecar)?
    } else {
        let model = meta.str("tokenizer.ggml.model")?;
        match model {
            "gpt2" => byte_level_bpe(meta, &tokens)?,
            "llama" => sentencepiece_bpe(meta, &tokens)?,
            _ => {
                return Err(meta.invalid(format!(
                    "tokenizer model `{model}` is not supported (byte-level BPE `gpt2` and \
                     SentencePiece BPE `llama` are); put a tokenizer.json beside the GGUF file"
                )));
            }
        }
    };
    tokenizer.with_padding(None);
    tokenizer.with_truncation(None)?;
    let id_tok = |key: &str| {
        meta.usize(key)
            .ok()
            .and_then(|i| tokens.get(i).map(|t| (i as u32, t.clone())))
    };
    let bos = id_tok("tokenizer.ggml.bos_token_id");
    let eos = id_tok("tokenizer.ggml.eos_token_id");
    // SentencePiece vocabularies start prompts with BOS unless the file says otherwise (as
    // llama.cpp does).
    let add_bos = match meta.get("tokenizer.ggml.add_bos_token") {
        Ok(v) => v.to_bool().map_err(|e| meta.invalid(e.to_string()))?,
        Err(_) => meta.str("tokenizer.ggml.model").is_ok_and(|m| m == "llama"),
    };
    let mut stop_ids: Vec<u32> = eos.iter().map(|(i, _)| *i).collect();
    for name in [
        "<|im_end|>",
        "<|eot_id|>",
        "<|end_of_text|>",
        "<|endoftext|>",
        "<end_of_turn>",
        "<|end|>",
    ] {
        if let Some(i) = tokens.iter().position(|t| t == name) {
            stop_ids.push(i as u32);
        }
    }
    stop_ids.sort_unstable();
    stop_ids.dedup();
    Ok(DecoderVocab {
        tokenizer,
        bos,
        eos,
        add_bos,
        stop_ids,
    })
}

/// Control (3) and user-defined (4) tokens, matched whole in the input as llama.cpp does when
/// it parses special tokens.
fn special_tokens(meta: &Meta<'_>, tokens: &[String]) -> Vec<AddedToken> {
    match meta.get("tokenizer.ggml.token_type") {
        Ok(Value::Array(types)) => types
            .iter()
            .enumerate()
            .filter(|(_, t)| matches!(t.to_i32(), Ok(3 | 4)))
            .filter_map(|(i, _)| tokens.get(i))
            .map(|t| AddedToken::from(t.clone(), true))
            .collect(),
        _ => Vec::new(),
    }
}

/// `tokenizer.ggml.model = "llama"`: SentencePiece's BPE (Llama 2, Mistral, Phi-3, Gemma), as
/// llama.cpp runs it. Spaces become `▁` (and a `▁` starts every run of text between special
/// tokens unless `add_space_prefix` is false); then the adjacent pair whose joined piece has the
/// highest score merges first, and what no piece covers falls back to `<0xXX>` byte tokens. As
/// a Hugging Face BPE: a merge for every split of every normal piece into two pieces, ranked
/// by the joined piece's score.
fn sentencepiece_bpe(meta: &Meta<'_>, tokens: &[String]) -> Result<Tokenizer> {
    let scores: Vec<f32> = meta
        .get("tokenizer.ggml.scores")?
        .to_vec()
        .map_err(|e| meta.invalid(format!("`tokenizer.ggml.scores`: {e}")))?
        .iter()
        .map(|v| v.to_f32())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| meta.invalid(format!("`tokenizer.ggml.scores`: {e}")))?;
    if scores.len() != tokens.len() {
        return Err(meta.invalid(format!(
            "{} scores for {} tokens",
            scores.len(),
            tokens.len()
        )));
    }
    let types: Vec<i32> = match meta.get("tokenizer.ggml.token_type") {
        Ok(Value::Array(t)) => t.iter().map(|v| v.to_i32().unwrap_or(1)).collect(),
        _ => vec![1; tokens.len()],
    };
    let normal = |i: usize| types.get(i).copied().unwrap_or(1) == 1;
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let mut ranked: Vec<(f32, usize, String, String)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        if !normal(id) {
            continue;
        }
        for (cut, _) in piece.char_indices().skip(1) {
            let (a, b) = piece.split_at(cut);
            if vocab.contains_key(a) && vocab.contains_key(b) {
                ranked.push((scores[id], id, a.to_string(), b.to_string()));
            }
        }
    }
    ranked.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
    let merges: Vec<(String, String)> = ranked.into_iter().map(|(_, _, a, b)| (a, b)).collect();
    let mut bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = types
        .iter()
        .position(|&t| t == 2)
        .and_then(|i| tokens.get(i))
    {
        bpe = bpe.unk_token(unk.clone());
    }
    let mut tk = Tokenizer::new(bpe.build()?);
    let space_prefix = match meta.get("tokenizer.ggml.add_space_prefix") {
        Ok(v) => v.to_bool().map_err(|e| meta.invalid(e.to_string()))?,
        Err(_) => true,
    };
    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    if space_prefix {
        normalizers.push(Prepend::new("▁".into()).into());
    }
    normalizers.push(Replace::new(" ", "▁")?.into());
    tk.with_normalizer(Some(NormalizerSequence::new(normalizers)))?;
    tk.with_decoder(Some(DecoderSequence::new(vec![
        DecoderWrapper::Replace(Replace::new("▁", " ")?),
        ByteFallback::new().into(),
        Fuse::new().into(),
        Strip::new(' ', usize::from(space_prefix), 0).into(),
    ])));
    tk.add_special_tokens(special_tokens(meta, tokens))?;
    Ok(tk)
}

/// `tokenizer.ggml.model = "gpt2"`: byte-level BPE with the pre-tokenizer llama.cpp uses for
/// the file's `tokenizer.ggml.pre`.
fn byte_level_bpe(meta: &Meta<'_>, tokens: &[String]) -> Result<Tokenizer> {
    let merges: Vec<(String, String)> = meta
        .strings("tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| meta.invalid(format!("malformed merge `{m}`")))
        })
        .collect::<Result<_>>()?;
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder().vocab_and_merges(vocab, merges).build()?;
    let mut tk = Tokenizer::new(bpe);
    let pre = meta.str("tokenizer.ggml.pre").unwrap_or("gpt2");
    match pre {
        "smollm" | "starcoder" | "refact" => {
            tk.with_pre_tokenizer(Some(Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])));
        }
        "llama3" | "llama-bpe" | "smaug-bpe" => {
            tk.with_pre_tokenizer(Some(regex_then_bytes(LLAMA3_REGEX)?));
        }
        "qwen2" | "deepseek-r1-qwen" => {
            tk.with_pre_tokenizer(Some(regex_then_bytes(QWEN2_REGEX)?));
        }
        _ => {
            tk.with_pre_tokenizer(Some(regex_then_bytes(GPT2_REGEX)?));
        }
    }
    tk.with_decoder(Some(ByteLevelDecoder::default()));
    // Control (3) and user-defined (4) tokens are matched whole in the input, as llama.cpp
    // does when it parses special tokens.
    tk.add_special_tokens(special_tokens(meta, tokens))?;
    Ok(tk)
}

/// One chat turn.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.to_string(),
            content: content.into(),
        }
    }
}

/// ChatML, used when a GGUF file carries no template.
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + \
                      message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if \
                      add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// A compiled Jinja chat template (the one stored in the GGUF file).
#[derive(Debug)]
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    bos: String,
    eos: String,
}

impl ChatTemplate {
    /// Compiles `source` (Hugging Face's Jinja dialect, with Python string methods).
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self> {
        let mut env = minijinja::Environment::new();
        // Hugging Face renders chat templates with both of these on.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template_owned("chat", source.to_string())?;
        Ok(Self {
            env,
            bos: bos.to_string(),
            eos: eos.to_string(),
        })
    }

    /// The template from GGUF metadata, or ChatML when there is none.
    pub(crate) fn from_meta(meta: &Meta<'_>, vocab: &DecoderVocab) -> Result<Self> {
        let source = meta.str("tokenizer.chat_template").unwrap_or(CHATML);
        let name =
            |t: &Option<(u32, String)>| t.as_ref().map(|(_, s)| s.clone()).unwrap_or_default();
        Self::new(source, &name(&vocab.bos), &name(&vocab.eos))
    }

    /// Renders `messages`; with `add_generation_prompt` the result ends where the assistant's
    /// answer begins.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self.env.get_template("chat")?;
        Ok(tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos,
            eos_token => self.eos,
        })?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_fallback_renders_turns_and_generation_prompt() {
        let t = ChatTemplate::new(CHATML, "", "<|im_end|>").unwrap();
        let s = t
            .render(
                &[
                    ChatMessage::new("system", "Be brief."),
                    ChatMessage::new("user", "Hi"),
                ],
                true,
            )
            .unwrap();
        assert_eq!(
            s,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_string_methods_and_raise_exception_work() {
        let t = ChatTemplate::new(
            "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}\
             {{ messages[0]['content'].strip().upper() }}",
            "",
            "",
        )
        .unwrap();
        assert_eq!(
            t.render(&[ChatMessage::new("user", "  hi ")], false)
                .unwrap(),
            "HI"
        );
        let err = t
            .render(&[ChatMessage::new("system", "x")], false)
            .unwrap_err();
        assert!(err.to_string().contains("first must be user"), "{err}");
    }
}
