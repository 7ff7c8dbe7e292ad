//! Puts the git commit the binary was built from into `ferry --version`: `FERRY_GIT_COMMIT`
//! when the build sets it (a container build without `.git`), else git's, else `unknown`
//! (a source tarball).

fn main() {
    println!("cargo:rerun-if-env-changed=FERRY_GIT_COMMIT");
    if let Some(c) = std::env::var("FERRY_GIT_COMMIT").ok().filter(|c| !c.is_empty()) {
        println!("cargo:rustc-env=FERRY_GIT_COMMIT={c}");
        return;
    }
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=FERRY_GIT_COMMIT={commit}");
    // A new commit changes HEAD (a branch checkout) or the ref it names.
    for path in ["../../.git/HEAD", "../../.git/refs/heads", "../../.git/packed-refs"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
