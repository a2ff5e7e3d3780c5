use serde_json::json;

use super::*;

const MAX: usize = 4 << 20;

fn single(text: &str) -> Message {
    match decode(text.as_bytes(), MAX) {
        Ok(Incoming::Single(message)) => message,
        other => panic!("expected one message from {text}, got {other:?}"),
    }
}

fn refused(text: &str) -> Refusal {
    match decode(text.as_bytes(), MAX) {
        Err(refusal) => refusal,
        Ok(other) => panic!("expected a refusal from {text}, got {other:?}"),
    }
}

#[test]
fn requests_keep_string_and_integer_ids_exactly() {
    for (raw, id) in [
        ("7", Id::Int(7)),
        ("-3", Id::Int(-3)),
        ("\"abc\"", Id::Str("abc".into())),
        ("18446744073709551615", Id::Uint(u64::MAX)),
        ("0", Id::Int(0)),
    ] {
        let message = single(&format!(
            r#"{{"jsonrpc":"2.0","id":{raw},"method":"ping"}}"#
        ));
        assert_eq!(
            message,
            Message::Request {
                id: id.clone(),
                method: "ping".into(),
                params: None
            }
        );
        let encoded = encode_result(&id, &json!({}));
        let expected = format!(r#"{{"jsonrpc":"2.0","id":{raw},"result":{{}}}}"#);
        assert_eq!(std::str::from_utf8(&encoded).unwrap(), expected);
    }
}

#[test]
fn notifications_responses_and_error_responses_are_told_apart() {
    assert_eq!(
        single(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#),
        Message::Notification {
            method: "notifications/initialized".into(),
            params: None
        }
    );
    assert_eq!(
        single(r#"{"jsonrpc":"2.0","id":"s-1","result":{"roots":[]}}"#),
        Message::Response {
            id: Id::Str("s-1".into()),
            result: json!({"roots": []})
        }
    );
    let error = single(r#"{"jsonrpc":"2.0","id":4,"error":{"code":-1,"message":"no","data":[1]}}"#);
    assert_eq!(
        error,
        Message::ErrorResponse {
            id: Some(Id::Int(4)),
            error: RpcError::new(-1, "no").with_data(json!([1]))
        }
    );
    let anonymous = single(r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"x"}}"#);
    assert!(matches!(anonymous, Message::ErrorResponse { id: None, .. }));
}

#[test]
fn params_must_be_structured() {
    let with_params = single(r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"a":1}}"#);
    assert!(matches!(
        with_params,
        Message::Request {
            params: Some(_),
            ..
        }
    ));
    let refusal = refused(r#"{"jsonrpc":"2.0","id":1,"method":"m","params":3}"#);
    assert_eq!(refusal.error.code, INVALID_REQUEST);
    assert_eq!(
        refusal.id,
        Some(Id::Int(1)),
        "the id is answered when it could be read"
    );
}

#[test]
fn malformed_json_is_a_parse_error_with_null_id() {
    for text in ["{", "{\"jsonrpc\":\"2.0\",}", "nope", "", "\u{0}"] {
        let refusal = refused(text);
        assert_eq!(refusal.error.code, PARSE_ERROR, "{text:?}");
        assert_eq!(refusal.id, None);
    }
}

#[test]
fn wrong_envelopes_are_invalid_requests_that_say_what_is_wrong() {
    let cases = [
        (r#"[1]"#, None, ""),
        (r#""text""#, None, "JSON object"),
        (
            r#"{"jsonrpc":"2.0","id":{},"method":"m"}"#,
            None,
            "string or an integer",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1.5,"method":"m"}"#,
            None,
            "string or an integer",
        ),
        (
            r#"{"jsonrpc":"2.0","id":null,"method":"m"}"#,
            None,
            "string or an integer",
        ),
        (r#"{"id":1,"method":"m"}"#, Some(Id::Int(1)), "jsonrpc"),
        (
            r#"{"jsonrpc":"1.0","id":1,"method":"m"}"#,
            Some(Id::Int(1)),
            "jsonrpc",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":5}"#,
            Some(Id::Int(1)),
            "method must be a string",
        ),
        (
            r#"{"jsonrpc":"2.0","id":1}"#,
            Some(Id::Int(1)),
            "needs a method",
        ),
    ];
    for (text, id, fragment) in cases {
        if text == "[1]" {
            let Ok(Incoming::Batch(entries)) = decode(text.as_bytes(), MAX) else {
                panic!("a batch");
            };
            assert_eq!(entries[0].as_ref().unwrap_err().error.code, INVALID_REQUEST);
            continue;
        }
        let refusal = refused(text);
        assert_eq!(refusal.error.code, INVALID_REQUEST, "{text}");
        assert_eq!(refusal.id, id, "{text}");
        assert!(
            refusal.error.message.contains(fragment),
            "{text}: {}",
            refusal.error.message
        );
    }
}

#[test]
fn batches_decode_entry_by_entry_and_empty_batches_are_refused() {
    let text =
        r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"bad":true},{"jsonrpc":"2.0","method":"n"}]"#;
    let Ok(Incoming::Batch(entries)) = decode(text.as_bytes(), MAX) else {
        panic!("a batch");
    };
    assert_eq!(entries.len(), 3);
    assert!(entries[0].is_ok());
    assert_eq!(entries[1].as_ref().unwrap_err().error.code, INVALID_REQUEST);
    assert!(matches!(entries[2], Ok(Message::Notification { .. })));
    assert_eq!(refused("[]").error.message, "empty batch");
}

#[test]
fn deep_nesting_is_a_parse_error_not_a_stack_overflow() {
    // Shown by fuzz/jsonrpc_decode on a hand-made input: 400,000 nested arrays (800 KB, under
    // the message bound) overflowed the stack building the JSON tree.
    let deep = format!("{}{}", "[".repeat(400_000), "]".repeat(400_000));
    let refusal = refused(&deep);
    assert_eq!((refusal.id, refusal.error.code), (None, PARSE_ERROR));
    assert!(refusal.error.message.contains("nested deeper than 128"));
    let at_bound = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"m","params":{{"a":{}1{}}}}}"#,
        "[".repeat(DEPTH_MAX - 2),
        "]".repeat(DEPTH_MAX - 2)
    );
    assert_eq!(single(&at_bound).method(), Some("m"));
    // Brackets in strings (escaped quotes too) are not nesting.
    let in_strings = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"m","params":{{"s":"\"{}"}}}}"#,
        "[".repeat(1000)
    );
    assert_eq!(single(&in_strings).method(), Some("m"));
}

#[test]
fn oversized_frames_are_refused_before_parsing() {
    let text = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"m","params":{{"p":"{}"}}}}"#,
        "x".repeat(100)
    );
    let refusal = match decode(text.as_bytes(), 64) {
        Err(refusal) => refusal,
        other => panic!("{other:?}"),
    };
    assert_eq!(refusal.error.code, INVALID_REQUEST);
    assert!(refusal
        .error
        .message
        .contains("exceeds the limit of 64 bytes"));
}

#[test]
fn encoded_errors_requests_and_batches_are_valid_json_rpc() {
    let error = encode_error(None, &RpcError::method_not_found("x/y"));
    let value: Value = serde_json::from_slice(&error).unwrap();
    assert_eq!(
        value,
        json!({"jsonrpc":"2.0","id":null,"error":{"code":-32601,"message":"method not found: x/y","data":"x/y"}})
    );
    let request = encode_request(Some(&Id::Int(9)), "roots/list", None);
    assert_eq!(
        single(std::str::from_utf8(&request).unwrap()).method(),
        Some("roots/list")
    );
    let notification = encode_request(
        None,
        "notifications/progress",
        Some(&json!({"progress": 1})),
    );
    assert!(matches!(
        single(std::str::from_utf8(&notification).unwrap()),
        Message::Notification { .. }
    ));
    let batch = encode_batch(&[encode_result(&Id::Int(1), &json!({})), error]);
    let value: Value = serde_json::from_slice(&batch).unwrap();
    assert_eq!(value.as_array().map(Vec::len), Some(2));
}
