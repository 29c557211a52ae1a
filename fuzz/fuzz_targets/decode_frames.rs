//! The frame decoder on an arbitrary byte stream: split frame after frame, decode each body
//! as a request and as a response, and check that whatever decodes re-encodes to exactly the
//! frame's bytes (the codec is canonical). Nothing may panic but these asserts.

#![no_main]

use libfuzzer_sys::fuzz_target;
use stile_protocol::frame::{split_frame, Request, Response};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let mut out = Vec::new();
    while let Ok(Some((n, body))) = split_frame(rest) {
        assert!(n <= rest.len(), "frame of {n} bytes with {} buffered", rest.len());
        assert!(body.len() < n, "body of {} bytes in a frame of {n}", body.len());
        let frame = &rest[..n];
        assert_eq!(&frame[n - body.len()..], body, "body is not the frame's tail");

        if let Ok((id, req)) = Request::decode(body) {
            out.clear();
            req.encode(id, &mut out);
            assert_eq!(out, frame, "request {req:?} (id {id}) re-encodes differently");
        }
        if let Ok((id, resp)) = Response::decode(body) {
            out.clear();
            resp.encode(id, &mut out);
            assert_eq!(out, frame, "response {resp:?} (id {id}) re-encodes differently");
        }
        rest = &rest[n..];
    }
});
