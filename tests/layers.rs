//! The layer rule of ARCHITECTURE.md, read from `cargo metadata`: front doors sit on the engine
//! and never reach past it into the store or the models. A new `ragd-store` or `ragd-models`
//! dependency of a front door fails here, not in review.
#![allow(clippy::unwrap_used)]

use std::process::Command;

/// Each front door and the workspace crates its build (not its tests) may depend on.
const FRONT_DOORS: &[(&str, &[&str])] =
    &[("ragd-server", &["ragd-core", "ragd-engine", "ragd-proto"])];

/// Crates below the engine.
const BELOW_THE_ENGINE: &[&str] = &["ragd-store", "ragd-models", "ragd-cluster"];

#[test]
fn front_doors_depend_on_the_engine_not_below_it() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let workspace: Vec<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    for b in BELOW_THE_ENGINE {
        assert!(workspace.contains(b), "{b} is not in the workspace");
    }
    for (door, allowed) in FRONT_DOORS {
        let p = packages
            .iter()
            .find(|p| p["name"] == *door)
            .unwrap_or_else(|| panic!("{door} is not in the workspace"));
        // Normal and build dependencies; dev-dependencies (kind "dev") serve tests only.
        let deps: Vec<&str> = p["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["kind"].as_str() != Some("dev"))
            .filter_map(|d| d["name"].as_str())
            .filter(|n| workspace.contains(n))
            .collect();
        assert!(
            deps.contains(&"ragd-engine"),
            "{door} does not depend on ragd-engine: {deps:?}"
        );
        for d in deps {
            assert!(
                allowed.contains(&d),
                "{door} depends on {d}; a front door may use only {allowed:?} (see ARCHITECTURE.md, layers)"
            );
        }
    }
}
