//! The decoder service as the test kit runs it (`TestServer` is it on 127.0.0.1:0, with
//! karlo-tiny unless a test gives another configuration), and its graphs loaded without a
//! server.

#![allow(dead_code)] // each test file uses a different subset

use std::path::Path;

use unclip_proto::v1::decoder_service_client::DecoderServiceClient;
use unclip_runtime::{ModelRepository, SessionConfig, init_environment};
use unclip_testkit::ort_library;

unclip_testkit::service!(
    Decoder,
    unclip_decoder,
    "unclip-decoder",
    DecoderServiceClient
);

/// The graphs of `model` loaded directly (no server), one intra-op thread each.
pub fn load_graphs(model: &Path) -> (ModelRepository, unclip_decoder::graphs::Graphs) {
    let repo = ModelRepository::open(model).unwrap();
    let env = init_environment(Some(&ort_library())).unwrap();
    let config = SessionConfig {
        intra_threads: 1,
        ..SessionConfig::default()
    };
    let graphs = unclip_decoder::graphs::Graphs::load(&repo, &env, &config).unwrap();
    (repo, graphs)
}
