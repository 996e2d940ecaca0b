//! Sign-in over raw HTTP/1.1: `POST /signin` with `name=<name>`, and the `name` cookie out of
//! the `302`'s `Set-Cookie`.
//!
//! Connections are kept alive and reused for the next sign-in (fewer ephemeral ports, no
//! connect per user); a response's body is skipped by `Content-Length` or chunked encoding,
//! and a `Connection: close` (or an error) makes the next sign-in open a new connection.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Where and how to reach one server node.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Node {
    /// The URL as given (`http://127.0.0.1:3000`).
    pub url: String,
    /// Its address.
    pub addr: SocketAddr,
    /// The `Host` header (`127.0.0.1:3000`, as written in the URL).
    pub host: String,
    /// The `Origin` header sent on sign-in and upgrade, if any.
    pub origin: Option<String>,
}

/// Opens a TCP connection to `addr`, from `source` when given (a local address such as
/// 127.0.0.2, each with its own ephemeral ports).
pub async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The head of an HTTP response, as far as sign-in needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// Bytes of head, blank line included.
    pub head_len: usize,
    /// `Content-Length`, if given.
    pub content_length: Option<usize>,
    /// `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// `Connection: close`, or HTTP/1.0.
    pub close: bool,
    /// The value of the `name` cookie set, if any (`name=<value>` without attributes).
    pub cookie: Option<String>,
}

/// Parses a response head; `None` until the blank line has arrived.
pub fn parse_head(buf: &[u8]) -> Option<ResponseHead> {
    let (status, head_len) = crate::wire::parse_response_head(buf)?;
    let text = String::from_utf8_lossy(&buf[..head_len]);
    let mut head = ResponseHead {
        status,
        head_len,
        content_length: None,
        chunked: false,
        close: text.starts_with("HTTP/1.0"),
        cookie: None,
    };
    for line in text.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => head.content_length = value.parse().ok(),
            "transfer-encoding" => head.chunked = value.to_ascii_lowercase().contains("chunked"),
            "connection" => head.close = value.eq_ignore_ascii_case("close"),
            "set-cookie" => {
                let pair = value.split(';').next().unwrap_or("").trim();
                if pair.starts_with("name=") && pair.len() > 5 {
                    head.cookie = Some(pair.to_owned());
                }
            }
            _ => {}
        }
    }
    Some(head)
}

/// The length of a complete chunked body at the start of `buf` (trailer and final blank line
/// included); `None` while incomplete or malformed.
pub fn chunked_len(buf: &[u8]) -> Option<usize> {
    let mut pos = 0;
    loop {
        let line_end = pos + memchr::memmem::find(&buf[pos..], b"\r\n")?;
        let size_text = std::str::from_utf8(&buf[pos..line_end]).ok()?;
        let size_text = size_text.split(';').next()?.trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        pos = line_end + 2;
        if size == 0 {
            // Trailers, then a blank line.
            loop {
                let end = pos + memchr::memmem::find(&buf[pos..], b"\r\n")?;
                let empty = end == pos;
                pos = end + 2;
                if empty {
                    return Some(pos);
                }
            }
        }
        pos = pos.checked_add(size)?.checked_add(2)?;
        if pos > buf.len() {
            return None;
        }
    }
}

/// Why a sign-in failed; the text is the reason counted in the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigninError(pub String);

/// A keep-alive HTTP connection to one node, for sign-ins.
#[derive(Debug)]
pub struct Client {
    node: Node,
    source: Option<IpAddr>,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    timeout: Duration,
}

impl Client {
    /// A client for `node`, connecting from `source` when given.
    pub fn new(node: Node, source: Option<IpAddr>, timeout: Duration) -> Self {
        Self {
            node,
            source,
            stream: None,
            buf: Vec::with_capacity(4096),
            timeout,
        }
    }

    /// Signs `name` in and returns `name=<value>` for the `Cookie` header. Retries once on a
    /// fresh connection when a kept-alive one turns out closed.
    pub async fn signin(&mut self, name: &str) -> Result<String, SigninError> {
        let reused = self.stream.is_some();
        match tokio::time::timeout(self.timeout, self.try_signin(name)).await {
            Ok(Ok(cookie)) => Ok(cookie),
            Ok(Err(Attempt::Refused(error))) => Err(error),
            Ok(Err(Attempt::Io(error))) if reused => {
                self.stream = None;
                match tokio::time::timeout(self.timeout, self.try_signin(name)).await {
                    Ok(Ok(cookie)) => Ok(cookie),
                    Ok(Err(Attempt::Refused(error))) => Err(error),
                    Ok(Err(Attempt::Io(_))) => Err(SigninError(format!("signin: {error}"))),
                    Err(_) => Err(SigninError("signin: timeout".to_owned())),
                }
            }
            Ok(Err(Attempt::Io(error))) => Err(SigninError(format!("signin: {error}"))),
            Err(_) => {
                self.stream = None;
                Err(SigninError("signin: timeout".to_owned()))
            }
        }
    }

    async fn try_signin(&mut self, name: &str) -> Result<String, Attempt> {
        if self.stream.is_none() {
            self.stream = Some(connect(self.node.addr, self.source).await?);
        }
        let stream = self.stream.as_mut().expect("connected above");
        let body = format!("name={}", form_encode(name));
        let mut request = format!(
            "POST /signin HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            self.node.host,
            body.len()
        );
        if let Some(origin) = &self.node.origin {
            request.push_str("Origin: ");
            request.push_str(origin);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        request.push_str(&body);
        stream.write_all(request.as_bytes()).await?;

        self.buf.clear();
        let head = loop {
            if let Some(head) = parse_head(&self.buf) {
                break head;
            }
            if read_more(stream, &mut self.buf).await? == 0 {
                self.stream = None;
                return Err(Attempt::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        };
        // Skip the body so the connection can carry the next request.
        let mut keep = !head.close;
        if head.chunked {
            while chunked_len(&self.buf[head.head_len..]).is_none() {
                if read_more(stream, &mut self.buf).await? == 0 {
                    keep = false;
                    break;
                }
            }
        } else if let Some(len) = head.content_length {
            while self.buf.len() < head.head_len + len {
                if read_more(stream, &mut self.buf).await? == 0 {
                    keep = false;
                    break;
                }
            }
        } else if !matches!(head.status, 204 | 304) {
            // No length: the body runs to the end of the connection.
            keep = false;
        }
        if !keep {
            self.stream = None;
        }
        match (head.status, head.cookie) {
            (302 | 303 | 200, Some(cookie)) => Ok(cookie),
            (429, _) => Err(Attempt::Refused(SigninError(
                "signin: 429 (raise CONFAB_SIGNINS_PER_MINUTE)".to_owned(),
            ))),
            (status, _) => Err(Attempt::Refused(SigninError(format!(
                "signin: {status} without a name cookie"
            )))),
        }
    }
}

/// One sign-in attempt's failure: the server said no, or the connection failed.
enum Attempt {
    Refused(SigninError),
    Io(std::io::Error),
}

impl From<std::io::Error> for Attempt {
    fn from(error: std::io::Error) -> Self {
        Self::Io(error)
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// `application/x-www-form-urlencoded` for a name (letters, digits and `-_.` pass as they are).
fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                out.push(char::from(byte));
            }
            b' ' => out.push('+'),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_confab_s_redirect() {
        let answer = b"HTTP/1.1 302 Found\r\nset-cookie: name=TAG+/=eyJpZCI6IjEifQ==; HttpOnly; SameSite=Lax; Path=/; Max-Age=2592000\r\nlocation: /\r\ncontent-length: 0\r\n\r\n";
        let head = parse_head(answer).unwrap();
        assert_eq!(head.status, 302);
        assert_eq!(head.head_len, answer.len());
        assert_eq!(head.content_length, Some(0));
        assert!(!head.close && !head.chunked);
        assert_eq!(head.cookie.as_deref(), Some("name=TAG+/=eyJpZCI6IjEifQ=="));
    }

    #[test]
    fn reads_node_s_chunked_redirect_and_ignores_other_cookies() {
        let answer = b"HTTP/1.1 302 Found\r\nSet-Cookie: other=1\r\nSet-Cookie: name=abc; Path=/; HttpOnly\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n0\r\n\r\n";
        let head = parse_head(answer).unwrap();
        assert!(head.chunked);
        assert_eq!(head.cookie.as_deref(), Some("name=abc"));
        assert_eq!(chunked_len(&answer[head.head_len..]), Some(5));
        let closing = parse_head(
            b"HTTP/1.1 400 Bad\r\nConnection: close\r\nSet-Cookie: name=; Max-Age=0\r\n\r\n",
        )
        .unwrap();
        assert!(closing.close);
        assert_eq!(closing.cookie, None);
        assert_eq!(parse_head(b"HTTP/1.1 302 Found\r\n"), None);
    }

    #[test]
    fn chunked_bodies_with_data_and_trailers() {
        let body =
            b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        assert_eq!(chunked_len(body), Some(body.len() - 4));
        for cut in 0..body.len() - 4 {
            assert_eq!(chunked_len(&body[..cut]), None, "cut at {cut}");
        }
        assert_eq!(chunked_len(b"zz\r\n"), None);
    }

    #[test]
    fn names_are_form_encoded() {
        assert_eq!(form_encode("cb0a-12"), "cb0a-12");
        assert_eq!(form_encode("a b&c=é"), "a+b%26c%3D%C3%A9");
    }
}
