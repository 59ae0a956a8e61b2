//! The `redis` backend. Each entry is a key that expires when it stops
//! mattering, and every write is announced on a pub/sub channel:
//!
//! - `{prefix}jti:{jti}` = the token's `exp`, expiring `expiry_grace` after it
//! - `{prefix}sid:{sid}` = the session's last `exp`, the same way
//! - `{prefix}sub:{sub}` = `before`, expiring `max_token_lifetime` after it
//! - channel `{prefix}revocations`: the entry as JSON (`{"jti": "...", "exp": N}`)
//!
//! Each gateway subscribes, then reads every key (SCAN) into its local
//! copy, applies the channel's messages as they come, and reads everything
//! again every `resync_interval` (which also catches keys written without a
//! message). A read only adds: a key Redis lost is not forgotten before its
//! entry stops mattering. A lost connection is retried with backoff, and
//! every reconnection reads everything again. Nothing here is on the request
//! path.

use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use redis::aio::MultiplexedConnection;

use super::{EntryFields, Revocations, Revoked, epoch_seconds};
use crate::config::RevocationConfig;

/// Any one Redis operation (connect, command, a SCAN page) takes at most this.
const TIMEOUT: Duration = Duration::from_secs(5);
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(10);
/// Keys per SCAN page and per MGET.
const BATCH: usize = 1000;

/// Sets a key unless it already holds a later time: a retried or reordered
/// write never moves a `sub` cut-off back or shortens an entry.
const SET_IF_LATER: &str = "local held = tonumber(redis.call('GET', KEYS[1])) \
    if held and held >= tonumber(ARGV[1]) then return 0 end \
    redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) return 1";

fn channel(prefix: &str) -> String {
    format!("{prefix}revocations")
}

/// The key, value and time to live (seconds) of an entry; `None` when it
/// no longer matters.
fn key_of(prefix: &str, revoked: &Revoked, config: &RevocationConfig) -> Option<(String, u64, u64)> {
    let ttl = revoked.until(config).checked_sub(epoch_seconds()).filter(|ttl| *ttl > 0)?;
    let (key, value) = match revoked {
        Revoked::Jti { jti, exp } => (format!("{prefix}jti:{jti}"), *exp),
        Revoked::Sid { sid, exp } => (format!("{prefix}sid:{sid}"), *exp),
        Revoked::Sub { sub, before } => (format!("{prefix}sub:{sub}"), *before),
    };
    Some((key, value, ttl))
}

/// The entry a key and its value stand for. A key's presence revokes: an
/// issuer that wrote something other than a time (`SET p:jti:X 1 EX 3600`,
/// a common denylist habit) or a time already past still means "revoked",
/// for the longest a token lives (a `sub`: everything issued until now).
fn entry_of(prefix: &str, key: &str, value: &str, config: &RevocationConfig) -> Option<Revoked> {
    let (kind, id) = key.strip_prefix(prefix)?.split_once(':')?;
    let id = id.to_owned();
    let now = epoch_seconds();
    let value = value.trim().parse::<u64>().ok();
    let exp = || {
        let grace = config.expiry_grace.as_secs();
        value.filter(|exp| exp.saturating_add(grace) >= now).unwrap_or(now + config.max_token_lifetime.as_secs())
    };
    match kind {
        "jti" => Some(Revoked::Jti { jti: id, exp: exp() }),
        "sid" => Some(Revoked::Sid { sid: id, exp: exp() }),
        "sub" => Some(Revoked::Sub { sub: id, before: value.unwrap_or(now) }),
        _ => None,
    }
}

async fn timed<T>(what: &str, operation: impl Future<Output = redis::RedisResult<T>>) -> Result<T, String> {
    match tokio::time::timeout(TIMEOUT, operation).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(format!("redis {what}: {error}")),
        Err(_) => Err(format!("redis {what}: no answer within {TIMEOUT:?}")),
    }
}

/// Sets the entry's key (unless it holds a later time) and announces it,
/// in one transaction.
pub(super) async fn write(url: &str, prefix: &str, revoked: &Revoked, config: &RevocationConfig) -> Result<(), String> {
    let Some((key, value, ttl)) = key_of(prefix, revoked, config) else {
        return Ok(());
    };
    let message = serde_json::to_string(&revoked.fields()).map_err(|e| e.to_string())?;
    let client = redis::Client::open(url).map_err(|e| format!("redis: {e}"))?;
    let mut connection = timed("connect", client.get_multiplexed_async_connection()).await?;
    let mut pipe = redis::pipe();
    pipe.atomic().cmd("EVAL").arg(SET_IF_LATER).arg(1).arg(&key).arg(value).arg(ttl).ignore();
    pipe.cmd("PUBLISH").arg(channel(prefix)).arg(message).ignore();
    timed("write", pipe.query_async::<()>(&mut connection)).await
}

/// Keeps `revocations` in step with Redis, reconnecting forever.
pub(super) async fn sync(revocations: &Revocations, url: &str, prefix: &str) {
    let client = match redis::Client::open(url) {
        Ok(client) => client,
        // validation opened it once already
        Err(error) => return tracing::error!(%error, "revocation list: bad redis url"),
    };
    let mut failures = 0u32;
    loop {
        let error = session(revocations, &client, prefix, &mut failures).await;
        failures += 1;
        let retry = backoff(failures);
        tracing::warn!(%error, retry_in = ?retry, "revocation list: redis unavailable; serving the local copy");
        tokio::time::sleep(retry).await;
    }
}

/// One connection's life: subscribe, read everything, then follow the
/// channel and read everything again every `resync_interval`. Returns why
/// it ended.
async fn session(revocations: &Revocations, client: &redis::Client, prefix: &str, failures: &mut u32) -> String {
    let result: Result<(), String> = async {
        let mut pubsub = timed("connect", client.get_async_pubsub()).await?;
        timed("subscribe", pubsub.subscribe(channel(prefix))).await?;
        let mut connection = timed("connect", client.get_multiplexed_async_connection()).await?;
        // subscribed first: a write during this read arrives as a message too
        resync(revocations, &mut connection, prefix).await?;
        tracing::info!(entries = revocations.list.load().len(), "revocation list synced from redis");
        *failures = 0;
        let mut messages = pubsub.on_message();
        let mut tick = tokio::time::interval(revocations.config.resync_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else {
                        return Err("the subscription ended".to_owned());
                    };
                    // what else has arrived joins this one in a single swap
                    let mut batch = vec![message];
                    while let Some(Some(more)) = messages.next().now_or_never() {
                        batch.push(more);
                    }
                    let entries: Vec<Revoked> = batch.iter().filter_map(|m| parse_message(m.get_payload_bytes())).collect();
                    revocations.add(&entries);
                }
                _ = tick.tick() => resync(revocations, &mut connection, prefix).await?,
            }
        }
    }
    .await;
    match result {
        Ok(()) => "the connection ended".to_owned(),
        Err(error) => error,
    }
}

fn parse_message(payload: &[u8]) -> Option<Revoked> {
    let parsed = serde_json::from_slice::<EntryFields>(payload).map_err(|e| e.to_string()).and_then(Revoked::try_from);
    parsed.map_err(|error| tracing::warn!(%error, "revocation list: a channel message was ignored")).ok()
}

/// Reads every entry under `prefix` into the local copy (see `merge`).
async fn resync(revocations: &Revocations, connection: &mut MultiplexedConnection, prefix: &str) -> Result<(), String> {
    let pattern = format!("{prefix}*");
    let mut cursor = 0u64;
    let mut entries = Vec::new();
    loop {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(BATCH);
        // bytes, not strings: one key or value that is not UTF-8 is skipped,
        // never the whole read (which would leave the copy to go stale)
        let (next, keys): (u64, Vec<Vec<u8>>) = timed("scan", scan.query_async(connection)).await?;
        let keys: Vec<Vec<u8>> = keys.into_iter().filter(|key| *key != channel(prefix).as_bytes()).collect();
        if !keys.is_empty() {
            let values: Vec<Option<Vec<u8>>> =
                timed("mget", redis::cmd("MGET").arg(&keys).query_async(connection)).await?;
            for (key, value) in keys.iter().zip(values) {
                // nil: the key expired between SCAN and MGET
                let Some(value) = value else { continue };
                let key = String::from_utf8_lossy(key);
                let value = String::from_utf8_lossy(&value);
                match entry_of(prefix, &key, &value, &revocations.config) {
                    Some(entry) => entries.push(entry),
                    None => tracing::warn!(%key, "revocation list: a key under the prefix was not understood"),
                }
            }
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    revocations.merge(&entries);
    Ok(())
}

/// 100 ms, 200 ms, 400 ms, ... capped at 10 s, each somewhere in its upper half.
fn backoff(failures: u32) -> Duration {
    let delay = FIRST_RETRY.saturating_mul(1 << failures.saturating_sub(1).min(16)).min(MAX_RETRY);
    delay.mul_f64(0.5 + fastrand::f64() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RevocationBackend;

    #[test]
    fn keys_name_the_entry_and_expire_when_it_stops_mattering() {
        let config = RevocationConfig {
            backend: RevocationBackend::Redis { url: "redis://127.0.0.1".into(), key_prefix: "p:".into() },
            ..crate::revocation::tests::config()
        };
        let now = epoch_seconds();
        let jti = Revoked::Jti { jti: "a:b".into(), exp: now + 70 };
        let (key, value, ttl) = key_of("p:", &jti, &config).unwrap();
        assert_eq!((key.as_str(), value), ("p:jti:a:b", now + 70));
        assert!((99..=100).contains(&ttl), "{ttl}");
        assert_eq!(entry_of("p:", &key, &value.to_string(), &config), Some(jti));
        let sub = Revoked::Sub { sub: "alice".into(), before: now };
        let (key, _, ttl) = key_of("p:", &sub, &config).unwrap();
        assert_eq!((key.as_str(), ttl), ("p:sub:alice", 3630));
        assert_eq!(key_of("p:", &Revoked::Sid { sid: "s".into(), exp: now - 31 }, &config), None);
        assert_eq!(entry_of("p:", "p:other:x", "1", &config), None);
        assert_eq!(entry_of("p:", "q:jti:x", "1", &config), None);
        // a key written with another value, or a past time, still revokes
        let lifetime = now + 3600;
        for value in ["1", "yes", "", "1.5"] {
            let entry = entry_of("p:", "p:jti:x", value, &config);
            assert!(matches!(entry, Some(Revoked::Jti { exp, .. }) if exp >= lifetime), "{value:?}: {entry:?}");
        }
        let entry = entry_of("p:", "p:sub:bob", "soon", &config);
        assert!(matches!(entry, Some(Revoked::Sub { before, .. }) if before >= now), "{entry:?}");
    }
}
