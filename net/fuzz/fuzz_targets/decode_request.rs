//! Fuzz target for the request decoder: the input is a byte stream from a client. Split it into
//! frames with a small cap and decode each against every API kafka-protocol knows; also decode
//! the raw input as one frame. Any panic, abort or huge allocation (libFuzzer's -rss_limit_mb and
//! -malloc_limit_mb) is a bug.
#![no_main]

use bytes::{Bytes, BytesMut};
use kafki_net::kafka_protocol::messages::ApiKey;
use kafki_net::{decode_request, FrameDecoder, SupportedApi, SupportedApis};
use libfuzzer_sys::fuzz_target;

fn every_decodable_api() -> Option<SupportedApis> {
    let entries = ApiKey::iter()
        .map(|key| {
            let range = key.valid_versions();
            SupportedApi::new(key, range.min, range.max)
        })
        .collect();
    SupportedApis::new(entries).ok()
}

fuzz_target!(|data: &[u8]| {
    let Some(supported) = every_decodable_api() else {
        return;
    };
    let _ = decode_request(Bytes::copy_from_slice(data), &supported);
    let framer = FrameDecoder::for_requests(1 << 20);
    let mut stream = BytesMut::from(data);
    while let Ok(Some(frame)) = framer.decode(&mut stream) {
        let _ = decode_request(frame, &supported);
    }
});
