//! The CLIP service as the test kit runs it: `TestServer` is it on 127.0.0.1:0, with
//! karlo-tiny unless a test gives another configuration.

use unclip_proto::v1::clip_service_client::ClipServiceClient;

unclip_testkit::service!(Clip, unclip_clip, "unclip-clip", ClipServiceClient);
