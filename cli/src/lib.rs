//! What the `planewire` binary and `cargo bench --bench latency` share: the latency
//! benchmark ([`bench`]) and the handlers `planewire serve` runs ([`echo`]). Not part of
//! the `planewire` library, so a project that depends on it builds none of clap,
//! plotters, indicatif or hdrhistogram.

pub mod bench;
pub mod echo;
