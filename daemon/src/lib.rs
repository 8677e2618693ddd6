//! The daemon's reusable part: the config file loader, shared by the `anonnet` binary and
//! the config fuzz target (`fuzz/fuzz_targets/config.rs`, docs/fuzzing.md).

pub mod config;
pub mod netns;
