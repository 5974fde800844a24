//! The frame an answer leaves in, as the protocol sees it: text or binary over
//! shared bytes, so a cached rendering goes to each client as a cheap clone of
//! one buffer. Nothing here knows the WebSocket library; `server/` turns a
//! [`Frame`] into its message type, handing over the same bytes.

use bytes::Bytes;

/// One answer frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// JSON text.
    Text(Text),
    /// Protobuf or gzip.
    Binary(Bytes),
}

impl Frame {
    pub fn text(text: impl Into<Text>) -> Self {
        Frame::Text(text.into())
    }

    pub fn binary(bytes: impl Into<Bytes>) -> Self {
        Frame::Binary(bytes.into())
    }
}

/// UTF-8 text in shared bytes. Made only from `String` and `&'static str`, so
/// it is always UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text(Bytes);

impl Text {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl From<String> for Text {
    /// Takes the string's buffer, no copy.
    fn from(text: String) -> Self {
        Self(Bytes::from(text))
    }
}

impl From<&'static str> for Text {
    fn from(text: &'static str) -> Self {
        Self(Bytes::from_static(text.as_bytes()))
    }
}
