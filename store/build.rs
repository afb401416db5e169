//! `sqlx::migrate!` embeds the migrations at compile time; a new file in `migrations/` must make
//! this crate build again (sqlx's own advice), or a binary would run without it.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
