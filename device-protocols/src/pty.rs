//! Pseudo-terminal pairs: a serial cable inside the kernel, for tests and the simulator.
//!
//! The **master** side ([`PtyMaster`]) is an async byte stream held by the "device" (the
//! simulator, a line-device script, a test); the **slave** side is a real tty path
//! (`/dev/pts/N`) that the code under test opens like any serial port, e.g. with
//! [`crate::serial::open`]. Bytes pass through the kernel tty layer, so termios calls, raw
//! mode, hang-ups and `EIO` behave as with a USB adapter.
//!
//! # Unplug and replug
//!
//! Dropping the [`PtyMaster`] is the unplug: the client's reads then fail with `EIO` (or
//! return EOF) and its writes fail. A closed pty's path cannot be reused (the kernel picks a
//! fresh `/dev/pts/N` for the next pair), so tests give the client a **stable symlink** instead,
//! managed by [`PtyLink`] — exactly like udev's `/dev/serial/by-id/…` links, which disappear on
//! unplug and come back pointing at the new device node on replug:
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use device_protocols::pty::{PtyLink, PtyMaster};
//! let dir = tempfile::tempdir()?;
//! let link = PtyLink::new(dir.path().join("ttyBUS"));
//! let master = PtyMaster::open()?;
//! link.point_to(&master)?;          // client opens `link.path()`
//! drop(master);                     // unplug: client sees EIO / hang-up
//! link.remove()?;                   //   … and the path vanishes, like a by-id link
//! let master = PtyMaster::open()?;  // replug: a new pair …
//! link.point_to(&master)?;          //   … behind the same path; the client reopens it
//! # Ok(()) }
//! ```
//!
//! [`VirtualPort`] bundles both for the common case.
//!
//! # No client yet
//!
//! While no process has the slave open, the kernel fails master reads with `EIO`;
//! [`PtyMaster`] hides this and simply waits (re-checking every few milliseconds), so a
//! device can start before its client connects and survives the client closing and reopening
//! the port. Bytes written meanwhile wait in the kernel buffer.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// How often a master with no client re-checks for one.
const NO_PEER_RETRY: Duration = Duration::from_millis(5);

/// The master side of a pseudo-terminal pair as a tokio byte stream.
///
/// Must be created inside a tokio runtime. Dropping it closes the master (an "unplug").
#[derive(Debug)]
pub struct PtyMaster {
    fd: AsyncFd<OwnedFd>,
    slave_path: PathBuf,
    no_peer_retry: Option<Pin<Box<Sleep>>>,
}

fn nix_to_io(context: &str, e: Errno) -> io::Error {
    let err = io::Error::from(e);
    io::Error::new(err.kind(), format!("{context}: {err}"))
}

impl PtyMaster {
    /// Opens a new pair with the slave in raw mode (no echo, no line editing, no CR/LF
    /// translation, 8 bit clean) and returns its master. The slave is closed again: the client
    /// opens [`slave_path`](Self::slave_path).
    pub fn open() -> io::Result<Self> {
        let pair = nix::pty::openpty(None, None).map_err(|e| nix_to_io("openpty", e))?;
        let mut termios = tcgetattr(&pair.slave).map_err(|e| nix_to_io("tcgetattr on pty", e))?;
        cfmakeraw(&mut termios);
        tcsetattr(&pair.slave, SetArg::TCSANOW, &termios)
            .map_err(|e| nix_to_io("tcsetattr on pty", e))?;
        let slave_path =
            nix::unistd::ttyname(&pair.slave).map_err(|e| nix_to_io("ttyname of pty", e))?;
        let flags = fcntl(&pair.master, FcntlArg::F_GETFL).map_err(|e| nix_to_io("fcntl", e))?;
        fcntl(
            &pair.master,
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        )
        .map_err(|e| nix_to_io("fcntl O_NONBLOCK on pty master", e))?;
        drop(pair.slave);
        // `AsyncFd::new` is deprecated because a borrowed or shared fd could be closed behind
        // the reactor's back; here the `OwnedFd` moves into the `AsyncFd` and is only closed
        // when the `AsyncFd` (and with it the registration) is dropped.
        #[allow(deprecated)]
        let fd = AsyncFd::new(pair.master)?;
        Ok(Self {
            fd,
            slave_path,
            no_peer_retry: None,
        })
    }

    /// The slave's device path (`/dev/pts/N`) for the client to open.
    pub fn slave_path(&self) -> &Path {
        &self.slave_path
    }
}

impl AsyncRead for PtyMaster {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if let Some(retry) = this.no_peer_retry.as_mut() {
                ready!(retry.as_mut().poll(cx));
                this.no_peer_retry = None;
            }
            let mut guard = ready!(this.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard
                .try_io(|fd| nix::unistd::read(fd.get_ref(), unfilled).map_err(io::Error::from))
            {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // No client has the slave open (never opened, or closed): wait for one.
                Ok(Err(e)) if e.raw_os_error() == Some(Errno::EIO as i32) => {
                    guard.clear_ready();
                    this.no_peer_retry = Some(Box::pin(tokio::time::sleep(NO_PEER_RETRY)));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => {}
            }
        }
    }
}

impl AsyncWrite for PtyMaster {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            let mut guard = ready!(this.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), buf).map_err(io::Error::from))
            {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => {}
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsFd for PtyMaster {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.get_ref().as_fd()
    }
}

/// A stable path (a symlink) in front of changing pty slave paths, like
/// `/dev/serial/by-id/…` in front of `/dev/ttyUSBn`.
#[derive(Debug, Clone)]
pub struct PtyLink {
    link: PathBuf,
}

impl PtyLink {
    /// A link at `link` (not created until [`point_to`](Self::point_to)).
    pub fn new(link: impl Into<PathBuf>) -> Self {
        Self { link: link.into() }
    }

    /// The stable path the client opens.
    pub fn path(&self) -> &Path {
        &self.link
    }

    /// Atomically (re)points the link at `master`'s slave (create a temporary link, rename
    /// over), so a client never sees a half-made link.
    pub fn point_to(&self, master: &PtyMaster) -> io::Result<()> {
        let mut tmp = self.link.clone().into_os_string();
        tmp.push(".new");
        let tmp = PathBuf::from(tmp);
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::os::unix::fs::symlink(master.slave_path(), &tmp).map_err(|e| {
            io::Error::new(e.kind(), format!("creating symlink {}: {e}", tmp.display()))
        })?;
        std::fs::rename(&tmp, &self.link).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("renaming symlink to {}: {e}", self.link.display()),
            )
        })
    }

    /// Removes the link (a missing link is fine).
    pub fn remove(&self) -> io::Result<()> {
        match std::fs::remove_file(&self.link) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io::Error::new(
                e.kind(),
                format!("removing symlink {}: {e}", self.link.display()),
            )),
            _ => Ok(()),
        }
    }
}

/// A pluggable virtual serial port: a [`PtyMaster`] behind a [`PtyLink`].
///
/// [`unplug`](Self::unplug) closes the master and removes the link;
/// [`replug`](Self::replug) opens a new pair and points the link at it. The client always
/// opens [`path`](Self::path).
#[derive(Debug)]
pub struct VirtualPort {
    link: PtyLink,
    master: Option<PtyMaster>,
}

impl VirtualPort {
    /// Plugs a new port in at `link` (the symlink is created, or replaced).
    pub fn new(link: impl Into<PathBuf>) -> io::Result<Self> {
        let mut port = Self {
            link: PtyLink::new(link),
            master: None,
        };
        port.replug()?;
        Ok(port)
    }

    /// The stable path for the client.
    pub fn path(&self) -> &Path {
        self.link.path()
    }

    /// The master, `None` while unplugged.
    pub fn master(&mut self) -> Option<&mut PtyMaster> {
        self.master.as_mut()
    }

    /// Takes the master out (e.g. to move it into a task); the port counts as unplugged but
    /// the link stays until [`unplug`](Self::unplug) or [`replug`](Self::replug).
    pub fn take_master(&mut self) -> Option<PtyMaster> {
        self.master.take()
    }

    /// Removes the link, then closes the master (the client sees a hang-up).
    ///
    /// In this order, the link never points at a closed pty: the kernel reuses a closed pty's
    /// number for the next pair opened anywhere in the process (e.g. by a concurrent test), so
    /// a client reopening the link in between would be connected to someone else's pty.
    pub fn unplug(&mut self) -> io::Result<()> {
        let removed = self.link.remove();
        self.master = None;
        removed
    }

    /// Opens a new pair, points the link at it, then closes the old master (if any).
    ///
    /// The new pair is opened while the old one is still open, so it gets a different
    /// `/dev/pts/N`, and the link moves from one live pty to the other (see
    /// [`unplug`](Self::unplug) for why it must never point at a closed one).
    pub fn replug(&mut self) -> io::Result<&mut PtyMaster> {
        let master = PtyMaster::open()?;
        self.link.point_to(&master)?;
        let old = self.master.take();
        let master = self.master.insert(master);
        drop(old);
        Ok(master)
    }
}

impl Drop for VirtualPort {
    fn drop(&mut self) {
        // Best effort: a stale link to a dead pty only confuses a later test run.
        let _ = self.link.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_link_never_points_at_a_closed_pty() {
        let dir = tempfile::tempdir().unwrap();
        let mut port = VirtualPort::new(dir.path().join("ttyBUS")).unwrap();
        let first = std::fs::read_link(port.path()).unwrap();
        port.replug().unwrap();
        let second = std::fs::read_link(port.path()).unwrap();
        // The new pair was opened while the old one was still open: a different number (the
        // kernel would otherwise hand the closed pty's number out again, here or to anyone),
        // and the link moved straight from the live old pty to the live new one.
        assert_ne!(first, second);
        assert!(second.exists(), "the link points at a live pty");
        // Unplugging removes the link before the pty closes: afterwards there is no link.
        port.unplug().unwrap();
        assert!(std::fs::symlink_metadata(port.path()).is_err());
        assert!(port.master().is_none());
    }
}
