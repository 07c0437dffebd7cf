//! What a connection has yet to write: its own bytes, and large payloads spliced in
//! between them without being copied.
//!
//! Why: a PUBLISH ends with its payload, and every receiver of a message gets the same
//! payload bytes. Copying them into each receiver's buffer cost one copy per delivery
//! and held one copy per slow receiver (a 1 MiB message to 1,000 subscribers behind on
//! their sockets: 1 GiB of buffers). A payload of at least [`SPLICE_MIN`] bytes is
//! instead referred to (the message's own `Bytes`, a reference count) at its place in
//! the stream, and written with the bytes around it in one vectored write (issue #15:
//! encode once, one vectored write per wake-up). Smaller payloads are copied: below
//! that, the copy costs less than a reference and an extra I/O vector.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};

/// Payloads of at least this many bytes are spliced rather than copied.
pub(crate) const SPLICE_MIN: usize = 1024;

/// Most I/O vectors handed to one write (Linux takes up to 1,024).
pub(crate) const MAX_SLICES: usize = 64;

/// A connection's output: `bytes`, with payloads spliced in at positions of `bytes`.
/// Its stream is `bytes[..at0]`, payload 0, `bytes[at0..at1]`, payload 1, ... the rest
/// of `bytes`. Everything the core writes goes to `bytes` (after the payloads spliced
/// so far: its order is the order written).
#[derive(Debug, Default)]
pub(crate) struct OutBuf {
    /// The connection's own bytes (headers, topics, acknowledgements...).
    pub(crate) bytes: BytesMut,
    /// The payloads spliced in; boxed, and made at the first: a connection's task
    /// carries an `OutBuf`, and most never splice.
    splices: Option<Box<Splices>>,
}

#[derive(Debug, Default)]
struct Splices {
    /// Payloads and where they go: after `bytes[..at - consumed]`.
    list: VecDeque<(usize, Bytes)>,
    /// Bytes of `bytes` already written and let go (`at` is counted from the first
    /// byte written since the list was made, so a write need not renumber it).
    consumed: usize,
    /// Summed length of the payloads not yet written.
    len: usize,
}

impl From<BytesMut> for OutBuf {
    fn from(bytes: BytesMut) -> OutBuf {
        OutBuf {
            bytes,
            splices: None,
        }
    }
}

impl OutBuf {
    /// Nothing to write.
    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.is_empty() && !self.has_splices()
    }

    /// Whether a payload is spliced in (else `bytes` is the whole stream).
    pub(crate) fn has_splices(&self) -> bool {
        self.splices.as_ref().is_some_and(|s| !s.list.is_empty())
    }

    /// Bytes to write in all, spliced payloads included.
    pub(crate) fn len(&self) -> usize {
        self.bytes.len() + self.splices.as_ref().map_or(0, |s| s.len)
    }

    fn consumed(&self) -> usize {
        self.splices.as_ref().map_or(0, |s| s.consumed)
    }

    /// `payload` goes next, after what `bytes` holds now.
    pub(crate) fn splice(&mut self, payload: Bytes) {
        if payload.is_empty() {
            return;
        }
        let s = self.splices.get_or_insert_with(Box::default);
        s.len += payload.len();
        s.list.push_back((s.consumed + self.bytes.len(), payload));
    }

    /// Bytes to write in all for the first `own` bytes of `bytes` and the payloads
    /// spliced within or right after them.
    pub(crate) fn len_through(&self, own: usize) -> usize {
        let Some(s) = &self.splices else {
            return own;
        };
        let end = s.consumed + own;
        own + s
            .list
            .iter()
            .take_while(|(at, _)| *at <= end)
            .map(|(_, p)| p.len())
            .sum::<usize>()
    }

    /// Puts into `slices` the I/O vectors of the first `own` bytes of `bytes` with the
    /// payloads spliced within or right after them, as many as fit; returns how many.
    pub(crate) fn slices<'a>(&'a self, own: usize, slices: &mut [IoSlice<'a>]) -> usize {
        fn push<'a>(slices: &mut [IoSlice<'a>], n: &mut usize, s: &'a [u8]) {
            if !s.is_empty() && *n < slices.len() {
                slices[*n] = IoSlice::new(s);
                *n += 1;
            }
        }
        let (mut n, mut from) = (0, 0);
        if let Some(s) = &self.splices {
            let end = s.consumed + own;
            for (at, payload) in &s.list {
                if *at > end || n + 2 > slices.len() {
                    break;
                }
                let to = at - s.consumed;
                push(slices, &mut n, &self.bytes[from..to]);
                push(slices, &mut n, payload);
                from = to;
            }
        }
        push(slices, &mut n, &self.bytes[from..own.max(from)]);
        n
    }

    /// Where the first `own` of the own bytes end, counted so that it stays put as the
    /// stream is written (for [`OutBuf::own_before`]).
    pub(crate) fn end_of(&self, own: usize) -> usize {
        self.consumed() + own
    }

    /// How many of the own bytes are left before `end` (from [`OutBuf::end_of`]).
    pub(crate) fn own_before(&self, end: usize) -> usize {
        end.saturating_sub(self.consumed())
    }

    /// Lets go of the first `n` bytes of the stream (written).
    pub(crate) fn advance(&mut self, mut n: usize) {
        let Some(s) = self.splices.as_deref_mut() else {
            self.bytes.advance(n);
            return;
        };
        while n > 0 {
            match s.list.front_mut() {
                Some((at, payload)) if *at == s.consumed => {
                    let k = n.min(payload.len());
                    payload.advance(k);
                    s.len -= k;
                    n -= k;
                    if payload.is_empty() {
                        s.list.pop_front();
                    }
                }
                front => {
                    let k = front.map_or(n, |(at, _)| n.min(*at - s.consumed));
                    assert!(k <= self.bytes.len(), "advanced past the end of the output");
                    self.bytes.advance(k);
                    s.consumed += k;
                    n -= k;
                }
            }
        }
    }

    /// Empties it (everything was written), keeping `bytes`' room.
    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
        if let Some(s) = self.splices.as_deref_mut() {
            s.list.clear();
            s.consumed = 0;
            s.len = 0;
        }
    }

    /// Gives back the splice list once nothing is spliced.
    pub(crate) fn shrink_splices(&mut self) {
        if !self.has_splices() {
            self.splices = None;
        }
    }

    /// The whole stream as one buffer (tests compare it with the bytes written at once).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn flatten(&mut self) -> BytesMut {
        let mut all = BytesMut::with_capacity(self.len());
        while !self.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let n = self.slices(self.bytes.len(), &mut slices);
            let mut written = 0;
            for s in &slices[..n] {
                all.extend_from_slice(s);
                written += s.len();
            }
            self.advance(written);
        }
        self.clear();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(c: u8, n: usize) -> Bytes {
        Bytes::from(vec![c; n])
    }

    /// A stream of own bytes and payloads, written in pieces of every size from 1 to
    /// 7 bytes (a socket that takes a little at a time), comes out whole and in order.
    #[test]
    fn written_in_pieces_the_stream_comes_out_whole() {
        for piece in 1..8 {
            let mut out = OutBuf::default();
            let mut want = Vec::new();
            for i in 0..5u8 {
                out.bytes.extend_from_slice(&[b'h', i]);
                want.extend_from_slice(&[b'h', i]);
                if i != 2 {
                    out.splice(payload(b'a' + i, 3 + usize::from(i)));
                    want.extend(std::iter::repeat_n(b'a' + i, 3 + usize::from(i)));
                }
            }
            // Two payloads back to back, and own bytes at the end.
            out.splice(payload(b'x', 2));
            want.extend_from_slice(b"xx");
            out.bytes.extend_from_slice(b"end");
            want.extend_from_slice(b"end");
            assert_eq!(out.len(), want.len());
            let mut got = Vec::new();
            while !out.is_empty() {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let n = out.slices(out.bytes.len(), &mut slices);
                let flat: Vec<u8> = slices[..n].iter().flat_map(|s| s.to_vec()).collect();
                let take = piece.min(flat.len());
                got.extend_from_slice(&flat[..take]);
                out.advance(take);
            }
            assert_eq!(got, want, "pieces of {piece}");
        }
    }

    /// Writing part of the own bytes takes the payloads spliced within and right after
    /// them, and leaves those after for later; what is appended later follows them.
    #[test]
    fn a_prefix_takes_the_payloads_it_ends_at() {
        let mut out = OutBuf::default();
        out.bytes.extend_from_slice(b"ab");
        out.splice(payload(b'p', 4));
        out.bytes.extend_from_slice(b"cd");
        out.splice(payload(b'q', 2));
        assert_eq!(out.len_through(2), 6);
        assert_eq!(out.len_through(4), 10);
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let n = out.slices(2, &mut slices);
        let flat: Vec<u8> = slices[..n].iter().flat_map(|s| s.to_vec()).collect();
        assert_eq!(flat, b"abpppp");
        out.advance(6);
        out.bytes.extend_from_slice(b"later");
        assert_eq!(&out.flatten()[..], b"cdqqlater");
        assert!(out.is_empty());
    }

    /// More payloads than one write's I/O vectors: written over several writes.
    #[test]
    fn many_payloads_take_several_writes() {
        let mut out = OutBuf::default();
        let mut want = Vec::new();
        for i in 0..300u16 {
            let [a, b] = i.to_be_bytes();
            out.bytes.extend_from_slice(&[a, b]);
            out.splice(payload(b, 5));
            want.extend_from_slice(&[a, b]);
            want.extend(std::iter::repeat_n(b, 5));
        }
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        assert!(out.slices(out.bytes.len(), &mut slices) <= MAX_SLICES);
        assert_eq!(&out.flatten()[..], &want[..]);
    }
}
