use std::io;
use std::path::PathBuf;

use planewire::config::ConfigError;
use planewire::planes::request::RequestError;

/// Why the benchmark stopped. A benchmark that sees a failed or wrong response stops
/// rather than report figures for work that was not done.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("planewire request failed: {0}")]
    Request(#[from] RequestError),
    #[error("invalid planewire settings: {0}")]
    Config(#[from] ConfigError),
    #[error("a benchmark worker ended abnormally: {0}")]
    Worker(String),
    #[error("wrong response from the {system} echo server: {detail}")]
    BadResponse {
        system: &'static str,
        detail: String,
    },
    #[error("no cell of the benchmark's plan matches --cell (see README for the cells)")]
    NoSuchCell,
    #[error("cannot write {path}: {reason}")]
    Output { path: PathBuf, reason: String },
}

impl BenchError {
    pub(crate) fn io(context: &'static str) -> impl FnOnce(io::Error) -> Self {
        move |source| Self::Io { context, source }
    }
}
