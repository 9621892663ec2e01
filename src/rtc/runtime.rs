//! The tokio runtime for webrtc with one change: large UDP socket buffers (4 MiB unless
//! configured otherwise).
//!
//! webrtc 0.21 never sizes its sockets, so the kernel default receive buffer (~208 KB)
//! overflows under a 1 MiB+ SCTP window, and each drop costs SCTP its 1 s minimum RTO.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, Runtime,
    TokioRuntime,
};

/// Default size of each UDP socket's send and receive buffer. The kernel caps it at
/// `net.core.{r,w}mem_max` for unprivileged users, so root uses the FORCE variants.
pub const UDP_SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug)]
pub struct TunedRuntime {
    /// What to ask for on each socket; 0 leaves the kernel's default.
    pub buffer_bytes: usize,
}

impl Runtime for TunedRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        TokioRuntime.spawn(future)
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        if self.buffer_bytes > 0 {
            enlarge_buffers(&socket, self.buffer_bytes);
        }
        TokioRuntime.wrap_udp_socket(socket)
    }

    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> io::Result<Arc<dyn AsyncTcpListener>> {
        TokioRuntime.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        TokioRuntime.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        TokioRuntime.resolve_host(host)
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        TokioRuntime.sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        TokioRuntime.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        TokioRuntime.block_on(future)
    }

    fn name(&self) -> &'static str {
        "p2pd-tokio"
    }
}

fn enlarge_buffers(socket: &std::net::UdpSocket, bytes: usize) {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if !setsockopt_int(fd, force, size) {
            // Unprivileged: ask for what the sysctl allows; failure leaves the default.
            setsockopt_int(fd, plain, size);
        }
    }
    // Linux reports twice the usable size; less than asked means the sysctl capped us.
    let granted = getsockopt_int(fd, libc::SO_RCVBUF).unwrap_or(0) / 2;
    if (granted as usize) < bytes {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            tracing::warn!(
                granted_kib = granted / 1024,
                "UDP receive buffer limited by net.core.rmem_max, transfers will be slower: \
                 install systemd/sysctl.d/p2pd.conf (sysctl net.core.rmem_max=8388608 net.core.wmem_max=8388608)"
            );
        });
    }
}

fn getsockopt_int(fd: libc::c_int, option: libc::c_int) -> Option<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` is a socket the caller keeps open; value and len describe one c_int.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(value)
}

fn setsockopt_int(fd: libc::c_int, option: libc::c_int, value: libc::c_int) -> bool {
    // SAFETY: `fd` is a socket the caller keeps open; the value pointer and length describe
    // one live c_int.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}
