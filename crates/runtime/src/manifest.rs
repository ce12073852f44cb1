//! `manifest.json`: typed structs, parsing, and the checks that need no other file.
//!
//! docs/model-repository.md is the specification and `tools/unclip_tools/repository.py` its
//! reference implementation; this module follows the latter's checks and messages. Parsing is
//! serde with unknown keys refused (a typo must not silently fall back to a default); then
//! [`Manifest::validate`] checks the format tag, the graph contracts (names, dtypes, ranks, the
//! symbolic batch axis, and sizes that must agree across graphs) and the `files` table, and
//! returns the sizes it found as [`ModelSizes`].
//!
//! Scheduler configurations reuse [`unclip_sampler::SchedulerConfig`], so the sampler reads the
//! manifest's schedulers without translation.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};
use unclip_sampler::SchedulerConfig;

use crate::error::{Result, RuntimeError};

/// The format tag this loader reads.
pub const FORMAT: &str = "unclip-model-repository/1";
/// The manifest's file name, at the repository's top level.
pub const MANIFEST: &str = "manifest.json";

/// The whole manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// Short model name, e.g. `karlo-tiny`.
    pub model_id: String,
    /// Content version, `sha256-` + 16 hex digits (see `repository::compute_version`).
    pub version: String,
    /// Free text.
    pub description: String,
    /// CLIP embedding width D (text embeddings = image embeddings = text hidden states).
    pub embedding_dim: usize,
    /// The tokenizer and its special ids.
    pub text: TextConfig,
    /// CLIP image preprocessing; present exactly when there is an image encoder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_preprocess: Option<ImagePreprocess>,
    /// The ONNX graphs.
    pub components: Components,
    /// Noise schedules and step rules of the three diffusion stages.
    pub schedulers: Schedulers,
    /// Default sampling settings.
    pub defaults: Defaults,
    /// The safetensors file with the loop's constant tensors.
    pub tensors: TensorsFile,
    /// Every file of the repository except manifest.json → lowercase hex SHA-256.
    pub files: BTreeMap<String, String>,
}

/// The tokenizer and its special token ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextConfig {
    /// tokenizer.json (Hugging Face `tokenizers` format), relative to the repository.
    pub tokenizer: String,
    /// Tokens per prompt L, including start and end (77 for CLIP).
    pub context_length: usize,
    /// Padding id (0 for Karlo: pad token "!").
    pub pad_id: i64,
    /// Start-of-text id.
    pub bos_id: i64,
    /// End-of-text id.
    pub eos_id: i64,
}

/// How an image becomes the image encoder's `pixel_values` (CLIPImageProcessor's steps).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagePreprocess {
    /// Side S of the square input, in pixels.
    pub size: usize,
    /// Resize rule; only `shortest_edge` (shorter side to S, aspect kept).
    pub resize: ResizeRule,
    /// Resampling filter; only `bicubic` (PIL's).
    pub resample: Resample,
    /// Crop rule; only `center` (S × S from the middle).
    pub crop: CropRule,
    /// Multiplier from 8-bit values to [0, 1], normally 1/255.
    pub rescale: f64,
    /// Per-channel (RGB) mean subtracted after rescaling.
    pub mean: [f64; 3],
    /// Per-channel (RGB) standard deviation divided by after subtracting the mean.
    pub std: [f64; 3],
}

/// The resize rule of [`ImagePreprocess`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeRule {
    /// Scale so the shorter side equals the size, keeping the aspect ratio.
    ShortestEdge,
}

/// The resampling filter of [`ImagePreprocess`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resample {
    /// PIL's bicubic (Keys, a = −0.5, antialiased when shrinking).
    Bicubic,
}

/// The crop rule of [`ImagePreprocess`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CropRule {
    /// A size × size square from the middle (top/left offsets rounded down).
    Center,
}

/// The graphs of the repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Components {
    /// CLIP text tower: ids → text_embeds, last_hidden_state.
    pub text_encoder: ComponentSpec,
    /// CLIP vision tower (image variations); optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_encoder: Option<ComponentSpec>,
    /// The diffusion prior (one denoising call).
    pub prior: ComponentSpec,
    /// The decoder's conditioning adapter (UnCLIPTextProjModel without the CFG prepend).
    pub text_proj: ComponentSpec,
    /// The base-resolution decoder UNet (one denoising call).
    pub decoder: ComponentSpec,
    /// Optional: the decoder with GLIDE's inpainting inputs (`masked_image`, `mask`), run in place
    /// of `decoder` by masked Decode calls. Absent (as in Karlo): masked calls use `decoder`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder_inpaint: Option<ComponentSpec>,
    /// The super-resolution cascade, in order; at least one stage.
    pub upsamplers: Vec<UpsamplerStage>,
}

/// One stage of the super-resolution cascade.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpsamplerStage {
    /// Side of the images the stage takes (the previous stage's output, or the decoder's).
    pub input_size: usize,
    /// Side of the images it produces.
    pub output_size: usize,
    /// The graph for every step but the last.
    pub first: ComponentSpec,
    /// The graph for the last step (may name the same file as `first`).
    pub last: ComponentSpec,
}

/// One ONNX graph and its declared signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentSpec {
    /// The .onnx file, relative to the repository.
    pub file: String,
    /// Graph inputs.
    pub inputs: Vec<TensorSpec>,
    /// Graph outputs.
    pub outputs: Vec<TensorSpec>,
}

impl ComponentSpec {
    /// The declared input called `name`.
    pub fn input(&self, name: &str) -> Option<&TensorSpec> {
        self.inputs.iter().find(|t| t.name == name)
    }

    /// The declared output called `name`.
    pub fn output(&self, name: &str) -> Option<&TensorSpec> {
        self.outputs.iter().find(|t| t.name == name)
    }
}

/// A declared graph input or output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    /// The graph's name for it.
    pub name: String,
    /// Element type.
    pub dtype: DataType,
    /// Axes: fixed sizes, or symbolic names for dynamic axes (always `"batch"` in practice).
    pub shape: Vec<Dim>,
}

/// Element types a manifest may declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    /// 32-bit float.
    Float32,
    /// 16-bit float.
    Float16,
    /// 64-bit signed integer.
    Int64,
    /// Boolean.
    Bool,
}

impl DataType {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Float32 => "float32",
            DataType::Float16 => "float16",
            DataType::Int64 => "int64",
            DataType::Bool => "bool",
        }
    }

    /// Whether this is one of the float types.
    pub fn is_float(self) -> bool {
        matches!(self, DataType::Float32 | DataType::Float16)
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One axis of a declared shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    /// A fixed size.
    Fixed(u64),
    /// A dynamic axis with its symbolic name.
    Symbolic(String),
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbolic(s) => write!(f, "'{s}'"),
        }
    }
}

/// Scheduler configurations of the three stages.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedulers {
    /// The prior (x₀-prediction, clip ±5 for Karlo).
    pub prior: SchedulerConfig,
    /// The decoder (ε-prediction, learned-range variance).
    pub decoder: SchedulerConfig,
    /// Every super-resolution stage.
    pub upsampler: SchedulerConfig,
}

/// Default sampling settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// Prior steps (≥ 2).
    pub prior_steps: u32,
    /// Decoder steps (≥ 2).
    pub decoder_steps: u32,
    /// Steps per super-resolution stage (≥ 2).
    pub upsampler_steps: u32,
    /// Prior guidance scale.
    pub prior_guidance_scale: f32,
    /// Decoder guidance scale.
    pub decoder_guidance_scale: f32,
}

/// Where the constant tensors are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorsFile {
    /// The safetensors file, relative to the repository.
    pub file: String,
}

/// Sizes the graph contracts tie together, as found in the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSizes {
    /// D: CLIP embedding width.
    pub embedding_dim: usize,
    /// L: text context length.
    pub context_length: usize,
    /// N: decoder context length (L + the text projection's extra tokens).
    pub decoder_context_length: usize,
    /// C: decoder cross-attention width.
    pub cross_attention_dim: usize,
    /// T: decoder time-embedding width.
    pub time_embed_dim: usize,
    /// S: image encoder input side; `None` without an image encoder.
    pub clip_image_size: Option<usize>,
    /// H: decoder resolution.
    pub decoder_image_size: usize,
    /// (input, output) side of each upsampler stage, in order.
    pub upsampler_sizes: Vec<(usize, usize)>,
    /// The float type of every graph (all float32 or all float16).
    pub float_dtype: DataType,
}

/// One entry of a graph contract: name, dtype (`None` = the repository's float type), shape in
/// contract letters.
type ContractTensor = (&'static str, Option<DataType>, &'static [Letter]);

/// An axis of a contract shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Letter {
    /// The symbolic batch axis.
    Batch,
    /// A fixed number the contract itself imposes.
    Is(u64),
    /// A size shared across the repository, by letter (D, L, N, C, T, S, H, U).
    Size(char),
}

use Letter::{Batch, Is, Size};

const F: Option<DataType> = None;
const I64: Option<DataType> = Some(DataType::Int64);
const BOOL: Option<DataType> = Some(DataType::Bool);

/// (inputs, outputs) of each contract, as in docs/model-repository.md.
fn contract(name: &str) -> (&'static [ContractTensor], &'static [ContractTensor]) {
    match name {
        "text_encoder" => (
            &[("input_ids", I64, &[Batch, Size('L')])],
            &[
                ("text_embeds", F, &[Batch, Size('D')]),
                ("last_hidden_state", F, &[Batch, Size('L'), Size('D')]),
            ],
        ),
        "image_encoder" => (
            &[("pixel_values", F, &[Batch, Is(3), Size('S'), Size('S')])],
            &[("image_embeds", F, &[Batch, Size('D')])],
        ),
        "prior" => (
            &[
                ("hidden_states", F, &[Batch, Size('D')]),
                ("timestep", I64, &[Batch]),
                ("proj_embedding", F, &[Batch, Size('D')]),
                ("encoder_hidden_states", F, &[Batch, Size('L'), Size('D')]),
                ("attention_mask", BOOL, &[Batch, Size('L')]),
            ],
            &[("predicted_image_embedding", F, &[Batch, Size('D')])],
        ),
        "text_proj" => (
            &[
                ("image_embeddings", F, &[Batch, Size('D')]),
                ("prompt_embeds", F, &[Batch, Size('D')]),
                (
                    "text_encoder_hidden_states",
                    F,
                    &[Batch, Size('L'), Size('D')],
                ),
            ],
            &[
                ("encoder_hidden_states", F, &[Batch, Size('N'), Size('C')]),
                ("additive_clip_time_embeddings", F, &[Batch, Size('T')]),
            ],
        ),
        "decoder" => (
            &[
                ("sample", F, &[Batch, Is(3), Size('H'), Size('H')]),
                ("timestep", I64, &[Batch]),
                ("encoder_hidden_states", F, &[Batch, Size('N'), Size('C')]),
                ("class_labels", F, &[Batch, Size('T')]),
                ("attention_mask", BOOL, &[Batch, Size('N')]),
            ],
            &[("out_sample", F, &[Batch, Is(6), Size('H'), Size('H')])],
        ),
        "decoder_inpaint" => (
            &[
                ("sample", F, &[Batch, Is(3), Size('H'), Size('H')]),
                ("timestep", I64, &[Batch]),
                ("encoder_hidden_states", F, &[Batch, Size('N'), Size('C')]),
                ("class_labels", F, &[Batch, Size('T')]),
                ("attention_mask", BOOL, &[Batch, Size('N')]),
                ("masked_image", F, &[Batch, Is(3), Size('H'), Size('H')]),
                ("mask", F, &[Batch, Is(1), Size('H'), Size('H')]),
            ],
            &[("out_sample", F, &[Batch, Is(6), Size('H'), Size('H')])],
        ),
        "upsampler" => (
            &[
                ("sample", F, &[Batch, Is(6), Size('U'), Size('U')]),
                ("timestep", I64, &[Batch]),
            ],
            &[("out_sample", F, &[Batch, Is(3), Size('U'), Size('U')])],
        ),
        other => unreachable!("no contract named {other}; this is a bug"),
    }
}

/// What each contract letter means, for messages.
fn size_name(letter: char) -> &'static str {
    match letter {
        'D' => "embedding_dim",
        'L' => "text.context_length",
        'N' => "the decoder context length",
        'C' => "the decoder cross-attention width",
        'T' => "the decoder time-embedding width",
        'S' => "the image encoder's input size",
        'H' => "the decoder resolution",
        'U' => "the upsampler resolution",
        _ => "a size",
    }
}

fn fail<T>(message: impl Into<String>) -> Result<T> {
    Err(RuntimeError::Manifest(message.into()))
}

/// Contract checking state: sizes found so far and the repository's float type.
#[derive(Debug, Default)]
struct ContractState {
    sizes: HashMap<char, u64>,
    float_dtype: Option<DataType>,
}

impl ContractState {
    /// Checks one component against its contract (mirrors `_check_component` in repository.py).
    fn check(&mut self, label: &str, contract_name: &str, spec: &ComponentSpec) -> Result<()> {
        let (inputs, outputs) = contract(contract_name);
        for (side, declared, expected) in [
            ("input", &spec.inputs, inputs),
            ("output", &spec.outputs, outputs),
        ] {
            let mut seen: Vec<&str> = Vec::new();
            for tensor in declared {
                let name = tensor.name.as_str();
                let at = format!("{label}: {side} '{name}'");
                let Some((_, want_dtype, want_shape)) = expected.iter().find(|(n, ..)| *n == name)
                else {
                    return fail(format!("{at} is not part of the {contract_name} contract"));
                };
                if seen.contains(&name) {
                    return fail(format!("{at} is listed twice"));
                }
                seen.push(name);
                match want_dtype {
                    None => {
                        if !tensor.dtype.is_float() {
                            return fail(format!(
                                "{at} must be float32 or float16, manifest says {}",
                                tensor.dtype
                            ));
                        }
                        match self.float_dtype {
                            None => self.float_dtype = Some(tensor.dtype),
                            Some(first) if first != tensor.dtype => {
                                return fail(format!(
                                    "{at} is {} but other float tensors are {first}",
                                    tensor.dtype
                                ));
                            }
                            Some(_) => {}
                        }
                    }
                    Some(want) if *want != tensor.dtype => {
                        return fail(format!(
                            "{at} must have dtype {want}, manifest says {}",
                            tensor.dtype
                        ));
                    }
                    Some(_) => {}
                }
                if tensor.shape.len() != want_shape.len() {
                    return fail(format!(
                        "{at} must have rank {}, manifest says {}",
                        want_shape.len(),
                        tensor.shape.len()
                    ));
                }
                for (axis, (dim, want)) in tensor.shape.iter().zip(want_shape.iter()).enumerate() {
                    match (want, dim) {
                        (Batch, Dim::Symbolic(s)) if !s.is_empty() => {}
                        (Batch, _) => {
                            return fail(format!(
                                "{at} dim {axis} must be the symbolic batch dimension, manifest says {dim}"
                            ));
                        }
                        (_, Dim::Symbolic(_)) | (_, Dim::Fixed(0)) => {
                            return fail(format!(
                                "{at} dim {axis} must be a fixed positive size, manifest says {dim}"
                            ));
                        }
                        (Is(n), Dim::Fixed(d)) if n != d => {
                            return fail(format!("{at} dim {axis} must be {n}, manifest says {d}"));
                        }
                        (Is(_), Dim::Fixed(_)) => {}
                        (Size(letter), Dim::Fixed(d)) => match self.sizes.get(letter) {
                            Some(known) if known != d => {
                                return fail(format!(
                                    "{at} dim {axis} is {d}, but {} is {known}",
                                    size_name(*letter)
                                ));
                            }
                            Some(_) => {}
                            None => {
                                self.sizes.insert(*letter, *d);
                            }
                        },
                    }
                }
            }
            if let Some((missing, ..)) = expected.iter().find(|(n, ..)| !seen.contains(n)) {
                return fail(format!(
                    "{label}: {side} '{missing}' is missing from the manifest"
                ));
            }
        }
        if let (Some(n), Some(l)) = (self.sizes.get(&'N'), self.sizes.get(&'L'))
            && n <= l
        {
            return fail(format!(
                "{label}: decoder context {n} must be longer than the text context {l}"
            ));
        }
        Ok(())
    }

    fn size(&self, letter: char) -> usize {
        self.sizes.get(&letter).copied().unwrap_or(0) as usize
    }
}

/// Refuses paths that could leave the repository: absolute, `..`, backslashes, empty, or the
/// manifest itself.
pub(crate) fn check_relative_path(path: &str) -> Result<()> {
    let p = Path::new(path);
    let escapes = p.components().any(|c| !matches!(c, Component::Normal(_)));
    if path.is_empty() || path.contains('\\') || escapes || path == MANIFEST {
        return fail(format!(
            "files: '{path}' is not a relative POSIX path inside the repository"
        ));
    }
    Ok(())
}

impl Manifest {
    /// Parses manifest.json's text (unknown keys are refused).
    pub fn parse(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| RuntimeError::Manifest(format!("{MANIFEST}: {e}")))
    }

    /// Every graph as (label, spec), upsampler stages as `upsamplers[i].first` / `.last`; a
    /// stage whose `last` names the same file as `first` is listed once.
    pub fn graphs(&self) -> Vec<(String, &ComponentSpec)> {
        let c = &self.components;
        let mut graphs: Vec<(String, &ComponentSpec)> =
            vec![("text_encoder".into(), &c.text_encoder)];
        if let Some(image) = &c.image_encoder {
            graphs.push(("image_encoder".into(), image));
        }
        graphs.push(("prior".into(), &c.prior));
        graphs.push(("text_proj".into(), &c.text_proj));
        graphs.push(("decoder".into(), &c.decoder));
        if let Some(inpaint) = &c.decoder_inpaint {
            graphs.push(("decoder_inpaint".into(), inpaint));
        }
        for (i, stage) in c.upsamplers.iter().enumerate() {
            graphs.push((format!("upsamplers[{i}].first"), &stage.first));
            if stage.last.file != stage.first.file {
                graphs.push((format!("upsamplers[{i}].last"), &stage.last));
            }
        }
        graphs
    }

    /// Every file the manifest uses: tokenizer, tensors and graphs.
    pub fn referenced_files(&self) -> Vec<&str> {
        let mut files = vec![self.text.tokenizer.as_str(), self.tensors.file.as_str()];
        files.extend(self.graphs().iter().map(|(_, spec)| spec.file.as_str()));
        files
    }

    /// The checks that need no other file (structure, contracts, paths); returns the sizes.
    pub fn validate(&self) -> Result<ModelSizes> {
        if self.format != FORMAT {
            return fail(format!(
                "{MANIFEST}: format is \"{}\", this loader reads \"{FORMAT}\"",
                self.format
            ));
        }
        if self.model_id.is_empty() {
            return fail(format!("{MANIFEST}: model_id is empty"));
        }
        if self.embedding_dim == 0 || self.text.context_length < 2 {
            return fail(format!(
                "{MANIFEST}: embedding_dim must be positive and text.context_length at least 2"
            ));
        }
        let mut state = ContractState::default();
        state.sizes.insert('D', self.embedding_dim as u64);
        state.sizes.insert('L', self.text.context_length as u64);

        let c = &self.components;
        state.check("text_encoder", "text_encoder", &c.text_encoder)?;
        if let Some(image) = &c.image_encoder {
            state.check("image_encoder", "image_encoder", image)?;
        }
        state.check("prior", "prior", &c.prior)?;
        state.check("text_proj", "text_proj", &c.text_proj)?;
        state.check("decoder", "decoder", &c.decoder)?;
        if let Some(inpaint) = &c.decoder_inpaint {
            state.check("decoder_inpaint", "decoder_inpaint", inpaint)?;
        }

        if c.upsamplers.is_empty() {
            return fail("components.upsamplers: at least one upsampler stage is required");
        }
        let mut previous = state.size('H');
        let mut upsampler_sizes = Vec::new();
        for (i, stage) in c.upsamplers.iter().enumerate() {
            if stage.input_size != previous {
                return fail(format!(
                    "components.upsamplers[{i}].input_size is {}, but the stage before outputs {previous}",
                    stage.input_size
                ));
            }
            for (part, spec) in [("first", &stage.first), ("last", &stage.last)] {
                state.sizes.insert('U', stage.output_size as u64);
                state.check(&format!("upsamplers[{i}].{part}"), "upsampler", spec)?;
            }
            state.sizes.remove(&'U');
            upsampler_sizes.push((stage.input_size, stage.output_size));
            previous = stage.output_size;
        }

        match (&c.image_encoder, &self.image_preprocess) {
            (Some(_), None) => return fail(format!("{MANIFEST}: missing key 'image_preprocess'")),
            (None, Some(_)) => {
                return fail(format!(
                    "{MANIFEST}: image_preprocess is given but there is no image_encoder component"
                ));
            }
            (Some(_), Some(pre)) => {
                if pre.size != state.size('S') {
                    return fail(format!(
                        "image_preprocess.size is {}, but image_encoder takes {s}x{s} pixels",
                        pre.size,
                        s = state.size('S')
                    ));
                }
                let finite = pre.rescale.is_finite()
                    && pre.mean.iter().all(|v| v.is_finite())
                    && pre.std.iter().all(|v| v.is_finite() && *v > 0.0);
                if !finite {
                    return fail(
                        "image_preprocess: rescale and mean must be finite and std positive",
                    );
                }
            }
            (None, None) => {}
        }

        for (key, steps) in [
            ("prior_steps", self.defaults.prior_steps),
            ("decoder_steps", self.defaults.decoder_steps),
            ("upsampler_steps", self.defaults.upsampler_steps),
        ] {
            if steps < 2 {
                return fail(format!(
                    "defaults.{key} must be at least 2 (UnCLIPScheduler cannot space 1 step)"
                ));
            }
        }
        for (key, scale) in [
            ("prior_guidance_scale", self.defaults.prior_guidance_scale),
            (
                "decoder_guidance_scale",
                self.defaults.decoder_guidance_scale,
            ),
        ] {
            if !scale.is_finite() {
                return fail(format!("defaults.{key} must be a finite number"));
            }
        }

        for (path, digest) in &self.files {
            check_relative_path(path)?;
            let hex = digest.len() == 64
                && digest
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !hex {
                return fail(format!(
                    "files: '{path}' must map to a 64-digit lowercase hex sha256"
                ));
            }
        }
        for path in self.referenced_files() {
            if !self.files.contains_key(path) {
                return fail(format!(
                    "'{path}' is used by the manifest but not listed in files"
                ));
            }
        }

        Ok(ModelSizes {
            embedding_dim: self.embedding_dim,
            context_length: self.text.context_length,
            decoder_context_length: state.size('N'),
            cross_attention_dim: state.size('C'),
            time_embed_dim: state.size('T'),
            clip_image_size: c.image_encoder.as_ref().map(|_| state.size('S')),
            decoder_image_size: state.size('H'),
            upsampler_sizes,
            float_dtype: state.float_dtype.unwrap_or(DataType::Float32),
        })
    }
}
