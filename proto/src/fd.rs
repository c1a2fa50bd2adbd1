//! Turning inherited file descriptors (pipe ends or Unix sockets) into async halves for a
//! [`crate::Connection`]. Must be called inside a tokio runtime.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio::net::unix::pipe;

/// The read end: a FIFO/pipe or a Unix stream socket.
pub enum FdReader {
    Pipe(pipe::Receiver),
    Socket(UnixStream),
}

/// The write end: a FIFO/pipe or a Unix stream socket.
pub enum FdWriter {
    Pipe(pipe::Sender),
    Socket(UnixStream),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fifo,
    Socket,
}

fn kind(fd: OwnedFd, what: &str) -> io::Result<(Kind, OwnedFd)> {
    let raw = fd.as_raw_fd();
    let file = std::fs::File::from(fd);
    let ty = file
        .metadata()
        .map_err(|e| io::Error::new(e.kind(), format!("fstat {what} fd {raw}: {e}")))?
        .file_type();
    let kind = if ty.is_fifo() {
        Kind::Fifo
    } else if ty.is_socket() {
        Kind::Socket
    } else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} fd {raw} is neither a pipe nor a socket"),
        ));
    };
    Ok((kind, OwnedFd::from(file)))
}

impl FdReader {
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        match kind(fd, "read")? {
            (Kind::Fifo, fd) => Ok(Self::Pipe(pipe::Receiver::from_owned_fd(fd)?)),
            (Kind::Socket, fd) => Ok(Self::Socket(socket(fd)?)),
        }
    }
}

impl FdWriter {
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        match kind(fd, "write")? {
            (Kind::Fifo, fd) => Ok(Self::Pipe(pipe::Sender::from_owned_fd(fd)?)),
            (Kind::Socket, fd) => Ok(Self::Socket(socket(fd)?)),
        }
    }
}

fn socket(fd: OwnedFd) -> io::Result<UnixStream> {
    let std = std::os::unix::net::UnixStream::from(fd);
    std.set_nonblocking(true)?;
    UnixStream::from_std(std)
}

impl AsyncRead for FdReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            FdReader::Pipe(p) => Pin::new(p).poll_read(cx, buf),
            FdReader::Socket(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for FdWriter {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            FdWriter::Pipe(p) => Pin::new(p).poll_write(cx, b),
            FdWriter::Socket(s) => Pin::new(s).poll_write(cx, b),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            FdWriter::Pipe(p) => Pin::new(p).poll_flush(cx),
            FdWriter::Socket(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            FdWriter::Pipe(p) => Pin::new(p).poll_shutdown(cx),
            FdWriter::Socket(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
