//! The query string of `/ws` against a configured token (the input is the token,
//! a newline, the query): never a panic, and a token of plain characters sent as
//! itself is always let in.
#![no_main]

use libfuzzer_sys::fuzz_target;
use socktop_agent::fuzzing::token_allows;

fuzz_target!(|text: &str| {
    let (token, query) = text.split_once('\n').unwrap_or((text, ""));
    let _ = token_allows(token, query);
    if !token.is_empty() && token.bytes().all(|b| b.is_ascii_alphanumeric()) {
        // The first `token` pair counts; one in the query (even without `=`) comes first.
        assert!(token_allows(token, &format!("{query}&token={token}")) || query.contains("token"));
    }
});
