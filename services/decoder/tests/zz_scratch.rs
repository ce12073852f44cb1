mod common;
use common::{karlo_tiny, load_graphs};
use ndarray::{Array2, ArrayD};
use unclip_decoder::conditioning::{ImageConditioning, Unconditional, plan};
use unclip_decoder::noise::{NoiseDraws, SeededNoise};
use unclip_decoder::sampling::{self, LoopSettings, SamplerKind, Stepper, ignore_steps};
use unclip_sampler::{NoiseSource, NoiseStage, SchedulerConfig, set_timesteps};

#[test]
fn scratch() {
    let model = std::env::var("SCRATCH_MODEL").map(std::path::PathBuf::from).unwrap_or_else(|_| karlo_tiny());
    let (repo, graphs) = load_graphs(&model);
    let never = std::sync::atomic::AtomicBool::new(false);
    let mut calls = graphs.calls(&never);
    let d = repo.sizes().embedding_dim;
    let size = repo.sizes().decoder_image_size;
    let uncond = Unconditional { image_embedding: repo.tensors().decoder_cfg_embedding(), text: repo.tensors().uncond_text() };
    let mean = repo.tensors().prior_clip_mean(); let std = repo.tensors().prior_clip_std();
    let z = NoiseSource::new(5, 0, NoiseStage::Prior).draw(&[d]);
    let e = Array2::from_shape_fn((1, d), |(_, j)| mean[j] + 0.5 * std[j] * z[j] + if std[j]==0.0 {z[j]} else {0.0});
    let cond_in = ImageConditioning { image_embeds: e, text: uncond.empty_text(1) };
    let cfg = repo.manifest().schedulers.decoder;
    let g8 = sampling::condition(&mut calls, plan(&cond_in, &uncond, 8.0, repo.sizes().decoder_context_length)).unwrap();
    let g1 = sampling::condition(&mut calls, plan(&cond_in, &uncond, 1.0, repo.sizes().decoder_context_length)).unwrap();
    let st = Stepper::new(cfg, SamplerKind::Unclip).unwrap();
    let ts = st.timesteps(25).unwrap();
    let image = sampling::decode(&mut calls, &g8, size, &mut SeededNoise::new(3, 1, NoiseStage::Decoder), &LoopSettings{stepper:&st, timesteps:&ts, init_noise:None, inpaint:None}, &mut ignore_steps).unwrap();
    for &steps in &[25usize, 100] {
        for spacing in ["unclip", "leading"] {
            for clip in [true, false] {
                let c = SchedulerConfig { clip_sample: clip, ..cfg };
                let st = Stepper::new(c, SamplerKind::Ddim { eta: 0.0 }).unwrap();
                let ts = if spacing == "unclip" { set_timesteps(1000, steps).unwrap() } else { st.timesteps(steps).unwrap() };
                let xt = sampling::invert(&mut calls, &g1, &image, &ts, st.schedule()).unwrap();
                struct Z; impl NoiseDraws for Z { fn next(&mut self, s: &[usize]) -> Result<ArrayD<f32>, unclip_server::ServiceError> { Ok(ArrayD::zeros(s)) } }
                let back = sampling::decode(&mut calls, &g1, size, &mut Z, &LoopSettings{stepper:&st, timesteps:&ts, init_noise:Some(&xt), inpaint:None}, &mut ignore_steps).unwrap();
                let diff = (&back - &image).mapv(f32::abs);
                println!("steps {steps} {spacing} clip {clip}: max {:.3} mean {:.4}  (x_T std {:.3})", diff.iter().cloned().fold(0.0,f32::max), diff.mean().unwrap(), xt.std(0.0));
            }
        }
    }
}
