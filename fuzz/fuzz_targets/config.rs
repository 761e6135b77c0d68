//! `WS_*` variables as lines of `NAME=value`: loading never panics, and a configuration that
//! loads also validates.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ws_protocol::WebSocketConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let vars = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (format!("WS_{}", k.trim_start_matches("WS_")), v.to_owned()));
    if let Ok(config) = WebSocketConfig::from_vars(vars) {
        assert!(config.validate().is_ok());
    }
});
