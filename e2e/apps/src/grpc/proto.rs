//! The messages of proto/echo.proto (and grpc.health.v1's two), encoded and decoded by hand:
//! a few string fields and a number do not justify a code generator, and protoc is not on the
//! machines that build this. The encoding is standard protobuf, so any gRPC client given the
//! .proto file can talk to the server.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("the message ends inside a field")]
    Truncated,
    #[error("a varint is longer than 10 bytes")]
    VarintTooLong,
    #[error("field number 0 is not valid")]
    FieldZero,
    #[error("wire type {0} (groups) is not supported")]
    WireType(u8),
    #[error("field {0} is not UTF-8")]
    Utf8(u32),
}

/// `braid.echo.v1.EchoRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EchoRequest {
    /// 1
    pub message: String,
}

/// `braid.echo.v1.EchoRepeatRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EchoRepeatRequest {
    /// 1
    pub message: String,
    /// 2: how many replies.
    pub count: u32,
}

/// `braid.echo.v1.EchoReply`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EchoReply {
    /// 1: the request's message.
    pub message: String,
    /// 2
    pub name: String,
    /// 3
    pub version: String,
    /// 4
    pub pod: String,
    /// 5: 1 for a unary call; the message's position (from 1) in a stream.
    pub sequence: u64,
}

/// `grpc.health.v1.HealthCheckResponse.ServingStatus`.
pub const SERVING: u64 = 1;
pub const NOT_SERVING: u64 = 2;

impl EchoRequest {
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.message.len() + 4);
        put_string(&mut buf, 1, &self.message);
        buf
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ProtoError> {
        let mut request = Self::default();
        let mut fields = Fields { rest: bytes };
        while let Some((number, value)) = fields.next()? {
            if let (1, Value::Bytes(bytes)) = (number, value) {
                request.message = string(number, bytes)?;
            }
        }
        Ok(request)
    }
}

impl EchoRepeatRequest {
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.message.len() + 10);
        put_string(&mut buf, 1, &self.message);
        put_uint(&mut buf, 2, u64::from(self.count));
        buf
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ProtoError> {
        let mut request = Self::default();
        let mut fields = Fields { rest: bytes };
        while let Some((number, value)) = fields.next()? {
            match (number, value) {
                (1, Value::Bytes(bytes)) => request.message = string(number, bytes)?,
                // protobuf reads a uint32 sent as a wider varint as its low 32 bits.
                (2, Value::Varint(count)) => request.count = count as u32,
                _ => {}
            }
        }
        Ok(request)
    }
}

impl EchoReply {
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(
            self.message.len() + self.name.len() + self.version.len() + self.pod.len() + 16,
        );
        put_string(&mut buf, 1, &self.message);
        put_string(&mut buf, 2, &self.name);
        put_string(&mut buf, 3, &self.version);
        put_string(&mut buf, 4, &self.pod);
        put_uint(&mut buf, 5, self.sequence);
        buf
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ProtoError> {
        let mut reply = Self::default();
        let mut fields = Fields { rest: bytes };
        while let Some((number, value)) = fields.next()? {
            match (number, value) {
                (1, Value::Bytes(bytes)) => reply.message = string(number, bytes)?,
                (2, Value::Bytes(bytes)) => reply.name = string(number, bytes)?,
                (3, Value::Bytes(bytes)) => reply.version = string(number, bytes)?,
                (4, Value::Bytes(bytes)) => reply.pod = string(number, bytes)?,
                (5, Value::Varint(sequence)) => reply.sequence = sequence,
                // Unknown fields are skipped, as protobuf requires.
                _ => {}
            }
        }
        Ok(reply)
    }
}

/// `grpc.health.v1.HealthCheckResponse { status = 1 }`.
pub fn encode_health(status: u64) -> Vec<u8> {
    let mut buf = Vec::with_capacity(2);
    put_uint(&mut buf, 1, status);
    buf
}

pub fn decode_health(bytes: &[u8]) -> Result<u64, ProtoError> {
    let mut status = 0;
    let mut fields = Fields { rest: bytes };
    while let Some((number, value)) = fields.next()? {
        if let (1, Value::Varint(value)) = (number, value) {
            status = value;
        }
    }
    Ok(status)
}

fn put_varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push((value as u8) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

/// proto3 leaves fields at their default value out.
fn put_string(buf: &mut Vec<u8>, number: u32, value: &str) {
    if !value.is_empty() {
        put_varint(buf, (u64::from(number) << 3) | 2);
        put_varint(buf, value.len() as u64);
        buf.extend_from_slice(value.as_bytes());
    }
}

fn put_uint(buf: &mut Vec<u8>, number: u32, value: u64) {
    if value != 0 {
        put_varint(buf, u64::from(number) << 3);
        put_varint(buf, value);
    }
}

fn string(number: u32, bytes: &[u8]) -> Result<String, ProtoError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| ProtoError::Utf8(number))
}

#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn next(&mut self) -> Result<Option<(u32, Value<'a>)>, ProtoError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).map_err(|_| ProtoError::Truncated)?;
        if number == 0 {
            return Err(ProtoError::FieldZero);
        }
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.skip(8)?;
                Value::Fixed
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| ProtoError::Truncated)?;
                let bytes = self.rest.get(..len).ok_or(ProtoError::Truncated)?;
                self.rest = &self.rest[len..];
                Value::Bytes(bytes)
            }
            5 => {
                self.skip(4)?;
                Value::Fixed
            }
            other => return Err(ProtoError::WireType(other as u8)),
        };
        Ok(Some((number, value)))
    }

    fn varint(&mut self) -> Result<u64, ProtoError> {
        let mut value = 0u64;
        for (index, byte) in self.rest.iter().enumerate() {
            if index == 10 {
                return Err(ProtoError::VarintTooLong);
            }
            value |= u64::from(byte & 0x7f) << (7 * index);
            if byte & 0x80 == 0 {
                self.rest = &self.rest[index + 1..];
                return Ok(value);
            }
        }
        Err(ProtoError::Truncated)
    }

    fn skip(&mut self, len: usize) -> Result<(), ProtoError> {
        if self.rest.len() < len {
            return Err(ProtoError::Truncated);
        }
        self.rest = &self.rest[len..];
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let reply = EchoReply {
            message: "hello ✓".into(),
            name: "echo".into(),
            version: "v2".into(),
            pod: "echo-7d9c".into(),
            sequence: 300,
        };
        assert_eq!(EchoReply::decode(&reply.encode()), Ok(reply));
        let request = EchoRequest { message: "x".repeat(200) };
        assert_eq!(EchoRequest::decode(&request.encode()), Ok(request));
        assert_eq!(EchoRequest::decode(&[]), Ok(EchoRequest::default()));
        let repeat = EchoRepeatRequest { message: "again".into(), count: 100_000 };
        assert_eq!(EchoRepeatRequest::decode(&repeat.encode()), Ok(repeat));
        assert_eq!(EchoRepeatRequest::decode(&[]), Ok(EchoRepeatRequest::default()));
        assert_eq!(decode_health(&encode_health(SERVING)), Ok(SERVING));
    }

    #[test]
    fn the_encoding_is_protobufs() {
        // What protoc's output would hold: field 1 (key 0x0a) length 2 "hi"; field 5 (key 0x28)
        // varint 300 = 0xac 0x02.
        assert_eq!(EchoRequest { message: "hi".into() }.encode(), b"\x0a\x02hi");
        let reply = EchoReply { sequence: 300, ..Default::default() };
        assert_eq!(reply.encode(), b"\x28\xac\x02");
        // field 1 "hi", then field 2 (key 0x10) varint 10.
        let repeat = EchoRepeatRequest { message: "hi".into(), count: 10 };
        assert_eq!(repeat.encode(), b"\x0a\x02hi\x10\x0a");
        // A count sent as a 64-bit varint (2^32 + 3) keeps its low 32 bits, as protobuf's do.
        assert_eq!(EchoRepeatRequest::decode(b"\x10\x83\x80\x80\x80\x10").map(|r| r.count), Ok(3));
    }

    #[test]
    fn unknown_fields_are_skipped_and_garbage_is_refused() {
        // field 7 varint, field 8 fixed64, field 9 fixed32, field 10 bytes, then field 1.
        let mut bytes = vec![0x38, 0x01, 0x41, 0, 0, 0, 0, 0, 0, 0, 0, 0x4d, 0, 0, 0, 0, 0x52, 0x01, b'z'];
        bytes.extend_from_slice(b"\x0a\x02ok");
        assert_eq!(EchoRequest::decode(&bytes), Ok(EchoRequest { message: "ok".into() }));
        assert_eq!(EchoRequest::decode(b"\x0a\x05hi"), Err(ProtoError::Truncated));
        assert_eq!(EchoRequest::decode(b"\x0a\x02\xff\xfe"), Err(ProtoError::Utf8(1)));
        assert_eq!(EchoRequest::decode(b"\x0b"), Err(ProtoError::WireType(3)));
        assert_eq!(EchoRequest::decode(&[0xff; 11]), Err(ProtoError::VarintTooLong));
        assert_eq!(EchoRequest::decode(b"\x02\x00"), Err(ProtoError::FieldZero));
    }
}
