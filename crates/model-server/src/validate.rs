//! Request checks shared by the services. Every failure is INVALID_ARGUMENT naming the field
//! and the limit ("prompts: must hold 1..=64 prompts, got 0"), so a bad request never reaches a
//! model and the service stays healthy.

use ndarray::{Array2, Array3, ArrayD, Ix2, Ix3};
use unclip_proto::v1::{Tensor, TextEncoding};
use unclip_proto::{Dim, check_finite, check_shape};
use unclip_runtime::ModelSizes;

use crate::error::ServiceError;

/// `count` items of a repeated field must be within 1..=`max`.
pub fn batch_size(field: &str, what: &str, count: usize, max: usize) -> Result<(), ServiceError> {
    if count == 0 || count > max {
        return Err(ServiceError::invalid(
            field,
            format!("must hold 1..={max} {what}, got {count}"),
        ));
    }
    Ok(())
}

/// A message field that must be set.
pub fn required<'a, T>(field: &str, value: Option<&'a T>) -> Result<&'a T, ServiceError> {
    value.ok_or_else(|| ServiceError::invalid(field, "is required"))
}

/// A FLOAT32/FLOAT16 tensor of the expected shape with only finite values, as float32.
pub fn float_tensor(
    field: &str,
    tensor: &Tensor,
    shape: &[Dim],
) -> Result<ArrayD<f32>, ServiceError> {
    let array = tensor
        .to_f32_array()
        .map_err(|e| ServiceError::tensor(field, e))?;
    check_shape(array.shape(), shape).map_err(|e| ServiceError::tensor(field, e))?;
    check_finite(&array.view()).map_err(|e| ServiceError::tensor(field, e))?;
    Ok(array)
}

/// A BOOL (or 0/1 UINT8) tensor of the expected shape.
pub fn bool_tensor(
    field: &str,
    tensor: &Tensor,
    shape: &[Dim],
) -> Result<ArrayD<bool>, ServiceError> {
    let array = tensor
        .to_bool_array()
        .map_err(|e| ServiceError::tensor(field, e))?;
    check_shape(array.shape(), shape).map_err(|e| ServiceError::tensor(field, e))?;
    Ok(array)
}

/// A decoded, checked [`TextEncoding`]: what the prior and the decoder condition on.
#[derive(Debug, Clone, PartialEq)]
pub struct TextConditioning {
    /// `[B, D]`.
    pub text_embeds: Array2<f32>,
    /// `[B, L, D]`.
    pub last_hidden_state: Array3<f32>,
    /// `[B, L]`.
    pub attention_mask: Array2<bool>,
}

impl TextConditioning {
    /// The number of prompts B.
    pub fn len(&self) -> usize {
        self.text_embeds.nrows()
    }

    /// Whether there are no prompts (never true after [`text_encoding`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Decodes the three conditioning tensors of `encoding` (field path `field`), checking D and L
/// against the model, one batch size B in 1..=`max_batch`, and finiteness.
pub fn text_encoding(
    field: &str,
    encoding: &TextEncoding,
    sizes: &ModelSizes,
    max_batch: usize,
) -> Result<TextConditioning, ServiceError> {
    let d = sizes.embedding_dim;
    let l = sizes.context_length;
    let name = |sub: &str| format!("{field}.{sub}");
    let embeds = float_tensor(
        &name("text_embeds"),
        required(&name("text_embeds"), encoding.text_embeds.as_ref())?,
        &[Dim::Any("batch"), Dim::Fixed(d)],
    )?;
    let batch = embeds.shape()[0];
    batch_size(&name("text_embeds"), "prompts", batch, max_batch)?;
    let hidden = float_tensor(
        &name("last_hidden_state"),
        required(
            &name("last_hidden_state"),
            encoding.last_hidden_state.as_ref(),
        )?,
        &[Dim::Fixed(batch), Dim::Fixed(l), Dim::Fixed(d)],
    )?;
    let mask = bool_tensor(
        &name("attention_mask"),
        required(&name("attention_mask"), encoding.attention_mask.as_ref())?,
        &[Dim::Fixed(batch), Dim::Fixed(l)],
    )?;
    Ok(TextConditioning {
        text_embeds: embeds.into_dimensionality::<Ix2>().expect("shape checked"),
        last_hidden_state: hidden.into_dimensionality::<Ix3>().expect("shape checked"),
        attention_mask: mask.into_dimensionality::<Ix2>().expect("shape checked"),
    })
}

/// A step count: 0 means `default`; otherwise within `min..=max`.
pub fn steps(
    field: &str,
    requested: u32,
    default: u32,
    min: u32,
    max: u32,
) -> Result<u32, ServiceError> {
    match requested {
        0 => Ok(default),
        n if (min..=max).contains(&n) => Ok(n),
        n => Err(ServiceError::invalid(
            field,
            format!("must be {min}..={max} (0 for the default {default}), got {n}"),
        )),
    }
}

/// A guidance scale: unset means `default`; otherwise finite and within 0..=`max`.
pub fn guidance_scale(
    field: &str,
    requested: Option<f32>,
    default: f32,
    max: f32,
) -> Result<f32, ServiceError> {
    match requested {
        None => Ok(default),
        Some(g) if g.is_finite() && (0.0..=max).contains(&g) => Ok(g),
        Some(g) => Err(ServiceError::invalid(
            field,
            format!(
                "must be a finite number in 0..={max} (unset for the default {default}), got {g}"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use ndarray::{Array, Array2, Array3};
    use unclip_runtime::DataType;

    use super::*;

    fn sizes() -> ModelSizes {
        ModelSizes {
            embedding_dim: 4,
            context_length: 5,
            decoder_context_length: 9,
            cross_attention_dim: 8,
            time_embed_dim: 8,
            clip_image_size: None,
            decoder_image_size: 8,
            upsampler_sizes: vec![(8, 16)],
            float_dtype: DataType::Float32,
        }
    }

    fn encoding(b: usize, d: usize) -> TextEncoding {
        TextEncoding {
            text_embeds: Some(Tensor::from_array(&Array2::<f32>::zeros((b, d)))),
            last_hidden_state: Some(Tensor::from_array(&Array3::<f32>::zeros((b, 5, d)))),
            attention_mask: Some(Tensor::from_array(&Array2::from_elem((b, 5), true))),
            ..Default::default()
        }
    }

    /// A well-formed encoding decodes; each malformed one names its field and the limit.
    #[test]
    fn text_encodings() {
        let ok = text_encoding("text", &encoding(2, 4), &sizes(), 8).unwrap();
        assert_eq!(ok.len(), 2);

        let e = text_encoding("text", &encoding(2, 3), &sizes(), 8).unwrap_err();
        assert_eq!(
            e.to_string(),
            "text.text_embeds: must have shape [batch, 4], got [2, 3]"
        );

        let e = text_encoding("text", &encoding(0, 4), &sizes(), 8).unwrap_err();
        assert_eq!(
            e.to_string(),
            "text.text_embeds: must hold 1..=8 prompts, got 0"
        );

        let e = text_encoding("text", &encoding(9, 4), &sizes(), 8).unwrap_err();
        assert_eq!(
            e.to_string(),
            "text.text_embeds: must hold 1..=8 prompts, got 9"
        );

        let mut bad = encoding(1, 4);
        let mut h = Array::zeros((1, 5, 4));
        h[[0, 2, 1]] = f32::NAN;
        bad.last_hidden_state = Some(Tensor::from_array(&h));
        let e = text_encoding("text", &bad, &sizes(), 8).unwrap_err();
        assert_eq!(
            e.to_string(),
            "text.last_hidden_state: must be finite, element 9 is NaN"
        );

        let mut missing = encoding(1, 4);
        missing.attention_mask = None;
        let e = text_encoding("text", &missing, &sizes(), 8).unwrap_err();
        assert_eq!(e.to_string(), "text.attention_mask: is required");
    }

    /// Steps and guidance apply defaults and name their limits.
    #[test]
    fn scalars() {
        assert_eq!(steps("steps", 0, 25, 2, 1000).unwrap(), 25);
        assert_eq!(steps("steps", 7, 25, 2, 1000).unwrap(), 7);
        assert_eq!(
            steps("steps", 1, 25, 2, 1000).unwrap_err().to_string(),
            "steps: must be 2..=1000 (0 for the default 25), got 1"
        );
        assert_eq!(guidance_scale("g", None, 4.0, 100.0).unwrap(), 4.0);
        assert!(guidance_scale("g", Some(f32::NAN), 4.0, 100.0).is_err());
        assert!(guidance_scale("g", Some(-1.0), 4.0, 100.0).is_err());
    }
}
