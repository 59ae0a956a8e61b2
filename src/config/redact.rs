//! What the admin listener may show of a config: the file as written, with
//! the credentials a URL can carry replaced, and the file's hash.

use aws_lc_rs::digest;
use serde_json::Value;

use super::ConfigFile;

const REDACTED: &str = "REDACTED";

/// The file as JSON, keys left unset left out, with credentials in URLs
/// redacted: a password (`https://user:pass@host`, `redis://:pass@host`), a
/// user name standing alone (`https://TOKEN@host`, a token more often than
/// not), and every query value (`?api_key=...`).
pub(super) fn file(file: &ConfigFile) -> Value {
    let mut value = serde_json::to_value(file).unwrap_or(Value::Null);
    redact(&mut value);
    value
}

fn redact(value: &mut Value) {
    match value {
        Value::String(text) => {
            if let Some(redacted) = without_credentials(text) {
                *text = redacted;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        Value::Object(members) => {
            members.retain(|_, value| !value.is_null());
            members.values_mut().for_each(redact);
        }
        _ => {}
    }
}

/// `text` with its URL's credentials replaced, if it is a URL with any.
fn without_credentials(text: &str) -> Option<String> {
    let mut url = reqwest::Url::parse(text).ok()?;
    let mut changed = false;
    if url.password().is_some() {
        changed |= url.set_password(Some(REDACTED)).is_ok();
    } else if !url.username().is_empty() {
        changed |= url.set_username(REDACTED).is_ok();
    }
    if let Some(query) = url.query().filter(|query| !query.is_empty()) {
        // a part without `=` may be a bare token: it goes whole
        let parts: Vec<String> = query
            .split('&')
            .map(|part| match part.split_once('=') {
                Some((name, _)) => format!("{name}={REDACTED}"),
                None if part.is_empty() => String::new(),
                None => REDACTED.to_owned(),
            })
            .collect();
        url.set_query(Some(&parts.join("&")));
        changed = true;
    }
    changed.then(|| url.to_string())
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    digest::digest(&digest::SHA256, bytes).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn credentials_in_urls_are_redacted() {
        let mut value =
            json!({"a": ["https://u:secret@idp.test/jwks", "https://idp.test/x", "plain"], "b": 3, "c": null});
        redact(&mut value);
        assert_eq!(value, json!({"a": ["https://u:REDACTED@idp.test/jwks", "https://idp.test/x", "plain"], "b": 3}));
        let redacted = |text: &str| without_credentials(text);
        assert_eq!(redacted("https://TOKEN@idp.test/jwks").as_deref(), Some("https://REDACTED@idp.test/jwks"));
        assert_eq!(redacted("redis://:pass@cache:6379").as_deref(), Some("redis://:REDACTED@cache:6379"));
        assert_eq!(
            redacted("https://idp.test/jwks?api_key=s3cret&tenant=acme&&bare").as_deref(),
            Some("https://idp.test/jwks?api_key=REDACTED&tenant=REDACTED&&REDACTED")
        );
        assert_eq!(
            redacted("https://u@idp.test/?k=v").as_deref(),
            Some("https://REDACTED@idp.test/?k=REDACTED"),
            "both at once"
        );
        for untouched in ["https://idp.test/jwks", "https://idp.test/jwks?", "localhost:8443", "info,hyper=warn"] {
            assert_eq!(redacted(untouched), None, "{untouched}");
        }
        assert_eq!(sha256_hex(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }
}
