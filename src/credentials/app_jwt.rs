//! The app JWT: RS256, signed with the app key, reused until near its expiry.
//!
//! `iat` is set a minute in the past and `exp` nine minutes ahead: platforms of
//! this family refuse an `exp` more than ten minutes ahead of *their* clock,
//! so the documented `now + 10 min` breaks whenever the local clock runs fast.
//! A clock off by more than that is corrected with the platform's offset
//! (see `clock.rs`), kept here per app.

use super::clock;
use crate::config::AppConfig;
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

const BACKDATE: i64 = 60;
const LIFETIME: i64 = 540;
/// Re-sign when less than this is left, so a JWT never dies in flight.
const REUSE_MARGIN: Duration = Duration::from_secs(60);

#[derive(Serialize)]
struct Claims {
    /// The docs' example passes the app id as a string.
    iss: String,
    iat: i64,
    exp: i64,
}

/// One cached JWT for one app identity, and the platform's clock offset.
#[derive(Default)]
pub struct AppJwt {
    cached: Mutex<Option<(String, Instant)>>,
    /// The platform's clock minus ours, in seconds; 0 until a refusal
    /// showed otherwise.
    offset: AtomicI64,
    /// `atomgit_proxy_clock_offset_seconds{app}`.
    gauge: Gauge,
}

impl AppJwt {
    pub fn new(gauge: Gauge) -> Self {
        AppJwt {
            gauge,
            ..AppJwt::default()
        }
    }

    /// The current JWT, signing a new one when the cached one is near expiry.
    pub fn get(&self, app: &AppConfig) -> Result<String, jsonwebtoken::errors::Error> {
        let now = Instant::now();
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((jwt, renew_at)) = cached.as_ref()
            && now < *renew_at
        {
            return Ok(jwt.clone());
        }
        let jwt = sign(app, clock::now_secs() + self.offset())?;
        *cached = Some((
            jwt.clone(),
            now + Duration::from_secs(LIFETIME as u64) - REUSE_MARGIN,
        ));
        Ok(jwt)
    }

    /// The platform's clock minus ours, as last learned.
    pub fn offset(&self) -> i64 {
        self.offset.load(Ordering::Relaxed)
    }

    /// Takes the platform's clock offset `seen` on a refused call. Returns
    /// whether it changed what is signed (then the call is worth retrying).
    pub fn correct(&self, app: &AppConfig, seen: i64) -> bool {
        let before = self.offset.load(Ordering::Relaxed);
        if (seen - before).abs() <= clock::TOLERANCE_SECS {
            return false;
        }
        // A small remaining difference is absorbed by the backdating.
        let offset = if seen.abs() <= clock::TOLERANCE_SECS {
            0
        } else {
            seen
        };
        self.offset.store(offset, Ordering::Relaxed);
        self.gauge.set(offset);
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = None;
        tracing::warn!(
            app = &*app.name,
            offset_s = offset,
            "the platform refused the app JWT and its clock differs from this machine's; \
             signing on the platform's clock from now on (fix this machine's clock)"
        );
        true
    }
}

fn sign(app: &AppConfig, now: i64) -> Result<String, jsonwebtoken::errors::Error> {
    let claims = Claims {
        iss: app.id.to_string(),
        iat: now - BACKDATE,
        exp: now + LIFETIME,
    };
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    jsonwebtoken::encode(&header, &claims, &app.key)
}
