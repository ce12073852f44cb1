//! The gateway calls of the subcommands: inputs are read and the output folder checked first
//! ([`Call::prepare`]), so a typo fails before any service starts; then [`Call::execute`] calls
//! the streaming RPC with a progress bar and writes the files.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tonic::Status;
use unclip_proto::v1::{
    GenerateRequest, GetInfoRequest, GetStatsRequest, ImagesResponse, InpaintRequest,
    InterpolateRequest, TextDiffRequest, VaryRequest,
};

use crate::args::{BenchArgs, Command, GlobalArgs};
use crate::bench;
use crate::client::{ClientError, Gateway, RpcError, collect, connect, with_deadline};
use crate::output::{
    ImageKind, check_output_dir, format_info, format_stats, read_input, summary_line, timing_lines,
    write_response,
};
use crate::progress::ProgressView;

/// One gateway call, ready to send.
#[derive(Debug, Clone)]
pub enum Call {
    /// `GenerateStream`, images to `out`.
    Generate {
        /// The request.
        request: GenerateRequest,
        /// Where the images go.
        out: PathBuf,
    },
    /// `VaryStream`, images to `out`.
    Vary {
        /// The request, with the image read.
        request: VaryRequest,
        /// Where the images go.
        out: PathBuf,
    },
    /// `InterpolateStream`, frames to `out`.
    Interpolate {
        /// The request, with both images read.
        request: InterpolateRequest,
        /// Where the frames go.
        out: PathBuf,
    },
    /// `TextDiffStream`, frames and animation to `out`.
    TextDiff {
        /// The request, with the image read.
        request: TextDiffRequest,
        /// Where the frames and the animation go.
        out: PathBuf,
    },
    /// `InpaintStream`, images to `out`.
    Inpaint {
        /// The request, with the image and the mask read.
        request: InpaintRequest,
        /// Where the images go.
        out: PathBuf,
    },
    /// `GetInfo`.
    Info,
    /// `GetStats`.
    Stats,
    /// `GetInfo`, then Generate many times (`unclip bench`).
    Bench(BenchArgs),
}

impl Call {
    /// The call of `command`: reads its input files and checks its output folder. `stack` is
    /// not a call (it is refused here).
    pub fn prepare(command: &Command) -> anyhow::Result<Self> {
        Ok(match command {
            Command::Generate(args) => {
                check_output_dir(&args.out)?;
                Call::Generate {
                    request: args.request(),
                    out: args.out.clone(),
                }
            }
            Command::Vary(args) => {
                let image = read_input("image", &args.image)?;
                check_output_dir(&args.out)?;
                Call::Vary {
                    request: args.request(image),
                    out: args.out.clone(),
                }
            }
            Command::Interpolate(args) => {
                let a = read_input("image", &args.image_a)?;
                let b = read_input("image", &args.image_b)?;
                check_output_dir(&args.out)?;
                Call::Interpolate {
                    request: args.request(a, b),
                    out: args.out.clone(),
                }
            }
            Command::Diff(args) => {
                let image = read_input("image", &args.image)?;
                check_output_dir(&args.out)?;
                Call::TextDiff {
                    request: args.request(image),
                    out: args.out.clone(),
                }
            }
            Command::Inpaint(args) => {
                let image = read_input("image", &args.image)?;
                let mask = read_input("mask", &args.mask)?;
                check_output_dir(&args.out)?;
                Call::Inpaint {
                    request: args.request(image, mask),
                    out: args.out.clone(),
                }
            }
            Command::Info => Call::Info,
            Command::Stats => Call::Stats,
            Command::Bench(args) => Call::Bench(args.clone()),
            Command::Stack(_) => anyhow::bail!("`stack` is not a gateway call"),
            Command::ApiKey(_) => anyhow::bail!("`api-key` is not a gateway call"),
            Command::Soak(_) => anyhow::bail!("`soak` is not a gateway call"),
        })
    }

    /// Calls the gateway at `url` and prints (and writes) the result.
    pub async fn execute(self, url: &str, global: &GlobalArgs) -> anyhow::Result<()> {
        let mut client = connect(url, &global.connect).await?;
        let timeout = Duration::from_secs(global.timeout);
        match self {
            Call::Info => {
                let info = within(timeout, async {
                    let request = with_deadline(GetInfoRequest {}, timeout);
                    Ok(client.get_info(request).await.map_err(RpcError)?)
                })
                .await?;
                print!("{}", format_info(&info.into_inner()));
            }
            Call::Stats => {
                let stats = within(timeout, async {
                    let request = with_deadline(GetStatsRequest {}, timeout);
                    Ok(client.get_stats(request).await.map_err(RpcError)?)
                })
                .await?;
                print!("{}", format_stats(&stats.into_inner()));
            }
            Call::Bench(args) => bench::run(client, args, timeout, global.quiet).await?,
            call => {
                let (kind, out) = match &call {
                    Call::Interpolate { out, .. } | Call::TextDiff { out, .. } => {
                        (ImageKind::Frames, out.clone())
                    }
                    Call::Generate { out, .. }
                    | Call::Vary { out, .. }
                    | Call::Inpaint { out, .. } => (ImageKind::Images, out.clone()),
                    Call::Info | Call::Stats | Call::Bench(_) => unreachable!("handled above"),
                };
                let view = ProgressView::new(global.quiet);
                let started = Instant::now();
                let previews = global.previews.then_some((out.as_path(), kind));
                let response =
                    within(timeout, call.stream(&mut client, timeout, &view, previews)).await?;
                let elapsed = started.elapsed();
                view.finish();
                if response.prompt_truncated {
                    eprintln!(
                        "note: a prompt or caption was longer than the model's context and was cut"
                    );
                }
                for line in write_response(&response, &out, kind)? {
                    println!("{line}");
                }
                if global.verbose {
                    for line in timing_lines(&response) {
                        println!("{line}");
                    }
                }
                println!("{}", summary_line(&response, kind, elapsed));
            }
        }
        Ok(())
    }

    /// Sends an images call as its streaming RPC (asking for previews when they are to be
    /// written) and reads the stream to its result.
    async fn stream(
        self,
        client: &mut Gateway,
        timeout: Duration,
        view: &ProgressView,
        previews: Option<(&Path, ImageKind)>,
    ) -> Result<ImagesResponse, ClientError> {
        let want = previews.is_some();
        let answer = match self {
            Call::Generate { mut request, .. } => {
                request.previews = want;
                client
                    .generate_stream(with_deadline(request, timeout))
                    .await
            }
            Call::Vary { mut request, .. } => {
                request.previews = want;
                client.vary_stream(with_deadline(request, timeout)).await
            }
            Call::Interpolate { mut request, .. } => {
                request.previews = want;
                client
                    .interpolate_stream(with_deadline(request, timeout))
                    .await
            }
            Call::TextDiff { mut request, .. } => {
                request.previews = want;
                client
                    .text_diff_stream(with_deadline(request, timeout))
                    .await
            }
            Call::Inpaint { mut request, .. } => {
                request.previews = want;
                client.inpaint_stream(with_deadline(request, timeout)).await
            }
            Call::Info | Call::Stats | Call::Bench(_) => unreachable!("not a streaming call"),
        };
        let stream = answer.map_err(RpcError)?.into_inner();
        collect(stream, view, previews).await
    }
}

/// Runs `call`, failing with DEADLINE_EXCEEDED when `timeout` passes first. The gateway gets
/// the same deadline; this is the client's side of it, for a gateway that does not answer.
async fn within<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| {
            Err(RpcError(Status::deadline_exceeded(format!(
                "no answer within {} s (--timeout)",
                timeout.as_secs()
            )))
            .into())
        })
}
