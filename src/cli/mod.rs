//! The `planewire` binary's subcommands (compiled into the binary only, not the library).

pub mod call;
pub mod serve;

use planewire::config::{RequestPlaneConfig, RequestPlaneKind, TcpConfig};
use planewire::planes::{EndpointPath, RegisterError};

/// Any error a subcommand reports; `main` prints its message on one line.
pub type CliError = Box<dyn std::error::Error + Send + Sync>;

/// Which endpoint to serve or call. Both sides must agree on the instance id: it is part
/// of the path on the wire (`ns/component/endpoint/{instance in hex}`).
#[derive(Debug, clap::Args)]
pub struct EndpointArgs {
    /// Endpoint path.
    #[arg(long, value_name = "NS/COMPONENT/ENDPOINT")]
    endpoint: String,
    /// Instance id, in hexadecimal as on the wire.
    #[arg(long, value_name = "HEX", default_value = "1", value_parser = parse_instance)]
    instance: u64,
}

impl EndpointArgs {
    pub fn path(&self) -> Result<EndpointPath, RegisterError> {
        EndpointPath::parse(&self.endpoint, self.instance)
    }
}

fn parse_instance(text: &str) -> Result<u64, String> {
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
