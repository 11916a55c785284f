//! A guard between a WebSocket connection's bytes and actix-ws's frame parser.
//!
//! actix-http's parser buffers a whole frame before it compares the frame's length with the
//! limit, so one frame header claiming 1 GiB would make the hub hold 1 GiB for an anonymous
//! client. [`FrameGuard`] reads each client frame's header as the bytes arrive and stops the
//! stream as soon as a header declares a frame (or a fragmented message) over the limit, or sets
//! reserved bits, before any of that payload is buffered. The WebSocket route in `api` wraps the
//! request payload in it; the viewer actor reads the [`Violation`] it left to close the
//! connection with the matching code ([`crate::session::CloseReason::Guard`]).

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use actix_web::error::PayloadError;
use bytes::Bytes;
use futures_util::Stream;

/// Why the guard stopped a connection's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// A frame, or the fragments of one message so far, declared more bytes than allowed.
    TooBig { declared: u64, limit: usize },
    /// RSV1–3 set without a negotiated extension (RFC 6455 §5.2).
    ReservedBits,
    /// A 64-bit length with its top bit set (RFC 6455 §5.2).
    BadLength,
}

impl Violation {
    /// The close reason for the client.
    pub fn reason(self) -> String {
        match self {
            Self::TooBig { declared, limit } => {
                format!("message of {declared} bytes is over the limit of {limit}")
            }
            Self::ReservedBits => "reserved bits set in a frame header".into(),
            Self::BadLength => "invalid frame length".into(),
        }
    }
}

/// Where the verdict is left for the viewer (the guard and the viewer live on one worker
/// thread, so a `Cell` suffices).
pub type Verdict = Rc<Cell<Option<Violation>>>;

/// The longest frame header: 2 bytes, an 8-byte length, a 4-byte mask.
const MAX_HEADER: usize = 14;

/// Parses client frame headers as bytes pass; payload bytes are counted, never held.
#[derive(Debug)]
pub struct HeaderScanner {
    limit: usize,
    header: [u8; MAX_HEADER],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    remaining: u64,
    /// Bytes of the current fragmented data message so far.
    message: u64,
}

impl HeaderScanner {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            header: [0; MAX_HEADER],
            have: 0,
            remaining: 0,
            message: 0,
        }
    }

    /// Scans `bytes`, the next bytes from the client; an error as soon as a header is bad.
    pub fn scan(&mut self, mut bytes: &[u8]) -> Result<(), Violation> {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let skip = self.remaining.min(bytes.len() as u64);
                self.remaining -= skip;
                bytes = &bytes[skip as usize..];
                continue;
            }
            // Take header bytes one at a time until the header is complete: headers are short.
            self.header[self.have] = bytes[0];
            self.have += 1;
            bytes = &bytes[1..];
            if let Some(len) = self.header_complete() {
                self.have = 0;
                self.frame(len)?;
            }
        }
        Ok(())
    }

    /// The header's length once all of it is here.
    fn header_complete(&self) -> Option<usize> {
        if self.have < 2 {
            return None;
        }
        let masked = self.header[1] & 0x80 != 0;
        let ext = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let need = 2 + ext + if masked { 4 } else { 0 };
        (self.have == need).then_some(need)
    }

    fn frame(&mut self, header_len: usize) -> Result<(), Violation> {
        let h = &self.header[..header_len];
        if h[0] & 0x70 != 0 {
            return Err(Violation::ReservedBits);
        }
        let len = match h[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            127 => {
                let mut be = [0u8; 8];
                be.copy_from_slice(&h[2..10]);
                u64::from_be_bytes(be)
            }
            short => u64::from(short),
        };
        if len >> 63 != 0 {
            return Err(Violation::BadLength);
        }
        let fin = h[0] & 0x80 != 0;
        let opcode = h[0] & 0x0f;
        // Control frames (8 and up) come between fragments and are checked by actix-ws (at most
        // 125 bytes); data frames add up to one message.
        if opcode < 8 {
            self.message = if opcode == 0 {
                self.message.saturating_add(len)
            } else {
                len
            };
            if self.message > self.limit as u64 {
                return Err(Violation::TooBig {
                    declared: self.message,
                    limit: self.limit,
                });
            }
            if fin {
                self.message = 0;
            }
        } else if len > self.limit as u64 {
            return Err(Violation::TooBig {
                declared: len,
                limit: self.limit,
            });
        }
        self.remaining = len;
        Ok(())
    }
}

/// A client's byte stream with its frame headers checked; ends with an error (and leaves its
/// [`Violation`] in the verdict) at the first bad header.
pub struct FrameGuard<S> {
    inner: S,
    scanner: HeaderScanner,
    verdict: Verdict,
    stopped: bool,
}

impl<S> FrameGuard<S> {
    pub fn new(inner: S, limit: usize, verdict: Verdict) -> Self {
        Self {
            inner,
            scanner: HeaderScanner::new(limit),
            verdict,
            stopped: false,
        }
    }
}

impl<S> Stream for FrameGuard<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.stopped {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(bytes))) => match this.scanner.scan(&bytes) {
                Ok(()) => Poll::Ready(Some(Ok(bytes))),
                Err(violation) => {
                    this.stopped = true;
                    this.verdict.set(Some(violation));
                    Poll::Ready(Some(Err(PayloadError::Overflow)))
                }
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame header.
    fn header(first: u8, len: u64) -> Vec<u8> {
        let mut h = vec![first];
        match len {
            0..=125 => h.push(0x80 | len as u8),
            126..=0xffff => {
                h.push(0x80 | 126);
                h.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                h.push(0x80 | 127);
                h.extend_from_slice(&len.to_be_bytes());
            }
        }
        h.extend_from_slice(&[1, 2, 3, 4]);
        h
    }

    #[test]
    fn a_huge_declared_length_is_refused_from_the_header_alone() {
        let mut scanner = HeaderScanner::new(4096);
        let h = header(0x81, 256 << 20);
        // Fed a byte at a time, the verdict comes with the header's last byte.
        for (i, b) in h.iter().enumerate() {
            let result = scanner.scan(&[*b]);
            if i + 1 < h.len() {
                assert_eq!(result, Ok(()), "byte {i}");
            } else {
                assert_eq!(
                    result,
                    Err(Violation::TooBig {
                        declared: 256 << 20,
                        limit: 4096
                    })
                );
            }
        }
    }

    #[test]
    fn frames_within_the_limit_pass_whole_and_split() {
        let mut bytes = Vec::new();
        for len in [0u64, 5, 125, 126, 4096] {
            bytes.extend(header(0x81, len));
            bytes.extend(std::iter::repeat_n(b'x', len as usize));
        }
        bytes.extend(header(0x89, 4)); // a ping
        bytes.extend(b"ping");
        assert_eq!(HeaderScanner::new(4096).scan(&bytes), Ok(()));
        let mut split = HeaderScanner::new(4096);
        for piece in bytes.chunks(7) {
            assert_eq!(split.scan(piece), Ok(()));
        }
    }

    #[test]
    fn fragments_add_up_to_one_message() {
        let mut scanner = HeaderScanner::new(100);
        let mut bytes = header(0x01, 60); // text, not final
        bytes.extend([b'a'; 60]);
        bytes.extend(header(0x89, 0)); // a ping between fragments does not count
        assert_eq!(scanner.scan(&bytes), Ok(()));
        let result = scanner.scan(&header(0x80, 60)); // final continuation: 120 in all
        assert_eq!(
            result,
            Err(Violation::TooBig {
                declared: 120,
                limit: 100
            })
        );
        // A new message starts the count again.
        let mut fresh = HeaderScanner::new(100);
        let mut ok = header(0x81, 60);
        ok.extend([b'a'; 60]);
        ok.extend(header(0x81, 60));
        assert_eq!(fresh.scan(&ok), Ok(()));
    }

    #[test]
    fn reserved_bits_and_bad_lengths_are_protocol_errors() {
        assert_eq!(
            HeaderScanner::new(4096).scan(&header(0xc1, 3)),
            Err(Violation::ReservedBits)
        );
        assert_eq!(
            HeaderScanner::new(usize::MAX).scan(&header(0x82, 1 << 63)),
            Err(Violation::BadLength)
        );
    }
}
