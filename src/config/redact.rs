//! What the admin listener may show of a config: the file as written, with
//! any password in a URL replaced, and the file's hash.

use aws_lc_rs::digest;
use serde_json::Value;

use super::ConfigFile;

const REDACTED: &str = "REDACTED";

/// The file as JSON, keys left unset left out, with credentials in URLs
/// (`https://user:pass@host`, `redis://:pass@host`) redacted.
pub(super) fn file(file: &ConfigFile) -> Value {
    let mut value = serde_json::to_value(file).unwrap_or(Value::Null);
    redact(&mut value);
    value
}

fn redact(value: &mut Value) {
    match value {
        Value::String(text) => {
            if let Some(redacted) = without_password(text) {
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

/// `text` with the password of its URL replaced, if it is a URL with one.
fn without_password(text: &str) -> Option<String> {
    let mut url = reqwest::Url::parse(text).ok()?;
    url.password()?;
    url.set_password(Some(REDACTED)).ok()?;
    Some(url.to_string())
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    digest::digest(&digest::SHA256, bytes).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn passwords_in_urls_are_redacted() {
        let mut value =
            json!({"a": ["https://u:secret@idp.test/jwks", "https://idp.test/x", "plain"], "b": 3, "c": null});
        redact(&mut value);
        assert_eq!(value, json!({"a": ["https://u:REDACTED@idp.test/jwks", "https://idp.test/x", "plain"], "b": 3}));
        assert_eq!(sha256_hex(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }
}
