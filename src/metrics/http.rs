//! Just enough HTTP/1.1 for a scraper: find the end of a request head, decide what it
//! asks for, and write a whole response (always `Connection: close`). Pure: bytes in,
//! bytes out; the socket is `server`'s. No keep-alive, no bodies in requests, no chunking:
//! a Prometheus scrape is one `GET /metrics`, and anything else gets a short refusal.

/// Largest request head read; a longer one is refused (431). A scraper's is a few hundred
/// bytes.
pub const MAX_HEAD: usize = 8 * 1024;

/// The path the metrics live at (Prometheus' default `metrics_path`).
pub const METRICS_PATH: &str = "/metrics";

/// What a request head asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics`, or `HEAD /metrics` (`head_only`: the same headers, no body).
    Metrics {
        /// A `HEAD` request.
        head_only: bool,
    },
    /// Another path.
    NotFound,
    /// Another method.
    MethodNotAllowed,
    /// Not an HTTP/1.x request line.
    BadRequest,
}

/// Where the request head in `buf` ends (just past its blank line), once it has.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// What the request with head `head` asks for (its request line decides; headers are
/// ignored). A query string is allowed and ignored.
pub fn route(head: &[u8]) -> Route {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let Ok(line) = std::str::from_utf8(line) else {
        return Route::BadRequest;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Route::BadRequest;
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Route::MethodNotAllowed,
    };
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if path == METRICS_PATH {
        Route::Metrics { head_only }
    } else {
        Route::NotFound
    }
}

/// A status line with its reason phrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// 200.
    Ok,
    /// 400.
    BadRequest,
    /// 404.
    NotFound,
    /// 405.
    MethodNotAllowed,
    /// 431.
    HeadTooLarge,
    /// 500.
    InternalError,
    /// 503: the data path did not answer (it is stopping).
    Unavailable,
}

impl Code {
    fn line(self) -> &'static str {
        match self {
            Self::Ok => "200 OK",
            Self::BadRequest => "400 Bad Request",
            Self::NotFound => "404 Not Found",
            Self::MethodNotAllowed => "405 Method Not Allowed",
            Self::HeadTooLarge => "431 Request Header Fields Too Large",
            Self::InternalError => "500 Internal Server Error",
            Self::Unavailable => "503 Service Unavailable",
        }
    }
}

/// A whole response: status, headers and (unless `head_only`) `body`.
pub fn response(code: Code, content_type: &str, body: &str, head_only: bool) -> Vec<u8> {
    let allow = if code == Code::MethodNotAllowed {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut out = format!(
        "HTTP/1.1 {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        code.line(),
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// A refusal in plain text: what went wrong, and where the metrics are.
pub fn refusal(code: Code) -> Vec<u8> {
    let body = match code {
        Code::NotFound => format!("not found: the metrics are at {METRICS_PATH}\n"),
        Code::MethodNotAllowed => "only GET and HEAD are served\n".to_string(),
        Code::HeadTooLarge => format!("request head over {MAX_HEAD} bytes\n"),
        Code::Unavailable => "vmtun is stopping: no snapshot\n".to_string(),
        Code::InternalError => "the metrics could not be written\n".to_string(),
        Code::BadRequest | Code::Ok => "bad request\n".to_string(),
    };
    response(code, "text/plain; charset=utf-8", &body, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_is_routed_to_the_metrics() {
        let scrape = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9586\r\nAccept: text/plain\r\n\r\n";
        assert_eq!(head_end(scrape), Some(scrape.len()));
        assert_eq!(route(scrape), Route::Metrics { head_only: false });
        assert_eq!(
            route(b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Route::Metrics { head_only: true }
        );
    }

    #[test]
    fn anything_else_is_refused() {
        assert_eq!(head_end(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"), None);
        let cases: [(&[u8], Route); 7] = [
            (b"GET / HTTP/1.1\r\n\r\n", Route::NotFound),
            (b"GET /metricsx HTTP/1.1\r\n\r\n", Route::NotFound),
            (b"POST /metrics HTTP/1.1\r\n\r\n", Route::MethodNotAllowed),
            (b"GET /metrics\r\n\r\n", Route::BadRequest),
            (b"GET /metrics HTTP/2\r\n\r\n", Route::BadRequest),
            (b"GET metrics HTTP/1.1\r\n\r\n", Route::BadRequest),
            (b"\xff\xfe /metrics HTTP/1.1\r\n\r\n", Route::BadRequest),
        ];
        for (head, expected) in cases {
            assert_eq!(route(head), expected, "{}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn responses_carry_their_length_and_close() {
        let ok = String::from_utf8(response(Code::Ok, "text/plain", "a 1\n", false)).unwrap();
        assert_eq!(
            ok,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\nConnection: close\r\n\r\na 1\n"
        );
        let head = String::from_utf8(response(Code::Ok, "text/plain", "a 1\n", true)).unwrap();
        assert!(
            head.ends_with("Content-Length: 4\r\nConnection: close\r\n\r\n"),
            "{head}"
        );
        let refused = String::from_utf8(refusal(Code::MethodNotAllowed)).unwrap();
        assert!(
            refused.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{refused}"
        );
        assert!(refused.contains("\r\nAllow: GET, HEAD\r\n"), "{refused}");
    }
}
