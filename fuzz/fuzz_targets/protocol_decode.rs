//! Any text a client or hub may send: decoding never panics, and whatever decodes encodes
//! back to text that decodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ws_protocol::WsMessage;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(message) = WsMessage::from_json(text) {
        let again = WsMessage::from_json(&message.to_json());
        assert_eq!(again.as_ref().ok(), Some(&message), "{text:?}");
    }
});
