//! Rebuilds confab when a file is added to or removed from `static/`.
//!
//! `assets.rs` embeds `static/` with rust-embed, whose `include_bytes!` lets the compiler notice
//! an edit to a file it already embeds, but not a new file: without this, a build after adding
//! `static/avatars/12.svg` would keep serving `404` for it.

fn main() {
    println!("cargo::rerun-if-changed=static");
}
