//! The core NATS text protocol, as much of it as the load generator speaks: `CONNECT`,
//! `PUB`, `SUB`, `PING`/`PONG` out; `INFO`, `MSG`, `PING`, `PONG`, `+OK`, `-ERR` in.
//!
//! MQTT topics and filters are mapped to NATS subjects level by level: `/` becomes `.`,
//! the single-level wildcard `+` becomes `*` and the multi-level `#` becomes `>`, so
//! `load/3` is `load.3` and `load/#` is `load.>`.

use std::fmt::Write as _;

use anyhow::bail;
use bytes::BytesMut;

use crate::mqtt::Mark;

/// Longest control line accepted (`INFO` lines carry the server's JSON).
const MAX_LINE: usize = 64 * 1024;

/// One frame from the server.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Frame {
    /// `MSG`: the mark at the start of its payload, if any.
    Msg(Option<Mark>),
    /// `PING`: must be answered with `PONG`.
    Ping,
    /// `PONG`: the answer to one of our `PING`s.
    Pong,
    /// `INFO`, `+OK`: nothing to do.
    Other,
}

/// Appends `topic` as a NATS subject (`/` → `.`, `+` → `*`, `#` → `>`).
pub(crate) fn push_subject(out: &mut BytesMut, topic: &str) {
    out.extend(topic.bytes().map(|b| match b {
        b'/' => b'.',
        b'+' => b'*',
        b'#' => b'>',
        other => other,
    }));
}

/// Appends the `CONNECT` line (no `+OK` acknowledgements, no pedantic checks) and a
/// `PING`, whose `PONG` tells that the server accepted the connection.
pub(crate) fn push_connect(out: &mut BytesMut, name: &str) {
    let _ = write!(
        out,
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"name\":\"{name}\",\"lang\":\"rust\",\"version\":\"0\",\"protocol\":1}}\r\nPING\r\n"
    );
}

/// Appends `PUB <subject> <n>\r\n<payload>\r\n`.
pub(crate) fn push_pub(out: &mut BytesMut, topic: &str, payload: &[u8]) {
    out.extend_from_slice(b"PUB ");
    push_subject(out, topic);
    let _ = write!(out, " {}\r\n", payload.len());
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// Appends `SUB <subject> <sid>\r\n`.
pub(crate) fn push_sub(out: &mut BytesMut, filter: &str, sid: u64) {
    out.extend_from_slice(b"SUB ");
    push_subject(out, filter);
    let _ = write!(out, " {sid}\r\n");
}

/// Appends `PING\r\n`.
pub(crate) fn push_ping(out: &mut BytesMut) {
    out.extend_from_slice(b"PING\r\n");
}

/// Appends `PONG\r\n`.
pub(crate) fn push_pong(out: &mut BytesMut) {
    out.extend_from_slice(b"PONG\r\n");
}

/// Parses the next complete frame at the start of `buf`: the frame and the bytes it
/// took, or `None` when more bytes are needed.
///
/// # Errors
/// A `-ERR` from the server, or a line that is not NATS.
pub(crate) fn parse(buf: &[u8]) -> anyhow::Result<Option<(Frame, usize)>> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_LINE {
            bail!("NATS control line longer than {MAX_LINE} bytes");
        }
        return Ok(None);
    };
    let line_len = nl + 1;
    let line = buf[..nl].strip_suffix(b"\r").unwrap_or(&buf[..nl]);
    if line.starts_with(b"MSG ") || line.starts_with(b"MSG\t") {
        // MSG <subject> <sid> [reply-to] <#bytes>
        let Some(n) = line
            .rsplit(|&b| b == b' ' || b == b'\t')
            .next()
            .and_then(|t| std::str::from_utf8(t).ok())
            .and_then(|t| t.parse::<usize>().ok())
        else {
            bail!("malformed MSG line: {}", String::from_utf8_lossy(line));
        };
        let total = line_len + n + 2;
        if buf.len() < total {
            return Ok(None);
        }
        let payload = &buf[line_len..line_len + n];
        return Ok(Some((Frame::Msg(Mark::read(payload)), total)));
    }
    let frame = if line.eq_ignore_ascii_case(b"PING") {
        Frame::Ping
    } else if line.eq_ignore_ascii_case(b"PONG") {
        Frame::Pong
    } else if line.starts_with(b"INFO") || line.starts_with(b"+OK") {
        Frame::Other
    } else if line.starts_with(b"-ERR") {
        bail!("server: {}", String::from_utf8_lossy(line));
    } else {
        bail!("unexpected NATS line: {}", String::from_utf8_lossy(line));
    };
    Ok(Some((frame, line_len)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_mqtt_levels() {
        let mut b = BytesMut::new();
        push_subject(&mut b, "load/#");
        assert_eq!(&b[..], b"load.>");
        b.clear();
        push_subject(&mut b, "+/x7/#");
        assert_eq!(&b[..], b"*.x7.>");
        b.clear();
        push_pub(&mut b, "load/3", b"abc");
        assert_eq!(&b[..], b"PUB load.3 3\r\nabc\r\n");
        b.clear();
        push_sub(&mut b, "load/shared", 9);
        assert_eq!(&b[..], b"SUB load.shared 9\r\n");
    }

    #[test]
    fn parses_frames_and_waits_for_whole_messages() {
        let mut payload = vec![0u8; 24];
        Mark {
            publisher: 3,
            seq: 77,
            sent_ns: 5,
        }
        .write(&mut payload);
        let mut wire = b"INFO {\"x\":1}\r\nPING\r\nMSG load.3 1 24\r\n".to_vec();
        wire.extend_from_slice(&payload);
        wire.extend_from_slice(b"\r\nPONG\r\n");
        let (f, used) = parse(&wire).unwrap().unwrap();
        assert!(matches!(f, Frame::Other));
        let rest = &wire[used..];
        let (f, used2) = parse(rest).unwrap().unwrap();
        assert!(matches!(f, Frame::Ping));
        let rest = &rest[used2..];
        // A message cut short waits for the rest.
        assert!(parse(&rest[..rest.len() - 9]).unwrap().is_none());
        let (f, used3) = parse(rest).unwrap().unwrap();
        match f {
            Frame::Msg(Some(m)) => assert_eq!((m.publisher, m.seq, m.sent_ns), (3, 77, 5)),
            other => panic!("{other:?}"),
        }
        let (f, _) = parse(&rest[used3..]).unwrap().unwrap();
        assert!(matches!(f, Frame::Pong));
        assert!(parse(b"-ERR 'Slow Consumer'\r\n").is_err());
        // With a reply subject.
        let mut wire = b"MSG a.b 2 reply.to 24\r\n".to_vec();
        wire.extend_from_slice(&payload);
        wire.extend_from_slice(b"\r\n");
        assert!(matches!(
            parse(&wire).unwrap().unwrap(),
            (Frame::Msg(Some(_)), n) if n == wire.len()
        ));
    }
}
