//! Assertions on gRPC statuses and error messages.

/// Asserts that `result` is a status with `code` whose message is exactly `message` (for bad
/// input: INVALID_ARGUMENT naming the field).
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    message: &str,
) {
    match result {
        Err(status) => {
            assert_eq!(status.code(), code, "{status:?}");
            assert_eq!(status.message(), message);
        }
        Ok(v) => panic!("expected {code:?} \"{message}\", got {v:?}"),
    }
}

/// Asserts that `text` contains every one of `parts`.
pub fn assert_contains(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "{part:?} is not in: {text}");
    }
}
