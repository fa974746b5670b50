//! Names as single subject tokens: the NATS request plane's subjects and the event
//! plane's subjects, topic frames, discovery keys and stream names all use it.

use std::fmt::Write;

/// Appends `name` as one subject token: ASCII letters, digits, `-` and `_` stay as they
/// are; every other byte (including `.`, `*`, `>`, whitespace and each byte of a
/// multi-byte character) becomes `~` and two uppercase hex digits. The mapping is
/// one-to-one, so distinct names never share a subject.
pub fn escape_token(name: &str, out: &mut String) {
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "~{byte:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::escape_token;

    fn escaped(name: &str) -> String {
        let mut out = String::new();
        escape_token(name, &mut out);
        out
    }

    #[test]
    fn only_letters_digits_dash_and_underscore_stay() {
        assert_eq!(escaped("gen-erate_2"), "gen-erate_2");
        assert_eq!(escaped("a.b c*>"), "a~2Eb~20c~2A~3E");
        assert_eq!(escaped("é"), "~C3~A9");
        assert_eq!(escaped("~"), "~7E", "the escape character escapes itself");
    }
}
