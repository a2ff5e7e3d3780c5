//! Any bytes as the start of an HTTP/1.1 connection: the head parser never
//! panics, keeps its bounds, and gives the same head for the bytes it took
//! alone; the WebSocket upgrade checks run on whatever parses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardmcp::fuzzing::ws_accept_key;
use shardmcp::transport::http::parse_head;

const BODY_MAX: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    match parse_head(data, BODY_MAX) {
        Ok(Some(head)) => {
            assert!(head.head_len > 0 && head.head_len <= data.len());
            assert!(head.content_length <= BODY_MAX);
            assert_eq!(
                parse_head(&data[..head.head_len], BODY_MAX),
                Ok(Some(head.clone()))
            );
            if let Ok(accept) = ws_accept_key(&head.method, &head.headers) {
                assert_eq!(accept.len(), 28);
            }
        }
        // More bytes needed: never while holding more than the head bound.
        Ok(None) => assert!(data.len() <= 16 << 10),
        Err(status) => assert!(status.len() > 4 && status.as_bytes()[3] == b' '),
    }
});
