//! The decoder's conditioning: what the text projection is fed, and the decoder's attention mask.
//!
//! For N images (row k = image k) with classifier-free guidance, the model batch is doubled as
//! `[uncond; cond]` (2N rows, the unconditional half first, as diffusers does):
//!
//! | text_proj input | unconditional rows `0..N` | conditional rows `N..2N` |
//! |---|---|---|
//! | `image_embeddings` | the learned `decoder_cfg_embedding` | the request's image embeddings |
//! | `prompt_embeds` | CLIP("") `text_embeds` | the prompts' `text_embeds` |
//! | `text_encoder_hidden_states` | CLIP("") `last_hidden_state` | the prompts' `last_hidden_state` |
//!
//! text_proj.onnx was exported without its CFG flag, so the prepend of the learned embedding
//! (diffusers' `do_classifier_free_guidance=True`) happens here. The decoder's attention mask is
//! the text mask (`[uncond; cond]` alike) with `N_ctx − L` `true` columns prepended for the text
//! projection's extra context tokens, which are never masked.
//!
//! Without guidance (scale ≤ 1, diffusers' `do_classifier_free_guidance = scale > 1`) the batch is
//! the N conditional rows alone.

use ndarray::{Array1, Array2, Array3, ArrayD, Axis, concatenate, s};
use unclip_model_server::validate::TextConditioning;
use unclip_runtime::UncondText;

/// The unconditional half of the guidance batch, from tensors.safetensors.
#[derive(Debug, Clone, PartialEq)]
pub struct Unconditional {
    /// `decoder_cfg_embedding` `[D]`: the image embedding of the unconditional rows.
    pub image_embedding: Array1<f32>,
    /// CLIP's encoding of "": the text of the unconditional rows (and of requests without text).
    pub text: UncondText,
}

impl Unconditional {
    /// The encoding of "" repeated for `rows` rows, as request text.
    pub fn empty_text(&self, rows: usize) -> TextConditioning {
        let t = &self.text;
        TextConditioning {
            text_embeds: repeat_rows(&t.text_embeds.view().insert_axis(Axis(0)), rows),
            last_hidden_state: repeat_rows(&t.last_hidden_state.view().insert_axis(Axis(0)), rows),
            attention_mask: repeat_rows(&t.attention_mask.view().insert_axis(Axis(0)), rows),
        }
    }
}

/// `rows` copies of a one-row array stacked on axis 0.
fn repeat_rows<A: Clone, D: ndarray::RemoveAxis>(
    one: &ndarray::ArrayView<'_, A, D>,
    rows: usize,
) -> ndarray::Array<A, D> {
    let views = vec![one.view(); rows];
    concatenate(Axis(0), &views).expect("copies of one array always concatenate")
}

/// What N images are conditioned on, one row per image.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageConditioning {
    /// Raw-scale CLIP image embeddings `[N, D]`.
    pub image_embeds: Array2<f32>,
    /// The text of each image, `[N, …]` rows.
    pub text: TextConditioning,
}

/// The text projection's inputs, already doubled when guiding.
#[derive(Debug, Clone, PartialEq)]
pub struct TextProjInputs {
    /// `[M, D]` image embeddings (M = 2N with guidance: the CFG embedding rows first).
    pub image_embeddings: Array2<f32>,
    /// `[M, D]` CLIP text embeddings.
    pub prompt_embeds: Array2<f32>,
    /// `[M, L, D]` CLIP token states.
    pub text_encoder_hidden_states: Array3<f32>,
}

/// The text projection's outputs: the decoder's context and its additive time embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct TextProjOutputs {
    /// `[M, N_ctx, C]`: 4 image tokens, then the L text tokens.
    pub encoder_hidden_states: ArrayD<f32>,
    /// `[M, T]`, the decoder's `class_labels`.
    pub additive_clip_time_embeddings: ArrayD<f32>,
}

/// Everything needed to condition the decoder before the text projection has run.
#[derive(Debug, Clone, PartialEq)]
pub struct ConditioningPlan {
    /// The text projection's inputs.
    pub text_proj: TextProjInputs,
    /// The decoder's `attention_mask` `[M, N_ctx]`.
    pub attention_mask: Array2<bool>,
    /// The guidance scale when guiding (scale > 1), `None` for the conditional batch alone.
    pub guidance: Option<f32>,
}

/// The decoder's per-call conditioning, after the text projection.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConditioning {
    /// `encoder_hidden_states` `[M, N_ctx, C]`.
    pub encoder_hidden_states: ArrayD<f32>,
    /// `class_labels` `[M, T]`.
    pub class_labels: ArrayD<f32>,
    /// `attention_mask` `[M, N_ctx]`.
    pub attention_mask: Array2<bool>,
    /// The guidance scale, or `None` without guidance.
    pub guidance: Option<f32>,
}

impl DecoderConditioning {
    /// The rows of one decoder call: 2N with guidance, N without.
    pub fn model_batch(&self) -> usize {
        self.attention_mask.nrows()
    }

    /// The number of images N.
    pub fn images(&self) -> usize {
        match self.guidance {
            Some(_) => self.model_batch() / 2,
            None => self.model_batch(),
        }
    }
}

/// The guidance scale a request's scale amounts to: `Some(s)` for s > 1, else `None`.
pub fn effective_guidance(scale: f32) -> Option<f32> {
    (scale > 1.0).then_some(scale)
}

/// Builds the text projection's inputs and the decoder mask for `cond` (N rows), doubled as
/// `[uncond; cond]` when `guidance_scale > 1`. `decoder_context_length` is N_ctx (81 for Karlo).
pub fn plan(
    cond: &ImageConditioning,
    uncond: &Unconditional,
    guidance_scale: f32,
    decoder_context_length: usize,
) -> ConditioningPlan {
    let n = cond.image_embeds.nrows();
    let guidance = effective_guidance(guidance_scale);
    let text = &cond.text;
    let (image_embeddings, prompt_embeds, hidden, mask) = if guidance.is_some() {
        let u = uncond.empty_text(n);
        let cfg = repeat_rows(&uncond.image_embedding.view().insert_axis(Axis(0)), n);
        let cat2 = |a: &Array2<f32>, b: &Array2<f32>| {
            concatenate(Axis(0), &[a.view(), b.view()]).expect("same widths")
        };
        (
            cat2(&cfg, &cond.image_embeds),
            cat2(&u.text_embeds, &text.text_embeds),
            concatenate(
                Axis(0),
                &[u.last_hidden_state.view(), text.last_hidden_state.view()],
            )
            .expect("same widths"),
            concatenate(
                Axis(0),
                &[u.attention_mask.view(), text.attention_mask.view()],
            )
            .expect("same widths"),
        )
    } else {
        (
            cond.image_embeds.clone(),
            text.text_embeds.clone(),
            text.last_hidden_state.clone(),
            text.attention_mask.clone(),
        )
    };
    ConditioningPlan {
        text_proj: TextProjInputs {
            image_embeddings,
            prompt_embeds,
            text_encoder_hidden_states: hidden,
        },
        attention_mask: decoder_attention_mask(&mask, decoder_context_length),
        guidance,
    }
}

/// The text mask `[M, L]` left-padded with `true` to `[M, context_length]`.
pub fn decoder_attention_mask(text_mask: &Array2<bool>, context_length: usize) -> Array2<bool> {
    let (rows, l) = text_mask.dim();
    let extra = context_length.saturating_sub(l);
    let mut mask = Array2::from_elem((rows, extra + l), true);
    mask.slice_mut(s![.., extra..]).assign(text_mask);
    mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn uncond() -> Unconditional {
        Unconditional {
            image_embedding: array![9.0, 9.0],
            text: UncondText {
                input_ids: array![1, 2, 0],
                attention_mask: array![true, true, false],
                text_embeds: array![-1.0, -1.0],
                last_hidden_state: Array2::from_elem((3, 2), -2.0),
            },
        }
    }

    fn cond() -> ImageConditioning {
        ImageConditioning {
            image_embeds: array![[1.0, 2.0], [3.0, 4.0]],
            text: TextConditioning {
                text_embeds: array![[5.0, 5.0], [6.0, 6.0]],
                last_hidden_state: Array3::from_elem((2, 3, 2), 7.0),
                attention_mask: array![[true, true, true], [true, false, false]],
            },
        }
    }

    /// With guidance: [uncond; cond], the CFG embedding and "" first, mask padded on the left.
    #[test]
    fn guided_plan_is_uncond_first() {
        let p = plan(&cond(), &uncond(), 8.0, 5);
        assert_eq!(p.guidance, Some(8.0));
        assert_eq!(
            p.text_proj.image_embeddings,
            array![[9.0, 9.0], [9.0, 9.0], [1.0, 2.0], [3.0, 4.0]]
        );
        assert_eq!(
            p.text_proj.prompt_embeds,
            array![[-1.0, -1.0], [-1.0, -1.0], [5.0, 5.0], [6.0, 6.0]]
        );
        assert_eq!(p.text_proj.text_encoder_hidden_states[[1, 2, 1]], -2.0);
        assert_eq!(p.text_proj.text_encoder_hidden_states[[2, 0, 0]], 7.0);
        assert_eq!(
            p.attention_mask,
            array![
                [true, true, true, true, false],
                [true, true, true, true, false],
                [true, true, true, true, true],
                [true, true, true, false, false],
            ]
        );
    }

    /// Scale ≤ 1 runs the conditional rows alone.
    #[test]
    fn unguided_plan_is_cond_only() {
        for scale in [1.0, 0.5, 0.0] {
            let p = plan(&cond(), &uncond(), scale, 5);
            assert_eq!(p.guidance, None);
            assert_eq!(p.text_proj.image_embeddings, cond().image_embeds);
            assert_eq!(p.attention_mask.nrows(), 2);
        }
    }

    #[test]
    fn empty_text_repeats_the_encoding_of_nothing() {
        let t = uncond().empty_text(3);
        assert_eq!(t.text_embeds.dim(), (3, 2));
        assert_eq!(t.attention_mask.row(2), array![true, true, false]);
    }
}
