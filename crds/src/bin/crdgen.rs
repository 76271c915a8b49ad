//! Writes the CRDs generated from the Rust types into each directory given (crds/ and the Helm
//! chart's crds/), one file per CRD. `make crds` runs it.

use std::{fs, path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    let dirs: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    if dirs.is_empty() {
        eprintln!("usage: crdgen DIR...  (writes one YAML file per CRD into each DIR)");
        return ExitCode::from(2);
    }
    for (file, crd) in braid_crds::crds() {
        let yaml = match braid_crds::crd_yaml(&crd) {
            Ok(yaml) => yaml,
            Err(err) => {
                eprintln!("crdgen: cannot render {file}: {err}");
                return ExitCode::FAILURE;
            }
        };
        for dir in &dirs {
            let path = dir.join(&file);
            if let Err(err) = fs::create_dir_all(dir).and_then(|()| fs::write(&path, &yaml)) {
                eprintln!("crdgen: cannot write {}: {err}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
