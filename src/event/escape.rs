//! Go's `url.QueryEscape` / `url.QueryUnescape`, byte for byte: MinIO writes
//! `s3.object.key` query-escaped.

use super::ParseError;

/// Go's `url.QueryEscape`, byte for byte: how MinIO writes `s3.object.key`.
pub fn query_escape(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len() + s.len() / 4);
    for byte in s.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(byte))
            }
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(char::from(HEX[usize::from(byte >> 4)]));
                out.push(char::from(HEX[usize::from(byte & 0x0f)]));
            }
        }
    }
    out
}

/// Go's `url.QueryUnescape`: `+` is a space and `%XX` a byte. A malformed escape is an error
/// naming it as Go does (at most three bytes from the `%`), and so is a result that is not
/// UTF-8, since object names are UTF-8.
pub fn query_unescape(s: &str) -> Result<String, ParseError> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Ok(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while let Some((&byte, tail)) = rest.split_first() {
        rest = tail;
        match byte {
            b'+' => out.push(b' '),
            b'%' => match (
                tail.first().and_then(hex_value),
                tail.get(1).and_then(hex_value),
            ) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    rest = &tail[2..];
                }
                _ => {
                    let escape = &bytes[bytes.len() - tail.len() - 1..];
                    let escape = String::from_utf8_lossy(&escape[..escape.len().min(3)]);
                    return Err(ParseError::InvalidEscape {
                        escape: escape.into_owned(),
                    });
                }
            },
            _ => out.push(byte),
        }
    }
    String::from_utf8(out).map_err(|_| ParseError::NotUtf8)
}

fn hex_value(digit: &u8) -> Option<u8> {
    char::from(*digit)
        .to_digit(16)
        .and_then(|v| u8::try_from(v).ok())
}
