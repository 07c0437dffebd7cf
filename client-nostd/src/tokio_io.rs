//! A tokio byte stream as an `embedded-io-async` transport (host tests, simulator).

use embedded_io_async::{ErrorType, Read, Write};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Wraps a tokio stream (`TcpStream`, `DuplexStream`, ...) as an
/// `embedded_io_async::{Read, Write}` transport.
#[derive(Debug)]
pub struct FromTokio<T>(pub T);

impl<T> ErrorType for FromTokio<T> {
    type Error = std::io::Error;
}

impl<T: AsyncRead + Unpin> Read for FromTokio<T> {
    /// Cancel-safe: tokio's `read` loses no data when dropped before completing.
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        self.0.read(buf).await
    }
}

impl<T: AsyncWrite + Unpin> Write for FromTokio<T> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.0.write(buf).await
    }

    async fn flush(&mut self) -> Result<(), Self::Error> {
        self.0.flush().await
    }
}
