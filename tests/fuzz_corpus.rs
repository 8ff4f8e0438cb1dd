//! Replays every committed fuzz input (`fuzz/corpus/<target>/*`) through the same function the
//! libFuzzer target calls (`raster_edge::fuzzing::TARGETS`), on stable, without fuzzing: an
//! input that once found new coverage and now panics fails `cargo test` in seconds. Files are
//! listed at run time, so an input added to a corpus is replayed without touching this file.
//! A target without a corpus (directory missing or empty), a corpus directory without a target
//! and a `fuzz/Cargo.toml` binary without a target all fail.

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use raster_edge::fuzzing::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Feeds every file in `dir` to `run`; the number of inputs, or what went wrong (no such
/// directory, no inputs, an input that panics: every panicking file is named).
fn replay(dir: &Path, run: fn(&[u8])) -> Result<usize, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("{}: no corpus inputs", dir.display()));
    }
    let mut failed = Vec::new();
    for f in &files {
        let data = std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
        if catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
            failed.push(f.display().to_string());
        }
    }
    if failed.is_empty() {
        Ok(files.len())
    } else {
        Err(format!("inputs that panic: {failed:?}"))
    }
}

#[test]
fn every_corpus_input_replays_without_a_panic() {
    let mut problems = Vec::new();
    for (name, run) in TARGETS {
        match replay(&fuzz_dir().join("corpus").join(name), *run) {
            Ok(n) => eprintln!("{name}: {n} inputs"),
            Err(e) => problems.push(format!("{name}: {e}")),
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn targets_corpora_and_fuzz_binaries_match() {
    let targets: BTreeSet<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    let corpora: BTreeSet<String> = std::fs::read_dir(fuzz_dir().join("corpus"))
        .expect("fuzz/corpus exists")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(targets, corpora, "fuzz/corpus/* vs fuzzing::TARGETS");
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz crate");
    let bins: BTreeSet<String> = manifest
        .split("[[bin]]")
        .skip(1)
        .filter_map(|b| {
            b.lines()
                .find_map(|l| l.trim().strip_prefix("name = "))
                .map(|n| n.trim_matches('"').to_string())
        })
        .collect();
    assert_eq!(targets, bins, "fuzz/Cargo.toml [[bin]] vs fuzzing::TARGETS");
    for name in &targets {
        let src = std::fs::read_to_string(fuzz_dir().join(format!("fuzz_targets/{name}.rs")))
            .expect("target source");
        // The libFuzzer binary must drive the same function this test replays.
        let module = if name == "config" {
            "config_load"
        } else {
            name
        };
        assert!(
            src.contains(&format!("raster_edge::fuzzing::{module}::run")),
            "fuzz/fuzz_targets/{name}.rs does not call fuzzing::{module}::run"
        );
    }
}

/// The replay itself can fail: a missing directory, an empty one, and an input that panics
/// are each reported.
#[test]
fn replay_reports_missing_empty_and_panicking_corpora() {
    let tmp = tempfile::tempdir().expect("tempdir");
    assert!(replay(&tmp.path().join("absent"), |_| {}).is_err());
    assert!(replay(tmp.path(), |_| {}).is_err());
    std::fs::write(tmp.path().join("boom"), b"boom").expect("write");
    std::fs::write(tmp.path().join("fine"), b"fine").expect("write");
    assert_eq!(replay(tmp.path(), |_| {}), Ok(2));
    let err = replay(tmp.path(), |d| assert_ne!(d, b"boom")).expect_err("a panicking input");
    assert!(err.contains("boom") && !err.contains("fine"), "{err}");
}
