//! What the commands write and print: output file names, the lines about written images, the
//! closing summary, and the `info` and `stats` reports.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use unclip_proto::v1::{
    GatewayInfo, GatewayStats, GeneratedImage, ImagesResponse, Preview, ReplicaInfo,
};

/// The file of image `k` of `count`: `out` itself for one image, else `STEM-k.EXT` next to it
/// (`.png` when `out` has no extension).
pub fn output_path(out: &Path, k: usize, count: usize) -> PathBuf {
    if count == 1 {
        return out.to_path_buf();
    }
    let (stem, ext) = stem_and_extension(out);
    out.with_file_name(format!("{stem}-{k}.{ext}"))
}

/// `out`'s file stem and extension (`png` when it has none).
fn stem_and_extension(out: &Path) -> (String, String) {
    let stem = out.file_stem().unwrap_or_default().to_string_lossy();
    let ext = out
        .extension()
        .map_or_else(|| "png".into(), |e| e.to_string_lossy());
    (stem.into_owned(), ext.into_owned())
}

/// The animation's file: `STEM.apng` next to `out`.
pub fn animation_path(out: &Path) -> PathBuf {
    let stem = out.file_stem().unwrap_or_default().to_string_lossy();
    out.with_file_name(format!("{stem}.apng"))
}

/// The file of preview image `k` of `count` from `stage` (the gateway's stage label):
/// `STEM.TAG.EXT`, or `STEM.TAG-k.EXT` for several, next to `out`. The tag is `decoder` for
/// `decoder.decode` and `upsamplerK` for `decoder.upsample[K]`, else the label kept to letters
/// and digits.
pub fn preview_path(out: &Path, stage: &str, k: usize, count: usize) -> PathBuf {
    let (stem, ext) = stem_and_extension(out);
    let stage = preview_tag(stage);
    output_path(
        &out.with_file_name(format!("{stem}.{stage}.{ext}")),
        k,
        count,
    )
}

/// The file-name tag of a preview's stage label (see [`preview_path`]).
fn preview_tag(stage: &str) -> String {
    let upsampler = stage
        .strip_prefix("decoder.upsample[")
        .and_then(|rest| rest.strip_suffix(']'));
    let tag = match (stage, upsampler) {
        ("decoder.decode", _) => "decoder".to_string(),
        (_, Some(k)) => format!("upsampler{k}"),
        _ => stage.to_string(),
    };
    tag.chars().filter(char::is_ascii_alphanumeric).collect()
}

/// Writes a stream's preview images for `out`; returns one line per file.
pub fn write_preview(
    preview: &Preview,
    out: &Path,
    kind: ImageKind,
) -> anyhow::Result<Vec<String>> {
    let count = preview.images.len();
    let mut lines = Vec::with_capacity(count);
    for (k, image) in preview.images.iter().enumerate() {
        let path = preview_path(out, &preview.stage, k, count);
        write_file(&path, &image.png)?;
        let line = image_line(&path, image, preview.size, kind);
        lines.push(format!("{line} [{} preview]", preview.stage));
    }
    Ok(lines)
}

/// Fails unless the folder `out` goes into exists, so no work is done for nothing.
pub fn check_output_dir(out: &Path) -> anyhow::Result<()> {
    let dir = match out.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!("the output folder {} does not exist", dir.display());
    }
    Ok(())
}

/// Reads an input file; the error names what it is and where.
pub fn read_input(what: &str, path: &Path) -> anyhow::Result<bytes::Bytes> {
    std::fs::read(path)
        .map(bytes::Bytes::from)
        .with_context(|| format!("cannot read the {what} {}", path.display()))
}

/// Whether a response's images are frames (interpolations and text diffs), which carry a theta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    /// Independent images, each with its seed.
    Images,
    /// Frames in theta order, sharing one seed.
    Frames,
}

/// Writes the response's images (and animation) for `out`; returns one line per file.
pub fn write_response(
    response: &ImagesResponse,
    out: &Path,
    kind: ImageKind,
) -> anyhow::Result<Vec<String>> {
    let count = response.images.len();
    let mut lines = Vec::with_capacity(count + 1);
    for (k, image) in response.images.iter().enumerate() {
        let path = output_path(out, k, count);
        write_file(&path, &image.png)?;
        lines.push(image_line(&path, image, response.size, kind));
    }
    if !response.animation.is_empty() {
        let path = animation_path(out);
        write_file(&path, &response.animation)?;
        lines.push(format!(
            "wrote {} (animation, {count} frames)",
            path.display()
        ));
    }
    Ok(lines)
}

/// Writes `bytes` to `path`; the error names the file.
fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// "wrote out-1.png (256×256, seed 8)", with the theta for frames.
pub fn image_line(path: &Path, image: &GeneratedImage, size: u32, kind: ImageKind) -> String {
    let mut line = format!(
        "wrote {} ({size}×{size}, seed {}",
        path.display(),
        image.seed
    );
    if kind == ImageKind::Frames {
        let _ = write!(line, ", theta {:.3}", image.theta);
    }
    line.push(')');
    line
}

/// The closing line: the seed, how many images, the time the call took.
pub fn summary_line(response: &ImagesResponse, kind: ImageKind, elapsed: Duration) -> String {
    let count = response.images.len();
    let noun = match (kind, count) {
        (ImageKind::Images, 1) => "image",
        (ImageKind::Images, _) => "images",
        (ImageKind::Frames, 1) => "frame",
        (ImageKind::Frames, _) => "frames",
    };
    format!(
        "seed {}: {count} {noun} in {:.2} s",
        response.seed,
        elapsed.as_secs_f64()
    )
}

/// --verbose: the model and one line per stage call, in the order they ran.
pub fn timing_lines(response: &ImagesResponse) -> Vec<String> {
    let mut lines = vec![format!(
        "model {} ({})",
        response.model_id, response.model_version
    )];
    for timing in &response.timings {
        let whence = if timing.cached {
            "cached".to_string()
        } else {
            timing.replica.clone()
        };
        lines.push(format!(
            "  {:<22} {:9.1} ms  {whence}",
            timing.stage,
            timing.seconds * 1e3
        ));
    }
    lines
}

/// `unclip info`: the model, the gateway's limits, its cache and replicas.
pub fn format_info(info: &GatewayInfo) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "gateway {}", info.server_version);
    if let Some(model) = &info.model {
        let _ = writeln!(
            text,
            "model {} ({}), on {}",
            model.model_id, model.version, model.device
        );
        if !model.description.trim().is_empty() {
            let _ = writeln!(text, "  {}", model.description.trim());
        }
        let mut sizes = format!("{} px", model.decoder_image_size);
        for stage in &model.upsamplers {
            let _ = write!(sizes, " → {} px", stage.output_size);
        }
        let _ = writeln!(text, "  images: {sizes}");
        if let Some(d) = &model.defaults {
            let _ = writeln!(
                text,
                "  defaults: prior {} steps, guidance {}; decoder {} steps, guidance {}; \
                 upsamplers {} steps",
                d.prior_steps,
                d.prior_guidance_scale,
                d.decoder_steps,
                d.decoder_guidance_scale,
                d.upsampler_steps
            );
        }
    }
    let _ = writeln!(
        text,
        "limits: {} images, {} frames, {} characters per prompt, {:.1} MiB per image",
        info.max_images,
        info.max_frames,
        info.max_prompt_chars,
        info.max_image_bytes as f64 / (1 << 20) as f64
    );
    let _ = writeln!(text, "cache: {}", info.cache_backend);
    write_replicas(&mut text, &info.replicas, false);
    text
}

/// `unclip stats`: the cache's counters, requests per capability and outcome, and replicas.
pub fn format_stats(stats: &GatewayStats) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "cache: {} ({}): {} hits, {} misses, {} errors, {} rejected",
        stats.cache_backend,
        if stats.cache_healthy {
            "healthy"
        } else {
            "unhealthy"
        },
        stats.cache_hits,
        stats.cache_misses,
        stats.cache_errors,
        stats.cache_rejected
    );
    let mut requests: Vec<_> = stats.requests.iter().collect();
    requests.sort();
    let _ = writeln!(
        text,
        "requests:{}",
        if requests.is_empty() { " none" } else { "" }
    );
    let width = requests.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (name, count) in requests {
        let _ = writeln!(text, "  {name:<width$}  {count}");
    }
    write_replicas(&mut text, &stats.replicas, true);
    text
}

/// The replica table, with the call counters when `counters`.
fn write_replicas(text: &mut String, replicas: &[ReplicaInfo], counters: bool) {
    let _ = writeln!(
        text,
        "replicas:{}",
        if replicas.is_empty() { " none" } else { "" }
    );
    let width = replicas.iter().map(|r| r.address.len()).max().unwrap_or(0);
    for r in replicas {
        let state = if r.available {
            "available"
        } else {
            "backed off"
        };
        let _ = write!(text, "  {:<7} {:<width$}  {state:<10}", r.stage, r.address);
        if counters {
            let _ = write!(
                text,
                "  calls {}, failures {}, retried {}, in flight {}",
                r.calls, r.failures, r.retried, r.in_flight
            );
        }
        text.truncate(text.trim_end().len());
        text.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use unclip_proto::v1::StageTiming;

    /// One image keeps --out; several get -k before the extension, next to it.
    #[test]
    fn output_names() {
        let out = Path::new("dir/out.png");
        assert_eq!(output_path(out, 0, 1), Path::new("dir/out.png"));
        assert_eq!(output_path(out, 0, 3), Path::new("dir/out-0.png"));
        assert_eq!(output_path(out, 2, 3), Path::new("dir/out-2.png"));
        assert_eq!(output_path(Path::new("x"), 1, 2), Path::new("x-1.png"));
        assert_eq!(
            output_path(Path::new("a.b.png"), 1, 2),
            Path::new("a.b-1.png")
        );
        assert_eq!(animation_path(out), Path::new("dir/out.apng"));
        assert_eq!(
            preview_path(out, "decoder.decode", 0, 1),
            Path::new("dir/out.decoder.png")
        );
        assert_eq!(
            preview_path(out, "decoder.upsample[0]", 1, 2),
            Path::new("dir/out.upsampler0-1.png")
        );
        assert_eq!(
            preview_path(out, "decoder.upsample[12]", 0, 1),
            Path::new("dir/out.upsampler12.png")
        );
        // Another label keeps its letters and digits.
        assert_eq!(
            preview_path(out, "x.y[1]/..", 0, 1),
            Path::new("dir/out.xy1.png")
        );
        assert_eq!(animation_path(Path::new("diff")), Path::new("diff.apng"));
    }

    /// Output folders are checked before any work.
    #[test]
    fn output_dir_checked() {
        assert!(check_output_dir(Path::new("out.png")).is_ok());
        let err = check_output_dir(Path::new("/nonexistent/x.png")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the output folder /nonexistent does not exist"
        );
        let err = read_input("image", Path::new("/nonexistent/a.png")).unwrap_err();
        assert!(
            format!("{err:#}").starts_with("cannot read the image /nonexistent/a.png: "),
            "{err:#}"
        );
    }

    /// Images, frames and the animation land where the names say, with one line each.
    #[test]
    fn writes_images_and_animation() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("diff.png");
        let image = |seed, theta, png: &'static [u8]| GeneratedImage {
            png: bytes::Bytes::from_static(png),
            seed,
            theta,
        };
        let response = ImagesResponse {
            images: vec![image(5, 0.0, b"a"), image(5, 0.5, b"b")],
            size: 64,
            seed: 5,
            animation: bytes::Bytes::from_static(b"apng"),
            ..Default::default()
        };
        let lines = write_response(&response, &out, ImageKind::Frames).unwrap();
        assert_eq!(std::fs::read(dir.path().join("diff-1.png")).unwrap(), b"b");
        assert_eq!(
            std::fs::read(dir.path().join("diff.apng")).unwrap(),
            b"apng"
        );
        assert!(!out.exists());
        assert!(
            lines[1].ends_with("diff-1.png (64×64, seed 5, theta 0.500)"),
            "{lines:?}"
        );
        assert!(
            lines[2].contains("diff.apng (animation, 2 frames)"),
            "{lines:?}"
        );

        let one = ImagesResponse {
            images: vec![image(9, 0.0, b"c")],
            size: 64,
            seed: 9,
            ..Default::default()
        };
        let lines = write_response(&one, &out, ImageKind::Images).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"c");
        assert_eq!(lines.len(), 1);
        assert!(lines[0].ends_with("diff.png (64×64, seed 9)"), "{lines:?}");
        assert_eq!(
            summary_line(&one, ImageKind::Images, Duration::from_millis(1500)),
            "seed 9: 1 image in 1.50 s"
        );
    }

    /// Timings say where each call ran, or that it was cached.
    #[test]
    fn timing_report() {
        let response = ImagesResponse {
            model_id: "shapes".into(),
            model_version: "sha256-0".into(),
            timings: vec![
                StageTiming {
                    stage: "clip.encode_text".into(),
                    seconds: 0.0,
                    cached: true,
                    replica: String::new(),
                    compute_seconds: 0.0,
                },
                StageTiming {
                    stage: "prior.sample".into(),
                    seconds: 0.25,
                    cached: false,
                    replica: "http://127.0.0.1:1".into(),
                    compute_seconds: 0.2,
                },
            ],
            ..Default::default()
        };
        let lines = timing_lines(&response);
        assert_eq!(lines[0], "model shapes (sha256-0)");
        assert!(lines[1].ends_with("cached"), "{lines:?}");
        assert!(
            lines[2].contains("250.0 ms  http://127.0.0.1:1"),
            "{lines:?}"
        );
    }

    /// The reports name every replica and counter.
    #[test]
    fn reports() {
        let replica = ReplicaInfo {
            stage: "decoder".into(),
            address: "http://127.0.0.1:9".into(),
            available: false,
            calls: 4,
            failures: 1,
            retried: 1,
            in_flight: 2,
        };
        let stats = GatewayStats {
            replicas: vec![replica.clone()],
            cache_hits: 3,
            cache_backend: "redis".into(),
            cache_healthy: true,
            requests: [("generate ok".to_string(), 2)].into(),
            ..Default::default()
        };
        let text = format_stats(&stats);
        assert!(
            text.contains("cache: redis (healthy): 3 hits, 0 misses"),
            "{text}"
        );
        assert!(text.contains("generate ok  2"), "{text}");
        assert!(
            text.contains(
                "http://127.0.0.1:9  backed off  calls 4, failures 1, retried 1, in flight 2"
            ),
            "{text}"
        );
        let info = GatewayInfo {
            server_version: "0.1.0".into(),
            max_images: 10,
            cache_backend: "memory".into(),
            replicas: vec![replica],
            ..Default::default()
        };
        let text = format_info(&info);
        assert!(text.starts_with("gateway 0.1.0\n"), "{text}");
        assert!(text.contains("limits: 10 images"), "{text}");
        assert!(text.contains("cache: memory"), "{text}");
        assert!(
            text.contains("  decoder http://127.0.0.1:9  backed off\n"),
            "{text}"
        );
    }
}
