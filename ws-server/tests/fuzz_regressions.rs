//! Every input a fuzz target (`fuzz/`) crashed on, replayed on every `cargo test`.

use std::path::Path;

#[test]
fn channel_registry_crashes_stay_fixed() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions");
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).expect("the regressions directory") {
        let path = entry.expect("an entry").path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("channels-"))
        {
            let data = std::fs::read(&path).expect("readable");
            ws_server::bench_support::exercise_channels(&data);
            replayed += 1;
        }
    }
    assert!(
        replayed > 0,
        "no regression input found in {}",
        dir.display()
    );
}
