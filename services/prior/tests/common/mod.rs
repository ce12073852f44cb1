//! The prior service as the test kit runs it (`TestServer` is it on 127.0.0.1:0, with
//! karlo-tiny unless a test gives another configuration), and the text encodings the tests
//! send it.

#![allow(dead_code)] // each test file uses a different subset

use ndarray::{Array2, Array3};
use unclip_proto::v1::prior_service_client::PriorServiceClient;
use unclip_proto::v1::{Tensor, TextEncoding};
use unclip_testkit::{Fixture, karlo_tiny};

unclip_testkit::service!(Prior, unclip_prior, "unclip-prior", PriorServiceClient);

/// A copy of karlo-tiny (graphs symlinked) whose prior clip mean/std are `mean`/`std` instead
/// of karlo-tiny's zeros, with the manifest's hashes and version recomputed: its raw
/// embeddings are then informative (karlo-tiny's own are identically 0).
pub fn karlo_tiny_with_prior_stats(
    mean: impl Fn(usize) -> f32,
    std: impl Fn(usize) -> f32,
) -> tempfile::TempDir {
    use safetensors::{Dtype, SafeTensors, tensor::TensorView};
    use unclip_runtime::repository::{blank_version, compute_version, sha256_file};

    let source = karlo_tiny();
    let dir = tempfile::tempdir().unwrap();
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(source.join("manifest.json")).unwrap())
            .unwrap();
    let tensors_file = manifest["tensors"]["file"].as_str().unwrap().to_string();
    for file in manifest["files"].as_object().unwrap().keys() {
        let target = dir.path().join(file);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        if *file != tensors_file {
            std::os::unix::fs::symlink(source.join(file).canonicalize().unwrap(), &target).unwrap();
        }
    }

    // Rewrite tensors.safetensors with the new statistics.
    let bytes = std::fs::read(source.join(&tensors_file)).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let d = manifest["embedding_dim"].as_u64().unwrap() as usize;
    let stat =
        |f: &dyn Fn(usize) -> f32| -> Vec<u8> { (0..d).flat_map(|i| f(i).to_le_bytes()).collect() };
    let (mean_bytes, std_bytes) = (stat(&mean), stat(&std));
    let mut views = Vec::new();
    for (name, view) in st.iter() {
        let view = match name {
            "prior_clip_mean" => TensorView::new(Dtype::F32, vec![d], &mean_bytes).unwrap(),
            "prior_clip_std" => TensorView::new(Dtype::F32, vec![d], &std_bytes).unwrap(),
            _ => view,
        };
        views.push((name.to_string(), view));
    }
    let out = dir.path().join(&tensors_file);
    std::fs::write(&out, safetensors::serialize(views, None).unwrap()).unwrap();

    // New hash, new version.
    manifest["files"][&tensors_file] = sha256_file(&out).unwrap().into();
    manifest["version"] = "to-be-computed".into();
    let text = serde_json::to_string_pretty(&manifest).unwrap();
    let files: std::collections::BTreeMap<String, String> =
        serde_json::from_value(manifest["files"].clone()).unwrap();
    let version = compute_version(&blank_version(&text, "to-be-computed").unwrap(), &files);
    std::fs::write(
        dir.path().join("manifest.json"),
        text.replace("\"to-be-computed\"", &format!("\"{version}\"")),
    )
    .unwrap();
    dir
}

/// The recorded prompt encodings of `fixture` as the ClipService would send them.
pub fn prompt_encoding(fixture: &mut Fixture) -> TextEncoding {
    TextEncoding {
        text_embeds: Some(Tensor::from_array(&fixture.value("prompt_text_embeds"))),
        last_hidden_state: Some(Tensor::from_array(
            &fixture.value("prompt_last_hidden_state"),
        )),
        attention_mask: Some(Tensor::from_array(
            &fixture.value_bool("prompt_attention_mask"),
        )),
        ..Default::default()
    }
}

/// A synthetic but plausible encoding of `b` prompts for a model of width `d`, context `l`:
/// deterministic values, the first `2 + i` tokens of prompt i unmasked.
pub fn synthetic_encoding(b: usize, l: usize, d: usize) -> TextEncoding {
    let embeds = Array2::from_shape_fn((b, d), |(i, j)| ((i * 7 + j * 3) % 11) as f32 / 5.0 - 1.0);
    let hidden = Array3::from_shape_fn((b, l, d), |(i, t, j)| {
        ((i * 13 + t * 5 + j) % 17) as f32 / 8.0 - 1.0
    });
    let mask = Array2::from_shape_fn((b, l), |(i, t)| t < 2 + i);
    TextEncoding {
        text_embeds: Some(Tensor::from_array(&embeds)),
        last_hidden_state: Some(Tensor::from_array(&hidden)),
        attention_mask: Some(Tensor::from_array(&mask)),
        ..Default::default()
    }
}
