//! Offline checks of the deployment files that are not the compose file's
//! (tests/observability.rs runs scripts/check-compose): the one list of
//! container images, deploy/images.yml, against everything that uses it.

mod common;

use std::process::{Command, Output};

use common::repo_root;

fn check_images(manifests: &[&std::path::Path]) -> (Output, String) {
    let output = Command::new(repo_root().join("scripts/check-images"))
        .args(manifests)
        .output()
        .expect("run scripts/check-images (needs python3 with PyYAML)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (output, stdout)
}

#[test]
fn compose_dockerfile_and_chart_use_only_listed_images() {
    let (output, stdout) = check_images(&[]);
    assert!(
        output.status.success(),
        "scripts/check-images failed:\n{stdout}"
    );
    for place in ["compose:minio", "dockerfile:build", "chart:image"] {
        assert!(stdout.contains(place), "{place} was not checked:\n{stdout}");
    }
}

#[test]
fn an_unlisted_image_in_a_rendered_manifest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("rendered.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  initContainers:\n    - {name: a, image: docker.io/library/postgres:17.6-bookworm}\n  containers:\n    - {name: b, image: minio/minio:latest}\n",
    )
    .unwrap();
    let (output, stdout) = check_images(&[&manifest]);
    assert!(
        !output.status.success(),
        "an unlisted image passed:\n{stdout}"
    );
    assert!(
        stdout.contains("FAIL  rendered.yaml: minio/minio:latest is not in deploy/images.yml"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ok    rendered.yaml: docker.io/library/postgres:17.6-bookworm is in"),
        "{stdout}"
    );
}
