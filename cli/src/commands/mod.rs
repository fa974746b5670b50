//! The `planewire` binary's subcommands (compiled into the binary only, not the library).

pub mod call;
pub mod discovery;
pub mod events;
pub mod serve;
mod signals;

use planewire::planes::request::{EndpointPath, PathError};
use planewire::runtime::Runtime;

/// Any error a subcommand reports; `main` prints its message on one line.
pub type CliError = Box<dyn std::error::Error + Send + Sync>;

/// Which endpoint to serve or call. The instance id, part of the path on the wire
/// (`ns/component/endpoint/{instance in hex}`), is each command's own option.
#[derive(Debug, clap::Args)]
pub struct EndpointArgs {
    /// Endpoint path.
    #[arg(long, value_name = "NS/COMPONENT/ENDPOINT")]
    endpoint: String,
}

impl EndpointArgs {
    pub fn path(&self, instance_id: u64) -> Result<EndpointPath, PathError> {
        EndpointPath::parse(&self.endpoint, instance_id)
    }
}

pub fn parse_instance(text: &str) -> Result<u64, String> {
    let digits = text.strip_prefix("0x").unwrap_or(text);
    u64::from_str_radix(digits, 16)
        .map_err(|_| "expected a hexadecimal instance id such as 1 or 7f".to_owned())
}

/// The planes `DYN_REQUEST_PLANE`, `DYN_DISCOVERY_BACKEND` and `DYN_EVENT_PLANE` (and
/// their settings) select.
pub async fn runtime() -> Result<Runtime, CliError> {
    Ok(Runtime::from_env().await?)
}

#[cfg(test)]
mod tests {
    use super::parse_instance;

    #[test]
    fn instance_ids_are_hexadecimal() {
        assert_eq!(parse_instance("1"), Ok(1));
        assert_eq!(parse_instance("7f"), Ok(0x7f));
        assert_eq!(parse_instance("0x10"), Ok(16));
        assert!(parse_instance("zz").is_err());
    }
}
