//! A text frame from a client: the plain commands and the JSON form, and the
//! echo of a bad one in its error answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use socktop_agent::protocol::request;

fuzz_target!(|text: &str| {
    match request::parse(text) {
        Ok(parsed) => assert!(!parsed.command().is_empty()),
        Err(error) => drop(socktop_agent::service::request_error(&error, text)),
    }
});
