//! Primitive reads and writes: a bounds-checked cursor over a frame and the [`Sink`]
//! that encoders write into.

use crate::{DecodeError, EncodeError};

/// Largest value of a variable byte integer (and of a remaining length).
pub const MAX_VAR_INT: u32 = 268_435_455;

/// A cursor over one frame. Every read checks bounds and never panics.
#[derive(Debug, Clone)]
#[allow(unreachable_pub)] // named by the sealed `PropItem` trait; not reachable outside
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    /// Bytes not yet read.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Takes `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.buf.len() {
            return Err(DecodeError::UnexpectedEnd);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Takes everything left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.buf)
    }

    /// Reads one byte.
    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    /// Reads a big-endian two-byte integer.
    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// Reads a big-endian four-byte integer.
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads a variable byte integer.
    pub(crate) fn var_int(&mut self) -> Result<u32, DecodeError> {
        match read_var_int(self.buf)? {
            Some((v, n)) => {
                self.buf = &self.buf[n..];
                Ok(v)
            }
            None => Err(DecodeError::UnexpectedEnd),
        }
    }

    /// Reads two-byte-length-prefixed binary data.
    pub(crate) fn binary(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u16()? as usize;
        self.take(n)
    }

    /// Reads a UTF-8 string checked against MQTT-1.5.3 (well-formed, no U+0000).
    pub(crate) fn string(&mut self) -> Result<&'a str, DecodeError> {
        let b = self.binary()?;
        check_utf8(b)
    }

    /// Reads a packet identifier, which is never 0.
    pub(crate) fn packet_id(&mut self) -> Result<u16, DecodeError> {
        match self.u16()? {
            0 => Err(DecodeError::ZeroPacketId),
            id => Ok(id),
        }
    }

    /// Fails if anything is left.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.buf.len()))
        }
    }
}

/// Validates an MQTT UTF-8 string: Rust's UTF-8 check rejects surrogates and overlong
/// forms; MQTT also forbids U+0000.
pub(crate) fn check_utf8(b: &[u8]) -> Result<&str, DecodeError> {
    let s = core::str::from_utf8(b).map_err(|_| DecodeError::InvalidUtf8)?;
    // A plain loop: `contains` would link `memchr` (about 400 bytes on a Cortex-M). A
    // fold without an early exit, so that it is vectorised where there are vectors.
    if b.iter().fold(false, |zero, &c| zero | (c == 0)) {
        return Err(DecodeError::InvalidUtf8);
    }
    Ok(s)
}

/// Reads a variable byte integer from the start of `buf`: `Ok(None)` when more bytes are
/// needed, otherwise the value and the bytes it used. A fifth byte is malformed.
///
/// Non-minimal encodings (`0x80 0x00` for 0) are accepted: MQTT-1.5.5-1 binds the sender
/// to the shortest form, and 3.1.1 §2.2.3 does not forbid the longer ones, so the receiver
/// is liberal here. Encoders in this crate always write the shortest form.
pub(crate) fn read_var_int(buf: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u32 = 0;
    for i in 0..4 {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        value |= u32::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 4 {
        Err(DecodeError::MalformedVarInt)
    } else {
        Ok(None)
    }
}

/// `v` as a variable byte integer (a Remaining Length, a property length): its bytes,
/// of which the first `n` are used. `None` above [`MAX_VAR_INT`].
#[inline]
pub fn var_int_bytes(v: usize) -> Option<([u8; 4], usize)> {
    if v > MAX_VAR_INT as usize {
        return None;
    }
    let mut out = [0u8; 4];
    let mut n = 0;
    let mut x = v;
    loop {
        let mut b = (x % 128) as u8;
        x /= 128;
        if x > 0 {
            b |= 0x80;
        }
        out[n] = b;
        n += 1;
        if x == 0 {
            return Some((out, n));
        }
    }
}

/// Bytes a variable byte integer of `v` takes.
pub(crate) const fn var_int_len(v: usize) -> usize {
    if v < 128 {
        1
    } else if v < 16_384 {
        2
    } else if v < 2_097_152 {
        3
    } else {
        4
    }
}

/// Where an encoder writes: a byte slice ([`SliceSink`]), a `BytesMut` (feature `bytes`),
/// or anything else that can append bytes.
pub trait Sink {
    /// Appends `bytes`, or fails when there is no room.
    ///
    /// # Errors
    /// [`EncodeError::BufferTooSmall`] when the sink is full.
    fn put(&mut self, bytes: &[u8]) -> Result<(), EncodeError>;

    /// Appends `len` bytes that `fill` writes in place (it is given exactly `len`
    /// bytes), for a sink that can lend its memory; on error nothing is appended.
    /// Returns `None` when the sink cannot (the default): the encoder then hands the
    /// packet over through [`Sink::put`] instead. A slice and a `BytesMut` lend theirs,
    /// so a packet is written straight into place.
    ///
    /// # Errors
    /// What `fill` returns; [`EncodeError::BufferTooSmall`] when there is no room.
    fn put_in_place(
        &mut self,
        len: usize,
        fill: &mut dyn FnMut(&mut [u8]) -> Result<(), EncodeError>,
    ) -> Option<Result<(), EncodeError>> {
        let _ = (len, fill);
        None
    }
}

/// A [`Sink`] over a caller's `&mut [u8]`, remembering how much was written.
#[derive(Debug)]
pub struct SliceSink<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> SliceSink<'a> {
    /// A sink writing from the start of `buf`.
    pub fn new(buf: &'a mut [u8]) -> Self {
        SliceSink { buf, pos: 0 }
    }

    /// Bytes written so far.
    pub fn written(&self) -> usize {
        self.pos
    }
}

impl Sink for SliceSink<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        let end = self.pos + bytes.len();
        match self.buf.get_mut(self.pos..end) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                self.pos = end;
                Ok(())
            }
            None => Err(EncodeError::BufferTooSmall { needed: end }),
        }
    }

    fn put_in_place(
        &mut self,
        len: usize,
        fill: &mut dyn FnMut(&mut [u8]) -> Result<(), EncodeError>,
    ) -> Option<Result<(), EncodeError>> {
        let end = self.pos + len;
        let Some(dst) = self.buf.get_mut(self.pos..end) else {
            return Some(Err(EncodeError::BufferTooSmall { needed: end }));
        };
        let r = fill(dst);
        if r.is_ok() {
            self.pos = end;
        }
        Some(r)
    }
}

#[cfg(feature = "bytes")]
impl Sink for bytes::BytesMut {
    fn put(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        self.extend_from_slice(bytes);
        Ok(())
    }

    fn put_in_place(
        &mut self,
        len: usize,
        fill: &mut dyn FnMut(&mut [u8]) -> Result<(), EncodeError>,
    ) -> Option<Result<(), EncodeError>> {
        let at = self.len();
        // Zeroed first: writing into spare capacity would need `unsafe`.
        self.resize(at + len, 0);
        let r = fill(self.get_mut(at..).unwrap_or_default());
        if r.is_err() {
            self.truncate(at);
        }
        Some(r)
    }
}

/// Typed writes into a byte buffer: the caller's output slice, or a small stack buffer
/// that spills into a [`Sink`] when full. One concrete writer serves every sink, so the
/// encoders exist once; the common case (the bytes fit) is a bounds check and a copy,
/// with no call through the sink per field.
///
/// Server builds (feature `server`) inline the primitives into the encoders, for speed;
/// device builds call them out of line, which is smaller code.
#[allow(unreachable_pub, missing_debug_implementations)] // as `Reader`
pub struct Writer<'b> {
    buf: &'b mut [u8],
    pos: usize,
    spill: Option<&'b mut dyn Sink>,
}

impl<'b> Writer<'b> {
    /// A writer filling `buf` and nothing else.
    pub(crate) fn slice(buf: &'b mut [u8]) -> Self {
        Writer {
            buf,
            pos: 0,
            spill: None,
        }
    }

    /// A writer collecting small writes in `buf` and handing them to `sink` when it is
    /// full (and at [`Writer::finish`]); large writes go to `sink` directly.
    pub(crate) fn spilling(buf: &'b mut [u8], sink: &'b mut dyn Sink) -> Self {
        Writer {
            buf,
            pos: 0,
            spill: Some(sink),
        }
    }

    /// Bytes written into the buffer and not yet handed to a sink.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Hands what is buffered to the sink, if there is one.
    pub(crate) fn finish(&mut self) -> Result<(), EncodeError> {
        if let Some(sink) = self.spill.as_mut() {
            let n = core::mem::take(&mut self.pos);
            sink.put(self.buf.get(..n).unwrap_or_default())?;
        }
        Ok(())
    }

    #[cfg_attr(feature = "server", inline)]
    #[cfg_attr(not(feature = "server"), inline(never))]
    pub(crate) fn bytes(&mut self, b: &[u8]) -> Result<(), EncodeError> {
        let end = self.pos + b.len();
        match self.buf.get_mut(self.pos..end) {
            Some(dst) => {
                dst.copy_from_slice(b);
                self.pos = end;
                Ok(())
            }
            None => self.overflow(b),
        }
    }

    /// `b` does not fit in the buffer: spill, or fail for a bare slice.
    #[cold]
    #[inline(never)]
    fn overflow(&mut self, b: &[u8]) -> Result<(), EncodeError> {
        let Some(sink) = self.spill.as_mut() else {
            return Err(EncodeError::BufferTooSmall {
                needed: self.pos + b.len(),
            });
        };
        let n = core::mem::take(&mut self.pos);
        sink.put(self.buf.get(..n).unwrap_or_default())?;
        if b.len() > self.buf.len() / 2 {
            return sink.put(b);
        }
        self.bytes(b)
    }

    #[cfg_attr(feature = "server", inline)]
    #[cfg_attr(not(feature = "server"), inline(never))]
    pub(crate) fn u8(&mut self, v: u8) -> Result<(), EncodeError> {
        match self.buf.get_mut(self.pos) {
            Some(dst) => {
                *dst = v;
                self.pos += 1;
                Ok(())
            }
            None => self.overflow(&[v]),
        }
    }
    #[cfg_attr(feature = "server", inline)]
    #[cfg_attr(not(feature = "server"), inline(never))]
    pub(crate) fn u16(&mut self, v: u16) -> Result<(), EncodeError> {
        self.bytes(&v.to_be_bytes())
    }
    #[cfg_attr(feature = "server", inline)]
    #[cfg_attr(not(feature = "server"), inline(never))]
    pub(crate) fn u32(&mut self, v: u32) -> Result<(), EncodeError> {
        self.bytes(&v.to_be_bytes())
    }
    #[cfg_attr(feature = "server", inline)]
    #[cfg_attr(not(feature = "server"), inline(never))]
    pub(crate) fn var_int(&mut self, v: usize) -> Result<(), EncodeError> {
        if v < 128 {
            return self.u8(v as u8);
        }
        self.long_var_int(v)
    }
    #[inline(never)]
    fn long_var_int(&mut self, v: usize) -> Result<(), EncodeError> {
        let (out, n) = var_int_bytes(v).ok_or(EncodeError::TooLarge)?;
        self.bytes(&out[..n])
    }
    #[cfg_attr(feature = "server", inline)]
    #[cfg_attr(not(feature = "server"), inline(never))]
    pub(crate) fn binary(&mut self, b: &[u8]) -> Result<(), EncodeError> {
        let n = u16::try_from(b.len()).map_err(|_| EncodeError::TooLarge)?;
        self.u16(n)?;
        self.bytes(b)
    }
    #[cfg_attr(feature = "server", inline)]
    #[cfg_attr(not(feature = "server"), inline(never))]
    pub(crate) fn string(&mut self, s: &str) -> Result<(), EncodeError> {
        self.binary(s.as_bytes())
    }
}

/// Lets an unsized `S` stand behind `&mut dyn Sink`.
pub(crate) struct DynSink<'s, S: Sink + ?Sized>(pub(crate) &'s mut S);

impl<S: Sink + ?Sized> Sink for DynSink<'_, S> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        self.0.put(bytes)
    }
}
