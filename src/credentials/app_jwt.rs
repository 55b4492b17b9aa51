//! The app JWT: RS256, signed with the app key, reused until near its expiry.
//!
//! `iat` is set a minute in the past and `exp` nine minutes ahead: platforms of
//! this family refuse an `exp` more than ten minutes ahead of *their* clock,
//! so the documented `now + 10 min` breaks whenever the local clock runs fast.

use crate::config::AppConfig;
use serde::Serialize;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

const BACKDATE: u64 = 60;
const LIFETIME: u64 = 540;
/// Re-sign when less than this is left, so a JWT never dies in flight.
const REUSE_MARGIN: Duration = Duration::from_secs(60);

#[derive(Serialize)]
struct Claims {
    /// The docs' example passes the app id as a string.
    iss: String,
    iat: u64,
    exp: u64,
}

/// One cached JWT for one app identity.
#[derive(Default)]
pub struct AppJwt {
    cached: Mutex<Option<(String, Instant)>>,
}

impl AppJwt {
    /// The current JWT, signing a new one when the cached one is near expiry.
    pub fn get(&self, app: &AppConfig) -> Result<String, jsonwebtoken::errors::Error> {
        let now = Instant::now();
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((jwt, renew_at)) = cached.as_ref()
            && now < *renew_at
        {
            return Ok(jwt.clone());
        }
        let jwt = sign(app)?;
        *cached = Some((
            jwt.clone(),
            now + Duration::from_secs(LIFETIME) - REUSE_MARGIN,
        ));
        Ok(jwt)
    }
}

fn sign(app: &AppConfig) -> Result<String, jsonwebtoken::errors::Error> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = Claims {
        iss: app.id.to_string(),
        iat: now.saturating_sub(BACKDATE),
        exp: now + LIFETIME,
    };
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    jsonwebtoken::encode(&header, &claims, &app.key)
}
