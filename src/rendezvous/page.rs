//! The browser page, served by the rendezvous on its own address: a request that is not a
//! WebSocket upgrade gets the page's files (plain HTTP, or HTTPS when the rendezvous has
//! TLS). The request head is read here, then replayed to the WebSocket handshake when it
//! is one. Deciding what a head asks for is pure.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::words::WORDS;

/// A request head larger than this is refused (a WebSocket upgrade is a few hundred bytes).
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

const INDEX: &str = include_str!("page/index.html");
/// The page's own modules, by path.
const MODULES: [(&str, &str); 7] = [
    ("/app.js", include_str!("page/app.js")),
    ("/ui.js", include_str!("page/ui.js")),
    ("/rendezvous.js", include_str!("page/rendezvous.js")),
    ("/link.js", include_str!("page/link.js")),
    ("/send.js", include_str!("page/send.js")),
    ("/receive.js", include_str!("page/receive.js")),
    ("/names.js", include_str!("page/names.js")),
];
const LIB: &str = include_str!("page/lib.mjs");
const WORKER: &str = include_str!("page/sw.js");

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// A WebSocket upgrade: hand the connection to the rendezvous protocol.
    WebSocket,
    /// A plain GET (or HEAD) of this path.
    Get { path: String, head_only: bool },
    /// Anything else: answered 400 or 405 and closed.
    Bad(u16),
}

/// Where the head ends (after `\r\n\r\n`), if it has.
pub fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
}

pub fn parse_head(head: &[u8]) -> Head {
    let Ok(text) = std::str::from_utf8(head) else {
        return Head::Bad(400);
    };
    let mut lines = text.split("\r\n");
    let mut request = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target), Some(version)) =
        (request.next(), request.next(), request.next())
    else {
        return Head::Bad(400);
    };
    if !version.starts_with("HTTP/1.") {
        return Head::Bad(400);
    }
    let (mut upgrade, mut origin, mut host) = (false, None, None);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade |= value.eq_ignore_ascii_case("websocket");
        } else if name.eq_ignore_ascii_case("origin") {
            origin = Some(value);
        } else if name.eq_ignore_ascii_case("host") {
            host = Some(value);
        }
    }
    if upgrade {
        // Daemons send no Origin; a browser always does. Only the page this server serves
        // may open the rendezvous from a browser: any other site could otherwise enlist
        // its visitors to fill the server (issue #23).
        return match origin {
            None => Head::WebSocket,
            Some(origin) if same_origin(origin, host) => Head::WebSocket,
            Some(_) => Head::Bad(403),
        };
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Head::Bad(405),
    };
    // The query never matters; a fragment never arrives.
    let path = target.split('?').next().unwrap_or_default().to_owned();
    Head::Get { path, head_only }
}

/// Whether a browser's `Origin` names the host the request was sent to (`Host`), whatever
/// the scheme (a proxy in front may terminate TLS).
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let authority = origin
        .split_once("://")
        .map(|(_, rest)| rest.trim_end_matches('/'));
    match (authority, host) {
        (Some(authority), Some(host)) => !host.is_empty() && authority.eq_ignore_ascii_case(host),
        _ => false,
    }
}

/// How the page is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    /// Also tells the browser to come back only over HTTPS (HSTS): a page fetched once
    /// over plain HTTP on a hostile network could be any code at all.
    Https,
}

/// The whole HTTP response for `head` (not a WebSocket upgrade).
pub fn respond(head: &Head, scheme: Scheme) -> Vec<u8> {
    let (status, kind, body): (&str, &str, std::borrow::Cow<'static, str>) = match head {
        Head::Get { path, .. } => match path.as_str() {
            "/" | "/index.html" => ("200 OK", "text/html; charset=utf-8", INDEX.into()),
            module if MODULES.iter().any(|(path, _)| *path == module) => (
                "200 OK",
                "text/javascript; charset=utf-8",
                MODULES
                    .iter()
                    .find(|(path, _)| *path == module)
                    .map(|(_, text)| *text)
                    .unwrap_or_default()
                    .into(),
            ),
            "/lib.mjs" => ("200 OK", "text/javascript; charset=utf-8", LIB.into()),
            "/sw.js" => ("200 OK", "text/javascript; charset=utf-8", WORKER.into()),
            "/words.json" => (
                "200 OK",
                "application/json",
                serde_json::to_string(&WORDS.as_slice())
                    .unwrap_or_default()
                    .into(),
            ),
            _ => (
                "404 Not Found",
                "text/plain; charset=utf-8",
                "not found\n".into(),
            ),
        },
        Head::Bad(403) => (
            "403 Forbidden",
            "text/plain; charset=utf-8",
            "the rendezvous accepts browsers only from its own page\n".into(),
        ),
        Head::Bad(405) => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET\n".into(),
        ),
        _ => (
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "bad request\n".into(),
        ),
    };
    let head_only = matches!(
        head,
        Head::Get {
            head_only: true,
            ..
        }
    );
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
         Cache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\n\
         Referrer-Policy: no-referrer\r\nX-Frame-Options: DENY\r\n\
         Content-Security-Policy: default-src 'self'; connect-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'\r\n\
         {hsts}Connection: close\r\n\r\n",
        body.len(),
        hsts = match scheme {
            Scheme::Https => "Strict-Transport-Security: max-age=31536000\r\n",
            Scheme::Http => "",
        }
    )
    .into_bytes();
    if !head_only {
        response.extend_from_slice(body.as_bytes());
    }
    response
}

/// The path a load balancer checks (`GET /healthz`): 200 while this instance can pair
/// daemons, 503 saying why while it cannot (its store is unreachable).
pub const HEALTH_PATH: &str = "/healthz";

/// Whether `head` is a health check.
pub fn is_health_check(head: &Head) -> bool {
    matches!(head, Head::Get { path, .. } if path == HEALTH_PATH)
}

/// The answer to a health check: `problem` is why this instance cannot serve, if so.
pub fn health(problem: Option<&str>, head_only: bool) -> Vec<u8> {
    let (status, body) = match problem {
        None => ("200 OK", "ok\n".to_owned()),
        Some(problem) => (
            "503 Service Unavailable",
            format!(
                "unavailable: {}\n",
                crate::terminal::escape_controls(problem)
            ),
        ),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        response.extend_from_slice(body.as_bytes());
    }
    response
}

/// Reads a request head (at most [`MAX_HEAD_BYTES`]); `None` if the peer closed or sent
/// more without ending it. Returns everything read, which may run past the head.
pub async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Option<(Vec<u8>, usize)> {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buffer) {
            return Some((buffer, end));
        }
        if buffer.len() > MAX_HEAD_BYTES {
            return None;
        }
    }
}

/// Answers a page request and closes.
pub async fn serve<S: AsyncWrite + Unpin>(stream: &mut S, head: &Head, scheme: Scheme) {
    let _ = stream.write_all(&respond(head, scheme)).await;
    let _ = stream.shutdown().await;
}

/// A stream that first yields bytes already read from it.
pub struct Rewound<S> {
    read: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Rewound<S> {
    pub fn new(read: Vec<u8>, inner: S) -> Rewound<S> {
        Rewound { read, at: 0, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewound<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.at < self.read.len() {
            let n = buf.remaining().min(self.read.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.read[at..at + n]);
            self.at += n;
            if self.at == self.read.len() {
                self.read = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewound<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upgrade_goes_to_the_websocket_and_a_get_to_the_page() {
        let upgrade = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: WebSocket\r\nSec-WebSocket-Key: k\r\n\r\n";
        assert_eq!(parse_head(upgrade), Head::WebSocket);
        let own = b"GET / HTTP/1.1\r\nHost: rv.example:8443\r\nOrigin: https://RV.example:8443\r\nUpgrade: websocket\r\n\r\n";
        assert_eq!(parse_head(own), Head::WebSocket);
        for foreign in [
            &b"GET / HTTP/1.1\r\nHost: rv.example\r\nOrigin: https://evil.example\r\nUpgrade: websocket\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: rv.example\r\nOrigin: https://rv.example:444\r\nUpgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: rv.example\r\nOrigin: null\r\nUpgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.1\r\nOrigin: https://rv.example\r\nUpgrade: websocket\r\n\r\n",
        ] {
            assert_eq!(parse_head(foreign), Head::Bad(403), "{}", String::from_utf8_lossy(foreign));
        }
        assert_eq!(
            parse_head(b"GET /app.js?v=1 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Head::Get {
                path: "/app.js".into(),
                head_only: false
            }
        );
        assert_eq!(parse_head(b"POST / HTTP/1.1\r\n\r\n"), Head::Bad(405));
        assert_eq!(parse_head(b"nonsense\r\n\r\n"), Head::Bad(400));
        assert_eq!(parse_head(&[0xff, 0xfe, b'\r', b'\n']), Head::Bad(400));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nextra"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }

    #[test]
    fn the_page_its_scripts_and_the_word_list_are_served_and_nothing_else() {
        let get = |path: &str| {
            String::from_utf8(respond(
                &Head::Get {
                    path: path.into(),
                    head_only: false,
                },
                Scheme::Http,
            ))
            .unwrap()
        };
        assert!(get("/").starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/html"));
        for (path, _) in MODULES {
            assert!(get(path).contains("text/javascript"), "{path}");
        }
        assert!(get("/lib.mjs").contains("text/javascript"));
        assert!(get("/sw.js").contains("text/javascript"));
        let words = get("/words.json");
        let body = words.split("\r\n\r\n").nth(1).unwrap();
        let list: Vec<String> = serde_json::from_str(body).unwrap();
        assert_eq!(list.len(), 256);
        assert_eq!(list[0], WORDS[0]);
        assert!(get("/../etc/passwd").starts_with("HTTP/1.1 404"));
        assert!(get("/").contains("Content-Security-Policy: default-src 'self'"));
        let head = String::from_utf8(respond(
            &Head::Get {
                path: "/".into(),
                head_only: true,
            },
            Scheme::Https,
        ))
        .unwrap();
        assert!(head.ends_with("\r\n\r\n"));
        assert!(head.contains("Strict-Transport-Security: max-age="));
        assert!(
            !get("/").contains("Strict-Transport-Security"),
            "not over HTTP"
        );
    }

    #[test]
    fn a_health_check_says_200_or_503_and_why() {
        let head = parse_head(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(is_health_check(&head));
        assert!(!is_health_check(&parse_head(b"GET / HTTP/1.1\r\n\r\n")));
        let ok = String::from_utf8(health(None, false)).unwrap();
        assert!(
            ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.ends_with("\r\n\r\nok\n"),
            "{ok}"
        );
        let down = String::from_utf8(health(Some("redis refused the connection"), false)).unwrap();
        assert!(down.starts_with("HTTP/1.1 503 "), "{down}");
        assert!(
            down.ends_with("unavailable: redis refused the connection\n"),
            "{down}"
        );
        assert!(
            String::from_utf8(health(None, true))
                .unwrap()
                .ends_with("\r\n\r\n")
        );
    }

    #[tokio::test]
    async fn a_rewound_stream_yields_what_was_read_first() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b"world").await.unwrap();
        drop(a);
        let mut rewound = Rewound::new(b"hello ".to_vec(), b);
        let mut all = String::new();
        rewound.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }
}
