//! Embeds the Memory Inspector's built assets (`ui/dist`, made by `make ui`) into the binary, so
//! that the server serves them with no Node.js at run time. Without a build, the binary serves a
//! page that says how to make one.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let ui = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ui");
    let dist = ui.join("dist");
    // Without a build, watch ui/ itself: creating dist/ changes it. (A path that does not exist
    // would rerun this script, and rebuild the crate, on every build.)
    let watched = if dist.is_dir() { &dist } else { &ui };
    println!("cargo:rerun-if-changed={}", watched.display());
    let mut files = Vec::new();
    if dist.is_dir() {
        collect(&dist, &mut files);
    }
    files.sort();
    let mut out =
        String::from("/// The Inspector's assets: (path under /ui/, content type, bytes).\n");
    out.push_str("pub static ASSETS: &[(&str, &str, &[u8])] = &[\n");
    for file in &files {
        let rel = file.strip_prefix(&dist).expect("under dist");
        let rel = rel
            .to_str()
            .expect("asset paths are UTF-8")
            .replace('\\', "/");
        let abs = file.canonicalize().expect("asset exists");
        // `app.js.gz` is app.js, gzipped: its type is app.js's.
        writeln!(
            out,
            "    ({rel:?}, {:?}, include_bytes!({:?})),",
            content_type(rel.strip_suffix(".gz").unwrap_or(&rel)),
            abs.display().to_string()
        )
        .expect("writing to a String");
    }
    out.push_str("];\n");
    let target =
        PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("ui_assets.rs");
    std::fs::write(target, out).expect("writing ui_assets.rs");
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("reading ui/dist") {
        let path = entry.expect("reading ui/dist").path();
        // Dot files (the build's `.built` stamp) are not served.
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        if path.is_dir() {
            collect(&path, files);
        } else {
            files.push(path);
        }
    }
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json" | "map") => "application/json",
        _ => "application/octet-stream",
    }
}
