//! Request validation: each RPC's message becomes a typed job, or INVALID_ARGUMENT naming the
//! field and the limit. Nothing here runs a model, so a bad request never reaches one and the
//! service stays healthy.

use bytes::Bytes;
use ndarray::{Array2, ArrayD, Axis, IxDyn};
use unclip_model_server::ServiceError;
use unclip_model_server::validate::{
    TextConditioning, batch_size, float_tensor, guidance_scale, required, steps, text_encoding,
};
use unclip_proto::Dim;
use unclip_proto::v1::{
    DType, DecodeRequest, ImageFormat, InpaintSpec, InvertRequest, Sampler, SamplingOptions,
    Tensor, TextEncoding, UpsampleRequest,
};
use unclip_runtime::ModelRepository;

use crate::conditioning::{ImageConditioning, Unconditional};
use crate::images::{ImageLimits, decode_batch, decode_image};
use crate::sampling::{Inpaint, SamplerKind};

/// Fewest steps a request may ask for: the unCLIP respacing cannot make one.
pub const MIN_STEPS: u32 = 2;
/// Largest guidance scale accepted.
pub const MAX_GUIDANCE_SCALE: f32 = 100.0;

/// Request limits, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most images per call (Decode's N = embeddings × num_images, Upsample's and Invert's batch).
    pub max_batch: usize,
    /// Most images per embedding in Decode.
    pub max_images_per_input: usize,
    /// Most denoising steps (the training schedule's length).
    pub max_steps: u32,
    /// Limits on each encoded image.
    pub image: ImageLimits,
}

/// A validated Decode.
#[derive(Debug, Clone)]
pub struct DecodeJob {
    /// The conditioning of the N images, one row each (embedding-major).
    pub cond: ImageConditioning,
    /// Image k draws all its noise from `seeds[k]` (seed + k, or the request's own list).
    pub seeds: Vec<u64>,
    /// Denoising steps.
    pub steps: u32,
    /// The guidance scale (≤ 1: no guidance).
    pub guidance_scale: f32,
    /// The update rule.
    pub sampler: SamplerKind,
    /// A given x_T `[N, 3, H, H]`.
    pub init_noise: Option<ArrayD<f32>>,
    /// Masked sampling at the decoder's resolution.
    pub inpaint: Option<Inpaint>,
    /// What to return.
    pub format: ImageFormat,
}

/// A validated Upsample.
#[derive(Debug, Clone)]
pub struct UpsampleJob {
    /// The cascade stage.
    pub stage: usize,
    /// The low-resolution images `[N, 3, s, s]`, model range.
    pub low_res: ArrayD<f32>,
    /// Image k draws all its noise from `seeds[k]` (seed + k, or the request's own list).
    pub seeds: Vec<u64>,
    /// Denoising steps.
    pub steps: u32,
    /// The update rule.
    pub sampler: SamplerKind,
    /// A given x_T `[N, 3, S, S]`.
    pub init_noise: Option<ArrayD<f32>>,
    /// Masked sampling at the stage's output resolution.
    pub inpaint: Option<Inpaint>,
    /// What to return.
    pub format: ImageFormat,
}

/// A validated Invert.
#[derive(Debug, Clone)]
pub struct InvertJob {
    /// The images `[B, 3, H, H]`, model range.
    pub images: ArrayD<f32>,
    /// Their conditioning, one row each.
    pub cond: ImageConditioning,
    /// Inversion steps.
    pub steps: u32,
    /// The guidance scale during inversion (≤ 1: none).
    pub guidance_scale: f32,
}

/// What validation needs to know about the served model.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The repository (sizes, defaults).
    pub repo: &'a ModelRepository,
    /// The unconditional text, for requests without text.
    pub uncond: &'a Unconditional,
    /// The limits.
    pub limits: Limits,
}

impl Context<'_> {
    fn embedding_dim(&self) -> usize {
        self.repo.sizes().embedding_dim
    }

    fn decoder_size(&self) -> usize {
        self.repo.sizes().decoder_image_size
    }

    /// Parses a DecodeRequest.
    pub fn decode(&self, request: &DecodeRequest) -> Result<DecodeJob, ServiceError> {
        let limits = self.limits;
        let embeds = self.image_embeds("image_embeds", request.image_embeds.as_ref(), None)?;
        let b = embeds.nrows();
        let per_input = match request.num_images {
            0 => 1,
            n if n as usize <= limits.max_images_per_input => n as usize,
            n => {
                return Err(ServiceError::invalid(
                    "num_images",
                    format!(
                        "must be 1..={} (0 for 1), got {n}",
                        limits.max_images_per_input
                    ),
                ));
            }
        };
        let n = b * per_input;
        if n > limits.max_batch {
            return Err(ServiceError::invalid(
                "num_images",
                format!(
                    "{b} embeddings x {per_input} images is {n} images, the limit per call is {}",
                    limits.max_batch
                ),
            ));
        }
        let text = self.text("text", request.text.as_ref(), b)?;
        // Image k = i·num_images + j belongs to embedding i.
        let rows: Vec<usize> = (0..n).map(|k| k / per_input).collect();
        let cond = expand(&embeds, &text, &rows);
        let (steps, sampler) = self.sampling(
            request.sampling.as_ref(),
            self.repo.manifest().defaults.decoder_steps,
        )?;
        let guidance_scale = guidance_scale(
            "guidance_scale",
            request.guidance_scale,
            self.repo.manifest().defaults.decoder_guidance_scale,
            MAX_GUIDANCE_SCALE,
        )?;
        let s = self.decoder_size();
        Ok(DecodeJob {
            cond,
            seeds: seeds(request.seed, &request.seeds, n)?,
            steps,
            guidance_scale,
            sampler,
            init_noise: latents("init_noise", request.init_noise.as_ref(), n, s)?,
            inpaint: self.inpaint(
                "inpaint",
                request.inpaint.as_ref(),
                n,
                s,
                "decoder_image_size",
            )?,
            format: format(request.format)?,
        })
    }

    /// Parses an UpsampleRequest.
    pub fn upsample(&self, request: &UpsampleRequest) -> Result<UpsampleJob, ServiceError> {
        let stages = &self.repo.sizes().upsampler_sizes;
        let stage = request.stage as usize;
        let Some(&(input_size, output_size)) = stages.get(stage) else {
            return Err(ServiceError::invalid(
                "stage",
                format!(
                    "must be below {} (the model has {} upsampler stage{}), got {stage}",
                    stages.len(),
                    stages.len(),
                    if stages.len() == 1 { "" } else { "s" }
                ),
            ));
        };
        let low_res = self.images(
            &request.images,
            request.samples.as_ref(),
            input_size,
            &format!("upsamplers[{stage}].input_size"),
        )?;
        let n = low_res.shape()[0];
        let (steps, sampler) = self.sampling(
            request.sampling.as_ref(),
            self.repo.manifest().defaults.upsampler_steps,
        )?;
        Ok(UpsampleJob {
            stage,
            seeds: seeds(request.seed, &request.seeds, n)?,
            low_res,
            steps,
            sampler,
            init_noise: latents("init_noise", request.init_noise.as_ref(), n, output_size)?,
            inpaint: self.inpaint(
                "inpaint",
                request.inpaint.as_ref(),
                n,
                output_size,
                &format!("upsamplers[{stage}].output_size"),
            )?,
            format: format(request.format)?,
        })
    }

    /// Parses an InvertRequest.
    pub fn invert(&self, request: &InvertRequest) -> Result<InvertJob, ServiceError> {
        let images = self.images(
            &request.images,
            request.samples.as_ref(),
            self.decoder_size(),
            "decoder_image_size",
        )?;
        let b = images.shape()[0];
        let embeds = self.image_embeds("image_embeds", request.image_embeds.as_ref(), Some(b))?;
        let text = self.text("text", request.text.as_ref(), b)?;
        let rows: Vec<usize> = (0..b).collect();
        let defaults = &self.repo.manifest().defaults;
        Ok(InvertJob {
            images,
            cond: expand(&embeds, &text, &rows),
            steps: steps(
                "steps",
                request.steps,
                defaults.decoder_steps,
                MIN_STEPS,
                self.limits.max_steps,
            )?,
            guidance_scale: guidance_scale(
                "guidance_scale",
                request.guidance_scale,
                1.0,
                MAX_GUIDANCE_SCALE,
            )?,
        })
    }

    /// `[B, D]` finite embeddings, 1 ≤ B ≤ max_batch (exactly `rows` when given).
    fn image_embeds(
        &self,
        field: &str,
        tensor: Option<&Tensor>,
        rows: Option<usize>,
    ) -> Result<Array2<f32>, ServiceError> {
        let tensor = required(field, tensor)?;
        let first = rows.map_or(Dim::Any("batch"), Dim::Fixed);
        let embeds = float_tensor(field, tensor, &[first, Dim::Fixed(self.embedding_dim())])?;
        batch_size(
            field,
            "embeddings",
            embeds.shape()[0],
            self.limits.max_batch,
        )?;
        Ok(embeds
            .into_dimensionality()
            .expect("shape checked: two axes"))
    }

    /// Text for `rows` embeddings: 1 or `rows` prompts, or "" for each when unset.
    fn text(
        &self,
        field: &str,
        encoding: Option<&TextEncoding>,
        rows: usize,
    ) -> Result<TextConditioning, ServiceError> {
        let Some(encoding) = encoding else {
            return Ok(self.uncond.empty_text(rows));
        };
        let text = text_encoding(field, encoding, self.repo.sizes(), self.limits.max_batch)?;
        if text.len() != 1 && text.len() != rows {
            return Err(ServiceError::invalid(
                format!("{field}.text_embeds"),
                format!(
                    "must hold 1 prompt or {rows} (one per image embedding), got {}",
                    text.len()
                ),
            ));
        }
        Ok(text)
    }

    /// Steps (0: `default_steps`) and the update rule.
    fn sampling(
        &self,
        options: Option<&SamplingOptions>,
        default_steps: u32,
    ) -> Result<(u32, SamplerKind), ServiceError> {
        let default = SamplingOptions::default();
        let options = options.unwrap_or(&default);
        let steps = steps(
            "sampling.steps",
            options.steps,
            default_steps,
            MIN_STEPS,
            self.limits.max_steps,
        )?;
        let eta = options.eta;
        let sampler = match Sampler::try_from(options.sampler) {
            Ok(Sampler::Unspecified | Sampler::Unclip) => {
                if eta != 0.0 {
                    return Err(ServiceError::invalid(
                        "sampling.eta",
                        format!("must be 0 unless sampler is SAMPLER_DDIM, got {eta}"),
                    ));
                }
                SamplerKind::Unclip
            }
            Ok(Sampler::Ddim) => {
                if !(eta.is_finite() && (0.0..=1.0).contains(&eta)) {
                    return Err(ServiceError::invalid(
                        "sampling.eta",
                        format!("must be a finite number in 0..=1, got {eta}"),
                    ));
                }
                SamplerKind::Ddim { eta }
            }
            Err(_) => {
                return Err(ServiceError::invalid(
                    "sampling.sampler",
                    format!("{} is not a Sampler value", options.sampler),
                ));
            }
        };
        Ok((steps, sampler))
    }

    /// Exactly one of encoded `images` / a `samples` tensor, each `side`², 1..=max_batch.
    fn images(
        &self,
        images: &[Bytes],
        samples: Option<&Tensor>,
        side: usize,
        what: &str,
    ) -> Result<ArrayD<f32>, ServiceError> {
        let max = self.limits.max_batch;
        match (images.is_empty(), samples) {
            (false, Some(_)) => Err(ServiceError::invalid(
                "images",
                "set exactly one of images and samples, got both",
            )),
            (true, None) => Err(ServiceError::invalid(
                "images",
                format!("must hold 1..={max} images (or set samples), got 0"),
            )),
            (false, None) => {
                batch_size("images", "images", images.len(), max)?;
                Ok(decode_batch("images", images, side, what, self.limits.image)?.into_dyn())
            }
            (true, Some(tensor)) => {
                let x = float_tensor(
                    "samples",
                    tensor,
                    &[
                        Dim::Any("batch"),
                        Dim::Fixed(3),
                        Dim::Fixed(side),
                        Dim::Fixed(side),
                    ],
                )?;
                batch_size("samples", "images", x.shape()[0], max)?;
                Ok(x)
            }
        }
    }

    /// Masked sampling for `n` images of `side`².
    fn inpaint(
        &self,
        field: &str,
        spec: Option<&InpaintSpec>,
        n: usize,
        side: usize,
        what: &str,
    ) -> Result<Option<Inpaint>, ServiceError> {
        let Some(spec) = spec else {
            return Ok(None);
        };
        let image_field = format!("{field}.image");
        let known = match (spec.image.is_empty(), spec.samples.as_ref()) {
            (false, Some(_)) | (true, None) => {
                return Err(ServiceError::invalid(
                    &image_field,
                    "set exactly one of image and samples",
                ));
            }
            (false, None) => {
                let image = decode_image(&image_field, &spec.image, side, what, self.limits.image)?;
                broadcast_rows(&image.insert_axis(Axis(0)).into_dyn(), n)
            }
            (true, Some(tensor)) => {
                let samples_field = format!("{field}.samples");
                let x = float_tensor(
                    &samples_field,
                    tensor,
                    &[
                        Dim::Any("1 or N"),
                        Dim::Fixed(3),
                        Dim::Fixed(side),
                        Dim::Fixed(side),
                    ],
                )?;
                check_rows(&samples_field, x.shape()[0], n)?;
                broadcast_rows(&x, n)
            }
        };
        let mask_field = format!("{field}.mask");
        let mask = mask(
            &mask_field,
            required(&mask_field, spec.mask.as_ref())?,
            n,
            side,
        )?;
        Ok(Some(Inpaint { known, mask }))
    }
}

/// `rows[k]`-th embedding and text row (text: row 0 when there is one prompt) for image k.
fn expand(embeds: &Array2<f32>, text: &TextConditioning, rows: &[usize]) -> ImageConditioning {
    let text_rows: Vec<usize> = if text.len() == 1 {
        vec![0; rows.len()]
    } else {
        rows.to_vec()
    };
    ImageConditioning {
        image_embeds: embeds.select(Axis(0), rows),
        text: TextConditioning {
            text_embeds: text.text_embeds.select(Axis(0), &text_rows),
            last_hidden_state: text.last_hidden_state.select(Axis(0), &text_rows),
            attention_mask: text.attention_mask.select(Axis(0), &text_rows),
        },
    }
}

/// The seed of each of `n` images: `seed + k`, or `explicit` when the request lists them (then
/// exactly `n`, and `seed` must be 0 so that a request never says two things).
fn seeds(seed: u64, explicit: &[u64], n: usize) -> Result<Vec<u64>, ServiceError> {
    if explicit.is_empty() {
        return Ok((0..n as u64).map(|k| seed.wrapping_add(k)).collect());
    }
    if explicit.len() != n {
        return Err(ServiceError::invalid(
            "seeds",
            format!("must list one seed per image ({n}), got {}", explicit.len()),
        ));
    }
    if seed != 0 {
        return Err(ServiceError::invalid(
            "seed",
            format!("must be 0 when seeds are listed, got {seed}"),
        ));
    }
    Ok(explicit.to_vec())
}

/// A given x_T: finite, `[n, 3, side, side]`.
fn latents(
    field: &str,
    tensor: Option<&Tensor>,
    n: usize,
    side: usize,
) -> Result<Option<ArrayD<f32>>, ServiceError> {
    tensor
        .map(|t| {
            float_tensor(
                field,
                t,
                &[
                    Dim::Fixed(n),
                    Dim::Fixed(3),
                    Dim::Fixed(side),
                    Dim::Fixed(side),
                ],
            )
        })
        .transpose()
}

/// A batch axis of 1 or `n`.
fn check_rows(field: &str, rows: usize, n: usize) -> Result<(), ServiceError> {
    if rows == 1 || rows == n {
        Ok(())
    } else {
        Err(ServiceError::invalid(
            field,
            format!("must hold 1 or {n} images, got {rows}"),
        ))
    }
}

/// A `[1 or n, …]` array as `[n, …]`.
fn broadcast_rows(x: &ArrayD<f32>, n: usize) -> ArrayD<f32> {
    if x.shape()[0] == n {
        return x.clone();
    }
    let mut shape = x.shape().to_vec();
    shape[0] = n;
    x.broadcast(IxDyn(&shape))
        .expect("a batch of one broadcasts")
        .to_owned()
}

/// The inpainting mask as `[1 or n, 1, side, side]` floats in [0, 1].
fn mask(field: &str, tensor: &Tensor, n: usize, side: usize) -> Result<ArrayD<f32>, ServiceError> {
    let values = match tensor.checked_dtype() {
        Ok(DType::Bool | DType::Uint8) => tensor
            .to_bool_array()
            .map_err(|e| ServiceError::tensor(field, e))?
            .mapv(f32::from),
        _ => {
            let array = tensor
                .to_f32_array()
                .map_err(|e| ServiceError::tensor(field, e))?;
            unclip_proto::check_finite(&array.view())
                .map_err(|e| ServiceError::tensor(field, e))?;
            array
        }
    };
    let shape = values.shape().to_vec();
    let rows = match shape.as_slice() {
        [h, w] if *h == side && *w == side => 1,
        [r, 1, h, w] if *h == side && *w == side && (*r == 1 || *r == n) => *r,
        _ => {
            let per_image = if n > 1 {
                format!(" or [{n}, 1, {side}, {side}]")
            } else {
                String::new()
            };
            return Err(ServiceError::invalid(
                field,
                format!(
                    "must have shape [{side}, {side}] or [1, 1, {side}, {side}]{per_image}, got \
                     {shape:?}"
                ),
            ));
        }
    };
    if let Some((index, value)) = values
        .iter()
        .enumerate()
        .find(|(_, v)| !(0.0..=1.0).contains(*v))
    {
        return Err(ServiceError::invalid(
            field,
            format!("values must be in 0..=1 (1 = keep), element {index} is {value}"),
        ));
    }
    Ok(values
        .into_shape_with_order(IxDyn(&[rows, 1, side, side]))
        .expect("same number of elements"))
}

/// The response format; unset means PNG.
fn format(value: i32) -> Result<ImageFormat, ServiceError> {
    match ImageFormat::try_from(value) {
        Ok(ImageFormat::Unspecified) => Ok(ImageFormat::Png),
        Ok(f) => Ok(f),
        Err(_) => Err(ServiceError::invalid(
            "format",
            format!("{value} is not an ImageFormat value"),
        )),
    }
}
