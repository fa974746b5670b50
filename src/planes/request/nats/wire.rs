//! What both ends of the NATS plane need to know about the connection and the wire.

/// `client`'s connection count: it goes up with every connect and reconnect.
pub(super) fn connects(client: &async_nats::Client) -> u64 {
    client
        .statistics()
        .connects
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether `client`'s connection is down now, or went down and came back since it had
/// made `connects` connections: either way, messages may have been lost in between.
pub(super) fn connection_dropped(client: &async_nats::Client, since: u64) -> bool {
    client.connection_state() != async_nats::connection::State::Connected
        || connects(client) != since
}

/// The fix both size errors name.
pub(super) const PAYLOAD_FIX: &str =
    "use DYN_REQUEST_PLANE=tcp, or raise max_payload in nats-server";

/// Bytes a message takes against `max_payload`: payload plus serialized headers
/// (`NATS/1.0\r\n`, `name: value\r\n` each, `\r\n`), as nats-server counts them.
pub(super) fn wire_size(headers: &async_nats::HeaderMap, payload: usize) -> usize {
    if headers.is_empty() {
        return payload;
    }
    let fields: usize = headers
        .iter()
        .map(|(name, values)| {
            let name: &str = name.as_ref();
            values
                .iter()
                .map(|v| name.len() + v.as_str().len() + 4)
                .sum::<usize>()
        })
        .sum();
    payload + 10 + fields + 2
}
