//! russh 0.65.1 as released, with the diffs in `patches/russh/*.diff`
//! applied by `build.rs`. The crate-level attributes of the released
//! `lib.rs` cannot come through `include!`, so they are restated here.
#![allow(warnings, clippy::all)]
#![allow(macro_expanded_macro_exports_accessed_by_absolute_paths)]

include!(concat!(env!("OUT_DIR"), "/russh/src/lib.rs"));
