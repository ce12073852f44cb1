//! The crate layout's promises, checked on the resolved dependency graph (`cargo tree`, from
//! the lock file, offline): the processes that run no model (the gateway, the `unclip` command,
//! the local stack) do not compile ONNX Runtime, and the model-free server crate stays free of
//! it; the stage services do.

use std::process::Command;

/// The packages `package` depends on at run time (normal edges), one name per entry.
fn dependencies(package: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "--locked",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .args(["--format", "{p}", "-p", package])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo tree");
    assert!(
        output.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// No model-free package pulls in `ort` or the runtime crate, directly or through another.
#[test]
fn model_free_packages_do_not_compile_onnx_runtime() {
    for package in [
        "unclip-gateway",
        "unclip-server",
        "unclip-cli",
        "unclip-stack",
    ] {
        let deps = dependencies(package);
        assert!(
            deps.iter().any(|d| d == "tonic"),
            "{package}: the graph was not read: {deps:?}"
        );
        for forbidden in ["ort", "ort-sys", "unclip-runtime", "unclip-model-server"] {
            assert!(
                !deps.iter().any(|d| d == forbidden),
                "{package} depends on {forbidden}"
            );
        }
    }
}

/// The check above can fail: a stage service does depend on ONNX Runtime.
#[test]
fn stage_services_do_compile_onnx_runtime() {
    for package in ["unclip-clip", "unclip-prior", "unclip-decoder"] {
        let deps = dependencies(package);
        assert!(deps.iter().any(|d| d == "ort"), "{package}: {deps:?}");
        assert!(deps.iter().any(|d| d == "unclip-model-server"), "{package}");
    }
}
