//! Line-protocol parsing: the byte splitter, both reading formats and command templates.
//!
//! Input: byte 0 picks the line ending and format, byte 1 the line limit, byte 2 a chunk
//! size; the rest is the byte stream from the device.
//! Invariants: nothing panics; splitting is independent of how the stream is chunked (one
//! push or many give the same lines and errors); no line returned exceeds the limit; a
//! parsed line's fields serialise to JSON that reads back to the same reading; a template
//! that parses renders `{name}`/`{value}` (or names the missing placeholder).
#![no_main]

use device_protocols::line::{
    LineEnding, LineError, LineFormat, LineSplitter, Template, parse_line,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let [mode, limit, chunk, stream @ ..] = data else {
        return;
    };
    let ending = match mode & 3 {
        0 => LineEnding::Any,
        1 => LineEnding::Lf,
        2 => LineEnding::Crlf,
        _ => LineEnding::Cr,
    };
    let format = if mode & 4 == 0 {
        LineFormat::JsonLines
    } else {
        LineFormat::KeyValue
    };
    let max_line = usize::from(*limit) * 4;
    let chunk = usize::from(*chunk).max(1);

    let whole = LineSplitter::new(ending, max_line).push(stream);
    let mut splitter = LineSplitter::new(ending, max_line);
    let chunked: Vec<_> = stream
        .chunks(chunk)
        .flat_map(|c| splitter.push(c))
        .collect();
    assert_eq!(whole, chunked, "chunking changed the lines (chunk {chunk})");

    for line in &whole {
        match line {
            Ok(text) => {
                assert!(
                    text.len() <= max_line.max(1),
                    "line of {} bytes over {max_line}",
                    text.len()
                );
                if let Ok(Some(reading)) = parse_line(format, text) {
                    let json = serde_json::to_string(&reading).expect("readings serialise");
                    let back: device_protocols::line::Reading =
                        serde_json::from_str(&json).expect("readings read back");
                    assert_eq!(back, reading);
                }
            }
            Err(LineError::TooLong(n)) => assert_eq!(*n, max_line.max(1)),
            Err(_) => {}
        }
    }

    // Every line as the other format too, and the raw stream as a template.
    let text = String::from_utf8_lossy(stream);
    for line in text.lines() {
        let _ = parse_line(LineFormat::JsonLines, line);
        let _ = parse_line(LineFormat::KeyValue, line);
    }
    if let Ok(template) = Template::parse(&text) {
        let needs_other = template.placeholders().any(|p| p != "name" && p != "value");
        let rendered = template.render_set("sp", &Value::from(21.5));
        assert_eq!(rendered.is_err(), needs_other, "{text:?}");
    }
});
