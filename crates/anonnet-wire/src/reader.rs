//! Bounds-checked byte cursors. Every read returns [`WireError::Truncated`] instead of
//! panicking when the input is short; every multi-byte integer is big-endian.

use crate::WireError;

/// A cursor over received bytes.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `buf`, positioned at its first byte.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Take the next `n` bytes.
    ///
    /// # Errors
    /// [`WireError::Truncated`] when fewer than `n` bytes remain.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.buf.len() {
            return Err(WireError::Truncated {
                needed: n - self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Take exactly `N` bytes as an array.
    ///
    /// # Errors
    /// [`WireError::Truncated`] when fewer than `N` bytes remain.
    pub fn take_array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// One byte.
    ///
    /// # Errors
    /// [`WireError::Truncated`] at the end of input.
    pub fn take_u8(&mut self) -> Result<u8, WireError> {
        Ok(u8::from_be_bytes(self.take_array()?))
    }

    /// A big-endian `u16`.
    ///
    /// # Errors
    /// [`WireError::Truncated`] when fewer than 2 bytes remain.
    pub fn take_u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.take_array()?))
    }

    /// A big-endian `u32`.
    ///
    /// # Errors
    /// [`WireError::Truncated`] when fewer than 4 bytes remain.
    pub fn take_u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.take_array()?))
    }

    /// A big-endian `u64`.
    ///
    /// # Errors
    /// [`WireError::Truncated`] when fewer than 8 bytes remain.
    pub fn take_u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.take_array()?))
    }

    /// All remaining bytes.
    pub fn take_rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Succeed only if every byte was consumed.
    ///
    /// # Errors
    /// [`WireError::Trailing`] with the count of unread bytes.
    pub fn finish(&self) -> Result<(), WireError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(WireError::Trailing(n)),
        }
    }

    /// Succeed only if every remaining byte is zero (cell padding).
    ///
    /// # Errors
    /// [`WireError::Invalid`] naming `field` when a padding byte is not zero.
    pub fn finish_zero_padding(&mut self, field: &'static str) -> Result<(), WireError> {
        if self.take_rest().iter().any(|&b| b != 0) {
            return Err(crate::invalid(field, "padding is not all zero"));
        }
        Ok(())
    }
}

/// A growable output buffer for encoders.
#[derive(Debug, Default, Clone)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Writer::default()
    }

    /// An empty writer with room for `n` bytes.
    pub fn with_capacity(n: usize) -> Self {
        Writer {
            buf: Vec::with_capacity(n),
        }
    }

    /// Append raw bytes.
    pub fn put(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Append one byte.
    pub fn put_u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    /// Append a big-endian `u16`.
    pub fn put_u16(&mut self, v: u16) {
        self.put(&v.to_be_bytes());
    }

    /// Append a big-endian `u32`.
    pub fn put_u32(&mut self, v: u32) {
        self.put(&v.to_be_bytes());
    }

    /// Append a big-endian `u64`.
    pub fn put_u64(&mut self, v: u64) {
        self.put(&v.to_be_bytes());
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when nothing was written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Pad with zeros up to `len` bytes in total.
    ///
    /// # Errors
    /// [`WireError::TooLong`] naming `what` when more than `len` bytes were already written.
    pub fn pad_to(&mut self, len: usize, what: &'static str) -> Result<(), WireError> {
        if self.buf.len() > len {
            return Err(WireError::TooLong {
                what,
                len: self.buf.len(),
                room: len,
            });
        }
        self.buf.resize(len, 0);
        Ok(())
    }

    /// The bytes written.
    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }

    /// A view of the bytes written.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_reports_truncation_instead_of_panicking() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.take_u16().unwrap(), 0x0102);
        assert_eq!(r.take_u16(), Err(WireError::Truncated { needed: 1 }));
        assert_eq!(r.take_u8().unwrap(), 3);
        assert!(r.finish().is_ok());
        assert_eq!(r.take_u64(), Err(WireError::Truncated { needed: 8 }));
    }

    #[test]
    fn writer_pads_and_refuses_overflow() {
        let mut w = Writer::new();
        w.put_u32(7);
        w.pad_to(6, "x").unwrap();
        assert_eq!(w.as_slice(), &[0, 0, 0, 7, 0, 0]);
        assert!(w.pad_to(5, "x").is_err());
    }
}
