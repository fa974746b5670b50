//! The words every plane shares, defined once so that no plane borrows them from a
//! sibling: where a handler lives ([`EndpointPath`]), the metadata a request carries
//! ([`HeaderMap`] of [`Utf8Bytes`]), why a stream failed ([`ErrorCode`]), which address
//! a server advertises ([`detect_local_ip`]) and how a name becomes one subject token
//! ([`escape_token`]). Nothing here does I/O or knows a transport.

mod error_code;
mod headers;
mod local_ip;
mod path;
mod token;
mod utf8;

pub use error_code::ErrorCode;
pub use headers::HeaderMap;
pub use local_ip::detect_local_ip;
pub use path::{EndpointPath, PathError};
pub use token::escape_token;
pub use utf8::Utf8Bytes;
