//! A text frame from a client: the plain commands and the JSON form, and the
//! echo of a bad one in its error answer, framed as the service frames it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use socktop_agent::protocol::answer::ErrorAnswer;
use socktop_agent::protocol::framing::json_frame;
use socktop_agent::protocol::request::{self, Form};

fuzz_target!(|text: &str| {
    match request::parse(text) {
        Ok(parsed) => assert!(!parsed.request.command().is_empty()),
        Err(error) => {
            let answer = ErrorAnswer::unrecognised(error.to_string(), text);
            drop(json_frame(&answer, Form::of(text), &answer.request));
        }
    }
});
