//! Damaged input never panics: every golden input with each line removed, cut short after each
//! line, or with each value replaced by another type converts or fails with an error.

// clippy.toml allows unwrap/expect in #[test] functions but not in the helpers they call; in
// a test file a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{fs, path::Path};

use braid_cli::{Options, convert};

#[test]
fn damaged_golden_inputs_give_errors_not_panics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut runs = 0;
    for case in fs::read_dir(&root).unwrap() {
        let input = fs::read_to_string(case.unwrap().path().join("input.yaml")).unwrap();
        let lines: Vec<&str> = input.lines().collect();
        for i in 0..lines.len() {
            let without: Vec<&str> =
                lines.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, l)| *l).collect();
            let cut = &lines[..i];
            let mut variants = vec![without.join("\n"), cut.join("\n")];
            // The value of a `key: value` line as a list, a mapping, a number and null.
            if let Some((key, value)) = lines[i].split_once(": ")
                && !value.is_empty()
            {
                for other in ["[]", "{}", "-7", "~", "\"\""] {
                    let mut changed = lines.clone();
                    let line = format!("{key}: {other}");
                    changed[i] = &line;
                    variants.push(changed.join("\n"));
                }
            }
            for variant in variants {
                let _ = convert(&variant, &Options::default()).map(|c| c.to_yaml());
                runs += 1;
            }
        }
    }
    assert!(runs > 1000, "only {runs} variants");
}
