//! `tensors.safetensors`: the constant tensors a sampling loop needs besides the graphs.
//!
//! | name | dtype, shape | what |
//! |---|---|---|
//! | `prior_clip_mean`, `prior_clip_std` | f32 `[D]` | un-normalise the prior's result |
//! | `decoder_cfg_embedding` | f32 `[D]` | the text projection's learned unconditional image embedding |
//! | `uncond_input_ids` | i64 `[L]` | tokens of "" (`[bos, eos, pad…]`) |
//! | `uncond_attention_mask` | u8 `[L]` | mask of "" (`[1, 1, 0…]`) |
//! | `uncond_text_embeds`, `uncond_last_hidden_state` | f32 `[D]`, `[L, D]` | CLIP encodings of "" |
//!
//! Loading checks every required entry's dtype and shape and the tokens of "" against the
//! manifest's special ids, like `_check_tensors` in repository.py. Extra entries are kept.

use std::collections::BTreeMap;

use half::f16;
use ndarray::{Array1, Array2, ArrayD, IxDyn};
use safetensors::{Dtype, SafeTensors};

use crate::error::{Result, RuntimeError};
use crate::manifest::TextConfig;
use crate::value::TensorData;

/// The decoded tensors of tensors.safetensors, with typed access to the required ones.
#[derive(Debug, Clone)]
pub struct ModelTensors {
    /// Every entry of the file by name.
    all: BTreeMap<String, TensorData>,
}

/// CLIP's encoding of the empty prompt "", the unconditional branch of guidance.
#[derive(Debug, Clone, PartialEq)]
pub struct UncondText {
    /// Token ids `[L]`.
    pub input_ids: Array1<i64>,
    /// Attention mask `[L]` (true for start and end token).
    pub attention_mask: Array1<bool>,
    /// Projected pooled embedding `[D]`.
    pub text_embeds: Array1<f32>,
    /// Token states `[L, D]`.
    pub last_hidden_state: Array2<f32>,
}

fn asset_error(file: &str, message: impl Into<String>) -> RuntimeError {
    RuntimeError::Asset {
        file: file.to_string(),
        message: message.into(),
    }
}

fn decode_view(
    file: &str,
    name: &str,
    view: &safetensors::tensor::TensorView<'_>,
) -> Result<TensorData> {
    let shape = IxDyn(view.shape());
    let data = view.data();
    let bad = |e: ndarray::ShapeError| asset_error(file, format!("tensor '{name}': {e}"));
    Ok(match view.dtype() {
        Dtype::F32 => TensorData::F32(
            ArrayD::from_shape_vec(
                shape,
                data.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            )
            .map_err(bad)?,
        ),
        Dtype::F16 => TensorData::F16(
            ArrayD::from_shape_vec(
                shape,
                data.chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            )
            .map_err(bad)?,
        ),
        Dtype::I64 => TensorData::I64(
            ArrayD::from_shape_vec(
                shape,
                data.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("chunks of 8")))
                    .collect(),
            )
            .map_err(bad)?,
        ),
        Dtype::U8 => TensorData::U8(ArrayD::from_shape_vec(shape, data.to_vec()).map_err(bad)?),
        Dtype::BOOL => TensorData::Bool(
            ArrayD::from_shape_vec(shape, data.iter().map(|b| *b != 0).collect()).map_err(bad)?,
        ),
        other => {
            return Err(asset_error(
                file,
                format!("tensor '{name}' has unsupported dtype {other:?}"),
            ));
        }
    })
}

/// The safetensors dtype names used in messages (as the Python checker prints them).
fn st_name(data: &TensorData) -> &'static str {
    match data {
        TensorData::F32(_) => "F32",
        TensorData::F16(_) => "F16",
        TensorData::I64(_) => "I64",
        TensorData::Bool(_) => "BOOL",
        TensorData::U8(_) => "U8",
    }
}

impl ModelTensors {
    /// Decodes the file's bytes and checks the required entries against D, L and the special
    /// ids. `file` is the name used in messages.
    pub fn from_bytes(
        file: &str,
        bytes: &[u8],
        embedding_dim: usize,
        text: &TextConfig,
    ) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| asset_error(file, format!("cannot read: {e}")))?;
        let mut all = BTreeMap::new();
        for (name, view) in st.iter() {
            all.insert(name.to_string(), decode_view(file, name, &view)?);
        }
        let tensors = ModelTensors { all };

        let d = embedding_dim;
        let l = text.context_length;
        let required: [(&str, &str, Vec<usize>); 7] = [
            ("prior_clip_mean", "F32", vec![d]),
            ("prior_clip_std", "F32", vec![d]),
            ("decoder_cfg_embedding", "F32", vec![d]),
            ("uncond_input_ids", "I64", vec![l]),
            ("uncond_attention_mask", "U8", vec![l]),
            ("uncond_text_embeds", "F32", vec![d]),
            ("uncond_last_hidden_state", "F32", vec![l, d]),
        ];
        for (name, dtype, shape) in &required {
            let Some(t) = tensors.all.get(*name) else {
                return Err(asset_error(file, format!("missing tensor '{name}'")));
            };
            if t.shape() != shape.as_slice() {
                return Err(asset_error(
                    file,
                    format!(
                        "tensor '{name}' has shape {:?}, expected {shape:?}",
                        t.shape()
                    ),
                ));
            }
            if st_name(t) != *dtype {
                return Err(asset_error(
                    file,
                    format!("tensor '{name}' has dtype {}, expected {dtype}", st_name(t)),
                ));
            }
        }

        let uncond = tensors.uncond_text();
        let mut expected_ids = vec![text.pad_id; l];
        expected_ids[0] = text.bos_id;
        expected_ids[1] = text.eos_id;
        if uncond.input_ids.to_vec() != expected_ids {
            return Err(asset_error(
                file,
                "uncond_input_ids is not [bos_id, eos_id, pad_id...] (the tokens of \"\")",
            ));
        }
        let mask: Vec<bool> = (0..l).map(|i| i < 2).collect();
        let raw_mask = match tensors.all.get("uncond_attention_mask") {
            Some(TensorData::U8(m)) => m.iter().all(|v| *v <= 1),
            _ => false,
        };
        if !raw_mask || uncond.attention_mask.to_vec() != mask {
            return Err(asset_error(
                file,
                "uncond_attention_mask is not [1, 1, 0...] (the mask of \"\")",
            ));
        }
        Ok(tensors)
    }

    /// Any entry by name.
    pub fn get(&self, name: &str) -> Option<&TensorData> {
        self.all.get(name)
    }

    /// The names of every entry.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.all.keys().map(String::as_str)
    }

    /// A checked float32 entry as a vector. Panics only if `from_bytes`' checks were bypassed.
    fn vector(&self, name: &str) -> Array1<f32> {
        match self.all.get(name) {
            Some(TensorData::F32(a)) => a
                .clone()
                .into_dimensionality()
                .expect("shape checked at load; this is a bug"),
            _ => unreachable!("{name} was checked at load; this is a bug"),
        }
    }

    /// `prior_clip_mean` `[D]`.
    pub fn prior_clip_mean(&self) -> Array1<f32> {
        self.vector("prior_clip_mean")
    }

    /// `prior_clip_std` `[D]`.
    pub fn prior_clip_std(&self) -> Array1<f32> {
        self.vector("prior_clip_std")
    }

    /// `decoder_cfg_embedding` `[D]`.
    pub fn decoder_cfg_embedding(&self) -> Array1<f32> {
        self.vector("decoder_cfg_embedding")
    }

    /// CLIP's encoding of "".
    pub fn uncond_text(&self) -> UncondText {
        let ids = match self.all.get("uncond_input_ids") {
            Some(TensorData::I64(a)) => a.clone(),
            _ => unreachable!("uncond_input_ids was checked at load; this is a bug"),
        };
        let mask = match self.all.get("uncond_attention_mask") {
            Some(TensorData::U8(a)) => a.mapv(|v| v != 0),
            _ => unreachable!("uncond_attention_mask was checked at load; this is a bug"),
        };
        let hidden = match self.all.get("uncond_last_hidden_state") {
            Some(TensorData::F32(a)) => a.clone(),
            _ => unreachable!("uncond_last_hidden_state was checked at load; this is a bug"),
        };
        UncondText {
            input_ids: ids.into_dimensionality().expect("checked [L]"),
            attention_mask: mask.into_dimensionality().expect("checked [L]"),
            text_embeds: self.vector("uncond_text_embeds"),
            last_hidden_state: hidden.into_dimensionality().expect("checked [L, D]"),
        }
    }
}
