//! Prompts to token ids with the model's own tokenizer.json.
//!
//! The file carries CLIP's normaliser, BPE, special tokens, and the padding and truncation to
//! L = 77 (checked against the manifest when the repository is opened), so encoding a prompt
//! with `add_special_tokens` gives exactly the text encoder's input: `[bos, tokens…, eos, pad…]`.
//! A prompt is truncated when its tokens do not fit in L − 2; `tokenizers` then keeps the end
//! token and records the cut-off tail as overflow, which is how truncation is detected.

use std::path::Path;

use ndarray::{Array2, Axis};
use tokenizers::Tokenizer;

/// A batch of tokenised prompts.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBatch {
    /// `[B, L]` token ids.
    pub input_ids: Array2<i64>,
    /// `[B, L]`: true for start, prompt and end tokens; false for padding.
    pub attention_mask: Array2<bool>,
    /// Per prompt: whether its tail was cut.
    pub truncated: Vec<bool>,
    /// Per prompt: tokens including start and end, after truncation.
    pub token_counts: Vec<u32>,
}

/// The model's tokenizer, fixed to its context length.
#[derive(Debug, Clone)]
pub struct PromptTokenizer {
    /// tokenizer.json, with its padding and truncation.
    tokenizer: Tokenizer,
    /// L.
    context_length: usize,
}

impl PromptTokenizer {
    /// Loads tokenizer.json.
    pub fn from_file(path: &Path, context_length: usize) -> anyhow::Result<Self> {
        let tokenizer = Tokenizer::from_file(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot load the tokenizer: {e}", path.display()))?;
        Ok(Self {
            tokenizer,
            context_length,
        })
    }

    /// Tokenises `prompts` (CPU work: call it off the async runtime for large batches).
    pub fn encode(&self, prompts: &[String]) -> anyhow::Result<TokenBatch> {
        let l = self.context_length;
        let b = prompts.len();
        let mut input_ids = Array2::<i64>::zeros((b, l));
        let mut attention_mask = Array2::from_elem((b, l), false);
        let mut truncated = Vec::with_capacity(b);
        let mut token_counts = Vec::with_capacity(b);
        for (i, prompt) in prompts.iter().enumerate() {
            let encoding = self
                .tokenizer
                .encode(prompt.as_str(), true)
                .map_err(|e| anyhow::anyhow!("tokenizing prompt {i}: {e}"))?;
            let ids = encoding.get_ids();
            let mask = encoding.get_attention_mask();
            anyhow::ensure!(
                ids.len() == l && mask.len() == l,
                "the tokenizer produced {} tokens for prompt {i}, expected {l} (its padding \
                 and truncation must be fixed to the context length)",
                ids.len()
            );
            let mut row_ids = input_ids.index_axis_mut(Axis(0), i);
            row_ids
                .iter_mut()
                .zip(ids)
                .for_each(|(dst, src)| *dst = i64::from(*src));
            let mut row_mask = attention_mask.index_axis_mut(Axis(0), i);
            row_mask
                .iter_mut()
                .zip(mask)
                .for_each(|(dst, src)| *dst = *src != 0);
            truncated.push(!encoding.get_overflowing().is_empty());
            token_counts.push(mask.iter().filter(|m| **m != 0).count() as u32);
        }
        Ok(TokenBatch {
            input_ids,
            attention_mask,
            truncated,
            token_counts,
        })
    }
}
