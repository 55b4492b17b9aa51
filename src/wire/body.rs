//! Message bodies as HTTP/1.1 frames them (RFC 9112 §6-7): a length, chunks,
//! or everything until the connection closes.
//!
//! [`Decoder`] takes body bytes out of a connection's read buffer and leaves
//! whatever follows (the next message) where it is, so a keep-alive
//! connection can go on. It copies nothing: data comes out as `Bytes` split
//! off the buffer.

use bytes::{Buf, Bytes, BytesMut};

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body at all (a `HEAD` answer, 204, 304, a request without one).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Everything until the peer closes (a response with neither).
    Close,
}

/// The longest chunk-size line or trailer section waited for; real ones are
/// a few bytes.
const MAX_LINE: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    Close,
    Done,
}

/// What the buffer gave.
#[derive(Debug)]
pub enum Decoded {
    Data(Bytes),
    /// More bytes must be read first.
    More,
    /// The body is complete; the buffer holds only what comes after it.
    End,
}

/// A body the peer framed wrongly.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed chunk size line")]
    ChunkSize,
    #[error("chunk data not followed by CRLF")]
    ChunkEnd,
    #[error("chunked trailers too long")]
    Trailers,
}

/// Where one body is in its framing.
#[derive(Debug)]
pub struct Decoder {
    state: State,
}

impl Decoder {
    pub fn new(framing: Framing) -> Decoder {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::Close => State::Close,
        };
        Decoder { state }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Delimited by the peer closing: the end of input is the end of the body.
    pub fn ends_at_close(&self) -> bool {
        self.state == State::Close
    }

    /// The exact number of bytes still to come, when the framing says.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// The next piece of the body out of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, DecodeError> {
        loop {
            if let Some(decoded) = self.step(buf)? {
                return Ok(decoded);
            }
        }
    }

    /// Goes through the framing that `buf` already holds (a chunk's CRLF,
    /// the last chunk, trailers) without taking data, so a body whose end
    /// has arrived says so at once.
    pub fn settle(&mut self, buf: &mut BytesMut) -> Result<(), DecodeError> {
        while matches!(
            self.state,
            State::ChunkEnd | State::ChunkSize | State::Trailers
        ) {
            if self.step(buf)?.is_some() {
                break;
            }
        }
        Ok(())
    }

    /// One move of the state machine: `Some` to return, `None` to go on.
    fn step(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, DecodeError> {
        match self.state {
            State::Done => return Ok(Some(Decoded::End)),
            State::Length(n) | State::ChunkData(n) => {
                if buf.is_empty() {
                    return Ok(Some(Decoded::More));
                }
                let take = n.min(buf.len() as u64);
                let data = buf.split_to(take as usize).freeze();
                let left = n - take;
                self.state = match (self.state, left) {
                    (State::Length(_), 0) => State::Done,
                    (State::Length(_), left) => State::Length(left),
                    (_, 0) => State::ChunkEnd,
                    (_, left) => State::ChunkData(left),
                };
                return Ok(Some(Decoded::Data(data)));
            }
            State::Close => {
                if buf.is_empty() {
                    return Ok(Some(Decoded::More));
                }
                return Ok(Some(Decoded::Data(buf.split().freeze())));
            }
            State::ChunkSize => match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete((used, size))) => {
                    buf.advance(used);
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData(size)
                    };
                }
                Ok(httparse::Status::Partial) if buf.len() <= MAX_LINE => {
                    return Ok(Some(Decoded::More));
                }
                _ => return Err(DecodeError::ChunkSize),
            },
            State::ChunkEnd => {
                if buf.len() < 2 {
                    return Ok(Some(Decoded::More));
                }
                if &buf[..2] != b"\r\n" {
                    return Err(DecodeError::ChunkEnd);
                }
                buf.advance(2);
                self.state = State::ChunkSize;
            }
            State::Trailers => {
                // Trailers are dropped: nothing on this path uses them.
                let end = if buf.starts_with(b"\r\n") {
                    Some(2)
                } else {
                    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
                };
                match end {
                    Some(end) => {
                        buf.advance(end);
                        self.state = State::Done;
                    }
                    None if buf.len() <= MAX_LINE => return Ok(Some(Decoded::More)),
                    None => return Err(DecodeError::Trailers),
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(framing: Framing, input: &[&[u8]]) -> (Vec<u8>, bool, BytesMut) {
        let mut d = Decoder::new(framing);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut pieces = input.iter();
        loop {
            match d.decode(&mut buf).unwrap() {
                Decoded::Data(b) => out.extend_from_slice(&b),
                Decoded::End => {
                    // What was not needed stays for the next message.
                    pieces.for_each(|p| buf.extend_from_slice(p));
                    return (out, true, buf);
                }
                Decoded::More => match pieces.next() {
                    Some(p) => buf.extend_from_slice(p),
                    None => return (out, false, buf),
                },
            }
        }
    }

    #[test]
    fn length_stops_at_its_end_and_leaves_the_next_message() {
        let (body, done, rest) = all(Framing::Length(5), &[b"hel", b"loHTTP/1.1"]);
        assert_eq!(body, b"hello");
        assert!(done);
        assert_eq!(&rest[..], b"HTTP/1.1");
    }

    #[test]
    fn chunks_split_anywhere_decode_whole() {
        let wire: &[u8] = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\nNEXT";
        for cut in 1..wire.len() {
            let (body, done, rest) = all(Framing::Chunked, &[&wire[..cut], &wire[cut..]]);
            assert_eq!(body, b"hello world", "cut at {cut}");
            assert!(done, "cut at {cut}");
            assert_eq!(&rest[..], b"NEXT");
        }
    }

    #[test]
    fn bad_chunks_are_refused() {
        let mut d = Decoder::new(Framing::Chunked);
        let mut buf = BytesMut::from(&b"zz\r\n"[..]);
        assert!(d.decode(&mut buf).is_err());
        let mut d = Decoder::new(Framing::Chunked);
        let mut buf = BytesMut::from(&b"2\r\nabXY"[..]);
        assert!(matches!(d.decode(&mut buf), Ok(Decoded::Data(_))));
        assert!(d.decode(&mut buf).is_err());
    }

    #[test]
    fn settle_reaches_the_end_without_taking_data() {
        let mut d = Decoder::new(Framing::Chunked);
        let mut buf = BytesMut::from(&b"3\r\nabc\r\n0\r\n\r\n"[..]);
        assert!(matches!(d.decode(&mut buf), Ok(Decoded::Data(b)) if &b[..] == b"abc"));
        d.settle(&mut buf).unwrap();
        assert!(d.is_done());
        let mut d = Decoder::new(Framing::Chunked);
        let mut buf = BytesMut::from(&b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"[..]);
        let _ = d.decode(&mut buf).unwrap();
        d.settle(&mut buf).unwrap();
        assert!(!d.is_done());
        assert!(matches!(d.decode(&mut buf), Ok(Decoded::Data(b)) if &b[..] == b"de"));
    }

    #[test]
    fn close_delimited_takes_everything_and_empty_is_done() {
        let (body, done, _) = all(Framing::Close, &[b"abc", b"def"]);
        assert_eq!(body, b"abcdef");
        assert!(!done, "only the connection's end ends it");
        assert!(Decoder::new(Framing::Empty).is_done());
        assert!(Decoder::new(Framing::Length(0)).is_done());
    }
}
