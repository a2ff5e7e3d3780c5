//! Any bytes as a JSON-RPC frame: decoding never panics, and whatever
//! decodes re-encodes into a frame that decodes again, to the same kind of
//! message with the same id.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use shardmcp::protocol::jsonrpc::{
    decode, encode_batch, encode_error, encode_request, encode_result, Id, Incoming, Message,
};

const MAX: usize = 1 << 20;

fn encode(message: &Message) -> Bytes {
    match message {
        Message::Request { id, method, params } => {
            encode_request(Some(id), method, params.as_ref())
        }
        Message::Notification { method, params } => encode_request(None, method, params.as_ref()),
        Message::Response { id, result } => encode_result(id, result),
        Message::ErrorResponse { id, error } => encode_error(id.as_ref(), error),
    }
}

fn shape(message: &Message) -> (u8, Option<&Id>, Option<&str>) {
    match message {
        Message::Request { id, method, .. } => (0, Some(id), Some(method)),
        Message::Notification { method, .. } => (1, None, Some(method)),
        Message::Response { id, .. } => (2, Some(id), None),
        Message::ErrorResponse { id, .. } => (3, id.as_ref(), None),
    }
}

fn round_trip(message: &Message) -> Bytes {
    let bytes = encode(message);
    match decode(&bytes, usize::MAX) {
        Ok(Incoming::Single(again)) => assert_eq!(shape(message), shape(&again)),
        other => panic!("{message:?} re-encoded as {bytes:?}, which decodes to {other:?}"),
    }
    bytes
}

fuzz_target!(|data: &[u8]| {
    match decode(data, MAX) {
        Ok(Incoming::Single(message)) => {
            round_trip(&message);
        }
        Ok(Incoming::Batch(entries)) => {
            assert!(!entries.is_empty());
            let parts: Vec<Bytes> = entries
                .iter()
                .map(|entry| match entry {
                    Ok(message) => round_trip(message),
                    Err(refusal) => encode_error(refusal.id.as_ref(), &refusal.error),
                })
                .collect();
            let batch = encode_batch(&parts);
            assert!(matches!(decode(&batch, usize::MAX), Ok(Incoming::Batch(_))));
        }
        Err(refusal) => {
            let _ = encode_error(refusal.id.as_ref(), &refusal.error);
        }
    }
});
