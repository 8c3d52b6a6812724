//! Integration tests of `wire`: every fixture in `/fixtures` decoded field
//! by field, the form codec's properties, and hostile input.

mod events;
mod form_props;
mod hostile;
mod install;
mod rest;

use std::path::PathBuf;

/// The bytes of `fixtures/<rel>`, from the repository root.
pub fn fixture(rel: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub const MEMBER_ID: &str = "deadbeefdeadbeefdeadbeefdeadbeef";
pub const APP_TOKEN: &str = "aa11bb22cc33dd44ee55ff6600778899";
pub const ACCESS: &str = "0a1b2c3d4e5f0a1b2c3d4e5f0a1b2c3d4e5f0a1b2c3d4e5f0a1b2c3d4e5f0a1b2c3d4e";
pub const REFRESH: &str = "f0e1d2c3b4a5f0e1d2c3b4a5f0e1d2c3b4a5f0e1d2c3b4a5f0e1d2c3b4a5f0e1d2c3b4";
