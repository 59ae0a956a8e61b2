//! The one canonical form of a request path, used both to match routes and
//! to build the upstream target, so the upstream always receives exactly
//! the path that was authorised.
//!
//! Percent-encoded unreserved characters are decoded (`/%61dmin` is
//! `/admin`), other escapes are kept with uppercase hex, repeated slashes
//! are merged and dot segments removed (RFC 3986 §5.2.4). What could mean
//! something else upstream is refused: encoded `/`, `\`, `.` or NUL, a raw
//! `\`, and malformed escapes. `;` is an ordinary character and matching
//! stays case-sensitive.

use std::borrow::Cow;

/// Why a path was refused (400).
pub(crate) type PathError = &'static str;

pub(crate) fn canonicalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err("the request target must be an absolute path");
    }
    if is_canonical(path) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    // `..;x` is `..` to Tomcat, Jetty and Spring, which drop `;` parameters
    if decoded.split('/').any(|segment| segment.contains(';') && matches!(segment.split(';').next(), Some("." | "..")))
    {
        return Err("a dot segment with parameters in path");
    }
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

/// True for the common path that needs no work: no escapes, no backslash,
/// no empty or dot segments.
fn is_canonical(path: &str) -> bool {
    let bytes = path.as_bytes();
    !bytes.iter().any(|&b| b == b'%' || b == b'\\') && !bytes.windows(2).any(|w| w == b"//" || w == b"/.")
}

fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err("backslash in path"),
            b'%' => {
                let byte = bytes
                    .get(i + 1..i + 3)
                    .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok())
                    .ok_or("malformed percent-encoding in path")?;
                match byte {
                    b'/' | b'\\' | b'.' | 0 => return Err("encoded '/', '\\', '.' or NUL in path"),
                    b if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'~' => {
                        out.push(char::from(b));
                    }
                    b => out.push_str(&format!("%{b:02X}")),
                }
                i += 3;
            }
            _ => {
                // copy the run up to the next special byte in one go
                let end = bytes[i..].iter().position(|&b| b == b'%' || b == b'\\').map_or(bytes.len(), |n| i + n);
                out.push_str(&path[i..end]);
                i = end;
            }
        }
    }
    // `%252e` is a dot to an upstream that decodes twice; checked on the
    // result, as decoding can complete one (`%252%65`)
    let doubly = out.as_bytes().windows(5).any(|w| w.starts_with(b"%25") && is_refused_escape(Some(&w[3..])));
    if doubly {
        return Err("a doubly encoded '/', '\\', '.' or NUL in path");
    }
    Ok(out)
}

/// `2E`, `2F`, `5C` or `00`, in either case: what `%` must not introduce.
fn is_refused_escape(hex: Option<&[u8]>) -> bool {
    let Some([high, low]) = hex else {
        return false;
    };
    matches!([*high, low.to_ascii_uppercase()], [b'2', b'E' | b'F'] | [b'5', b'C'] | [b'0', b'0'])
}

/// Merges repeated slashes and resolves `.` and `..` (never above the root).
/// A trailing slash, or a path ending in a dot segment, ends with `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split('/').skip(1) {
        trailing_slash = matches!(segment, "" | "." | "..");
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            segment => segments.push(segment),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_canonical_paths_alone() {
        for path in ["/", "/a/b", "/a/b/", "/a..b", "/.well-known/x", "/a;b=1/c", "/a%20b", "/ADMIN", "/a%2541"] {
            assert_eq!(canonicalize(path).unwrap(), path, "{path}");
        }
        assert!(matches!(canonicalize("/a/b").unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn resolves_what_upstreams_would_resolve() {
        let cases = [
            ("/%61dmin/x", "/admin/x"),
            ("/%7Euser/%2D%5F", "/~user/-_"),
            ("//admin///x", "/admin/x"),
            ("/a/./b", "/a/b"),
            ("/a/../admin", "/admin"),
            ("/../../admin", "/admin"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/a/b/", "/a/b/"),
            ("/a%c3%a9", "/a%C3%A9"),
            ("/a%20b/../c", "/c"),
            ("/.", "/"),
            ("//", "/"),
        ];
        for (path, canonical) in cases {
            assert_eq!(canonicalize(path).unwrap(), canonical, "{path}");
        }
    }

    #[test]
    fn refuses_what_could_mean_something_else() {
        for path in
            ["/a%2Fb", "/a%2fb", "/a%5Cb", "/%2e%2e/x", "/a%2E", "/a%00", "/a\\b", "/a%", "/a%4", "/a%zz", "*", "x/y"]
        {
            assert!(canonicalize(path).is_err(), "{path}");
        }
    }
}
