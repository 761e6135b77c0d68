//! The subscribe/recovery path: arbitrary interleavings of subscribes (with and without
//! `since`, right or wrong epochs, any `seq`), publications, unsubscribes, sweeps and drains
//! keep every queue within its bounds and every channel's `seq` rising one by one.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ws_server::bench_support::exercise_channels(data);
});
