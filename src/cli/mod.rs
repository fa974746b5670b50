//! The `planewire` binary's subcommands (compiled into the binary only, not the library).

pub mod call;
pub mod discovery;
pub mod events;
pub mod serve;
mod signals;

use planewire::config::{RequestPlaneConfig, RequestPlaneKind, TcpConfig};
use planewire::planes::discovery::{Discovery, DiscoveryConfig};
use planewire::planes::{EndpointPath, RegisterError};

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
    pub fn path(&self, instance_id: u64) -> Result<EndpointPath, RegisterError> {
        EndpointPath::parse(&self.endpoint, instance_id)
    }
}

pub fn parse_instance(text: &str) -> Result<u64, String> {
    let digits = text.strip_prefix("0x").unwrap_or(text);
    u64::from_str_radix(digits, 16)
        .map_err(|_| "expected a hexadecimal instance id such as 1 or 7f".to_owned())
}

/// The TCP settings from the `DYN_*` environment; another `DYN_REQUEST_PLANE` is refused,
/// since this binary only speaks TCP.
pub fn tcp_config() -> Result<TcpConfig, CliError> {
    let config = RequestPlaneConfig::from_env()?;
    if config.plane != RequestPlaneKind::Tcp {
        let plane = format!("{:?}", config.plane).to_lowercase();
        return Err(format!(
            "DYN_REQUEST_PLANE={plane} is not supported by the planewire CLI; use tcp"
        )
        .into());
    }
    Ok(config.tcp)
}

/// The discovery backend the `DYN_DISCOVERY_*` / `DYN_FILE_KV` / `ETCD_*` environment selects.
pub async fn discovery() -> Result<Discovery, CliError> {
    Ok(Discovery::connect(&DiscoveryConfig::from_env()?).await?)
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
